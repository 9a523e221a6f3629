"""`peersync config check` and `peersync config show`: is this deployment ready to sync?

:func:`check_setup` runs, in order: the config and the agency profile (loaded
before we get here: their paths are reported), the ``[ehr.auth]`` settings,
the EHR's CapabilityStatement (``GET [base]/metadata``, asked anonymously
first, as most EHRs serve it without a token) compared with the configured
``[ehr]`` (mode, conditional operations, the resource types, interactions and
search parameters PeerSync uses), a token with the scopes granted against
those asked, and last the agency Organization and the connector's Device
that Provenance names, matched or created once by identifier
(:func:`connector.sync.ensure_agency`) and their ids stored.

Each check is ``ok``, ``warn`` or ``fail`` with a one-line detail for an
admin. Details name config keys, file paths, variable *names*, resource types,
scopes and resource ids: never a secret, a key, a token or PHI.
"""

from __future__ import annotations

import json
import os
import stat
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from connector.errors import (
    ConfigError,
    ConnectorError,
    EhrAuthError,
    EhrError,
    EhrOutcomeUnknown,
    EhrUnavailable,
)

if TYPE_CHECKING:
    import requests

    from connector.config import Config
    from connector.fhir_client import Exchange, FhirClient
    from connector.store import Store
    from connector.wiring import Wiring
    from connector.writeplan import WritePlan
    from mappings.profile import Profile

__all__ = [
    "Check",
    "CheckReport",
    "check_setup",
    "describe_auth",
    "render_config",
    "scopes_covered",
]

Status = Literal["ok", "warn", "fail"]
ClientFactory = Callable[[], "FhirClient"]

# Search parameters PeerSync uses, per resource type (Encounter's depend on the config).
IDENTIFIED = ("Encounter", "DocumentReference", "Practitioner", "Organization", "Device",
              "Patient")
CONDITIONAL_TYPES = ("Encounter", "DocumentReference", "Practitioner")
# Keys of [ehr.auth] that are safe to print as they are (the rest: *_file / *_env, or hidden).
SHOWN_AUTH_KEYS = ("type", "username", "client_id", "key_id", "algorithm", "token_url", "scope")


def auth_key_shown_as(key: str) -> str:
    """How an ``[ehr.auth]`` key may be shown: "file" (its path), "env" (the variable's
    name), "value" (not a secret), or "hidden". The one masking rule for every output."""
    if key.endswith("_file"):
        return "file"
    if key.endswith("_env"):
        return "env"
    return "value" if key in SHOWN_AUTH_KEYS else "hidden"


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    status: Status
    detail: str

    def line(self) -> str:
        return f"{self.status.upper():<4}  {self.name}: {self.detail}"


@dataclass(slots=True)
class CheckReport:
    """The checks in the order they ran; ``exit_code`` 0 when none failed (warnings allowed)."""

    checks: list[Check] = field(default_factory=list)
    organization_id: str | None = None
    device_id: str | None = None
    plan: WritePlan | None = None  # the write plan resolved against the EHR's statement
    plan_rows: list[tuple[str, str, str]] = field(default_factory=list)

    def add(self, name: str, status: Status, detail: str) -> Check:
        check = Check(name, status, " ".join(detail.split()))
        self.checks.append(check)
        return check

    def __iter__(self) -> Iterator[Check]:
        return iter(self.checks)

    def __len__(self) -> int:
        return len(self.checks)

    def get(self, name: str) -> Check | None:
        return next((c for c in self.checks if c.name == name), None)

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if c.status == "fail"]

    @property
    def warnings(self) -> list[Check]:
        return [c for c in self.checks if c.status == "warn"]

    @property
    def ok(self) -> bool:
        return not self.failed

    @property
    def exit_code(self) -> int:
        return 0 if self.ok else 1

    def lines(self) -> list[str]:
        summary = (
            f"{len(self.checks) - len(self.failed) - len(self.warnings)} ok, "
            f"{len(self.warnings)} warning(s), {len(self.failed)} failed"
        )
        return [c.line() for c in self.checks] + self.plan_table() + [
            ("ready to sync: " if self.ok else "not ready: ") + summary
        ]

    def plan_table(self) -> list[str]:
        """The write plan as a table: resource -> what PeerSync does, and why."""
        if self.plan is None:
            return []
        plan = self.plan
        head = (f"write plan (preset {plan.preset.name}: {plan.preset.title}; "
                f"mode {plan.mode}; source: {plan.preset.source}, checked {plan.preset.checked})")
        width = max(len(r[0]) for r in self.plan_rows)
        what_w = max(len(r[1]) for r in self.plan_rows)
        lines = ["", head, f"  {'resource':<{width}}  {'PeerSync':<{what_w}}  why"]
        lines += [f"  {r:<{width}}  {w:<{what_w}}  {y}" for r, w, y in self.plan_rows]
        return lines + [""]


# ---------------------------------------------------------------- the check


def check_setup(
    config: Config,
    *,
    profile: Profile,
    store: Store,
    client_factory: ClientFactory,
    wiring: Wiring | None = None,
) -> CheckReport:
    """Run every set-up check against the configured EHR (see the module docstring)."""
    from connector.wiring import Wiring

    wiring = wiring or Wiring(config=config, profile=profile)
    report = CheckReport()
    report.add("config", "ok", f"{config.path}")
    report.add(
        "profile",
        "ok",
        f"{profile.source_file} (agency {profile.name!r}; patients "
        + ("created when missing" if profile.create_patients else "matched by MRN only")
        + ")",
    )
    _check_file_modes(report, config)
    auth_cfg = config.ehr.auth
    try:
        client = client_factory()
    except ConfigError as exc:
        name = "ehr.auth" if "ehr.auth" in str(exc) else "ehr"
        report.add(name, "fail", str(exc))
        return report
    with client:
        report.add("ehr.auth", "ok", describe_auth(auth_cfg, client.auth))
        _check_secret_files(report, auth_cfg, config.folder)
        _run_ehr_checks(report, wiring, store, client)
    return report


def _plan_against(report: CheckReport, wiring: Wiring, capability: dict[str, Any]) -> WritePlan:
    """Resolve the write plan against the statement, keep its table, and check it."""
    from connector.capability_check import check_capabilities

    plan = wiring.plan(capability)
    report.plan = plan
    report.plan_rows = plan.rows(create_patients=wiring.profile.create_patients)
    check_capabilities(capability, plan, wiring.profile, report,
                       auth_type=wiring.config.ehr.auth.get("type", "none"))
    return plan


def _run_ehr_checks(report: CheckReport, wiring: Wiring, store: Store, client: FhirClient
                    ) -> None:
    from connector.fhir_client import FhirClient

    # 1. The CapabilityStatement, anonymously (the same session: same CA file, timeouts).
    anonymous = FhirClient(
        base_url=client.base_url,
        timeout_s=client.timeout[1],
        connect_timeout_s=client.timeout[0],
        session=client.session,
        user_agent=client.user_agent,
    )
    capability: dict[str, Any] | None = None
    metadata_needs_auth = False
    started = time.perf_counter()
    try:
        capability = anonymous.capability_statement()
    except EhrAuthError as exc:
        if client.auth is None:
            report.add("EHR reachable", "fail", f"{exc}; set [ehr.auth]")
            return
        metadata_needs_auth = True
        report.add("EHR reachable", "ok",
                   f"{client.base_url} answers; its metadata needs auth (read after the token)")
    except EhrError as exc:
        report.add("EHR reachable", "fail", _reachability(exc))
        return
    if capability is not None:
        elapsed = (time.perf_counter() - started) * 1000.0
        report.add("EHR reachable", "ok",
                   f"GET {client.base_url}/metadata: CapabilityStatement"
                   f"{_software(capability)} in {elapsed:.0f} ms")
        plan = _plan_against(report, wiring, capability)

    # 2. A token, and the scopes granted against those asked.
    if not _check_token(report, client):
        return
    if metadata_needs_auth:
        try:
            capability = client.capability_statement()
        except EhrError as exc:
            report.add("capability", "fail", f"GET metadata with the token: {exc}")
        else:
            plan = _plan_against(report, wiring, capability)
    if report.plan is None:
        return

    # 3. The agency Organization and the connector Device, matched or created once.
    _check_agency(report, store, client, wiring.profile, plan)


def _reachability(exc: EhrError) -> str:
    if isinstance(exc, EhrUnavailable):
        return str(exc)  # "EHR unreachable: GET <url> (connection refused)"
    if isinstance(exc, EhrOutcomeUnknown):
        return f"EHR unreachable: no answer in time ({exc})"
    return f"{exc}; is ehr.base_url the FHIR base URL?"


def _software(capability: Mapping[str, Any]) -> str:
    software = capability.get("software")
    if not isinstance(software, dict) or not isinstance(software.get("name"), str):
        return ""
    version = software.get("version")
    name = _printable(software["name"])
    return f" ({name} {_printable(version)})" if isinstance(version, str) else f" ({name})"


def _printable(value: str, limit: int = 60) -> str:
    cleaned = "".join(ch if ch.isprintable() else "?" for ch in value)
    return cleaned[:limit]


# ---------------------------------------------------------------- auth


def describe_auth(cfg: Mapping[str, Any], auth: object = None) -> str:
    """``[ehr.auth]`` in one line: file paths and variable names, never their contents."""
    kind = str(cfg.get("type", "none"))
    if kind == "none":
        return "type none: no Authorization header is sent"
    parts: list[str] = []
    for key, value in cfg.items():
        if key in ("type", "scope"):
            continue
        how = auth_key_shown_as(key)
        if how == "file":
            parts.append(f"{key.removesuffix('_file')} from file {value}")
        elif how == "env":
            parts.append(f"{key.removesuffix('_env')} from ${value}")
        elif how == "value":
            parts.append(f"{key} {value}")
        else:
            parts.append(f"{key} <hidden>")
    scope = getattr(auth, "scope", None)
    if isinstance(scope, str) and scope:
        parts.append(f"asks for {len(scope.split())} scope(s)")
    return f"type {kind}: " + ", ".join(parts)


def _check_secret_files(report: CheckReport, cfg: Mapping[str, Any], folder: Path) -> None:
    """Warn when a secret or key file can be read by other users."""
    for key, value in cfg.items():
        if not key.endswith("_file") or not isinstance(value, str) or not value:
            continue
        path = Path(value).expanduser()
        path = path if path.is_absolute() else folder / path
        try:
            mode = path.stat().st_mode
        except OSError:
            continue  # build_auth already refused a missing file
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            report.add(f"ehr.auth.{key}", "warn",
                       f"{path} is readable by other users (mode {stat.S_IMODE(mode):o}); "
                       "chmod 600 it")


SECRET_FILE_NAME = "peersync.secret"  # webapp.SECRET_FILE: the session-signing key


def private_files(config: Config) -> list[tuple[str, Path]]:
    """The files only PeerSync's user may read: the SQLite database (PHI) with its -wal
    and -shm, the audit key and the web app's session secret. (name, path) pairs."""
    from sqlalchemy.engine import make_url

    from connector.audit import key_path

    files: list[tuple[str, Path]] = []
    try:
        url = make_url(config.database_url)
    except Exception:  # noqa: BLE001 - a bad URL is reported when the store opens
        url = None
    database = url.database if url is not None and url.get_backend_name() == "sqlite" else None
    if database and database != ":memory:" and not database.startswith("file:"):
        db = Path(database).expanduser()
        db = db if db.is_absolute() else config.folder / db
        files += [("database file", db), ("database -wal file", Path(f"{db}-wal")),
                  ("database -shm file", Path(f"{db}-shm"))]
    files.append(("audit key file", key_path(config.folder,
                                             getattr(config, "audit_key_file", None))))
    files.append(("web secret file", config.folder / SECRET_FILE_NAME))
    return files


def _check_file_modes(report: CheckReport, config: Config) -> None:
    """Warn for each private file that group or others may read or write (chmod 600)."""
    for name, path in private_files(config):
        try:
            mode = path.stat().st_mode
        except OSError:
            continue  # not made yet (no -wal between connections, no secret before serving)
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            report.add(name, "warn",
                       f"{path} is open to other users (mode {stat.S_IMODE(mode):o}); "
                       "chmod 600 it")


def _check_token(report: CheckReport, client: FhirClient) -> bool:
    """Get a token (token-based auths) and report the scopes granted; False when refused."""
    from connector.auth import TokenAuth

    auth = client.auth
    if not isinstance(auth, TokenAuth):
        return True
    seen: dict[str, Any] = {}

    def capture(resp: requests.Response, *args: Any, **kwargs: Any) -> None:
        # the token response: keep the granted scope and lifetime, never the token
        if resp.request.method != "POST" or resp.status_code != 200:
            return
        try:
            body = json.loads(resp.content or b"null")
        except ValueError:
            return
        if isinstance(body, dict):
            seen["scope"] = body.get("scope")
            seen["expires_in"] = body.get("expires_in")
            seen["answered"] = True

    session = auth.session
    hooks = session.hooks.setdefault("response", [])
    hooks.append(capture)
    try:
        auth.access_token()
    except ConnectorError as exc:
        report.add("auth token", "fail", str(exc))
        return False
    finally:
        hooks.remove(capture)
    asked = auth.scope.split()
    where = f"from {auth.token_url}" if auth.token_url else "from the token endpoint"
    lifetime = seen.get("expires_in")
    valid = f", valid {lifetime} s" if isinstance(lifetime, int | float) else ""
    granted_text = seen.get("scope")
    if not seen.get("answered"):
        report.add("auth token", "ok", f"token held{valid}; asked for: {' '.join(asked)}")
        return True
    if not isinstance(granted_text, str) or not granted_text.strip():
        # RFC 6749 5.1: scope omitted means granted as asked
        report.add("auth token", "ok",
                   f"token {where}{valid}; scopes granted as asked (none named): "
                   f"{' '.join(asked)}")
        return True
    granted = granted_text.split()
    missing = [s for s in asked if not scopes_covered(s, granted)]
    shown = " ".join(s for s in granted if _looks_like_scope(s))
    if missing:
        report.add("auth token", "fail",
                   f"token {where}{valid} but scopes not granted: {' '.join(missing)} "
                   f"(granted: {shown or 'none'}); register them for the client in the EHR")
    else:
        report.add("auth token", "ok",
                   f"token {where}{valid}; granted {len(asked)} of {len(asked)} scopes asked: "
                   f"{' '.join(asked)}" + ("" if shown == " ".join(asked) else f" (as {shown})"))
    return True


def _looks_like_scope(text: str) -> bool:
    return len(text) <= 80 and all(ch.isalnum() or ch in "/._*-:" for ch in text)


_V1 = {"read": "rs", "write": "cud", "*": "cruds"}


def _perms(scope: str) -> tuple[str, str, set[str]] | None:
    """``system/Patient.rs`` -> ("system", "Patient", {"r", "s"}); v1 ``.read``/``.write``."""
    context, _, rest = scope.partition("/")
    rtype, _, perms = rest.partition(".")
    if not context or not rtype or not perms:
        return None
    if perms in _V1:
        letters = set(_V1[perms])
    else:
        perms = perms.split("?", 1)[0]  # v2 granular scopes: ?category=... narrows, ignore
        if not perms or set(perms) - set("cruds"):
            return None
        letters = set(perms)
    return context, rtype, letters


def scopes_covered(asked: str, granted: list[str]) -> bool:
    """Whether the ``granted`` scopes (v1 or v2, wildcards) cover everything ``asked`` allows."""
    want = _perms(asked)
    if want is None:
        return asked in granted
    context, rtype, letters = want
    have: set[str] = set()
    for scope in granted:
        got = _perms(scope)
        if got is None or got[0] != context or got[1] not in (rtype, "*"):
            continue
        if "?" in scope.split(".", 1)[-1]:
            continue  # a narrowed scope does not cover the whole type
        have |= got[2]
    return letters <= have


# ---------------------------------------------------------------- agency


def _check_agency(report: CheckReport, store: Store, client: FhirClient, profile: Profile,
                  plan: WritePlan) -> None:
    from connector.sync import ensure_agency

    keys = {
        "organization": f"{profile.organization.system}|{profile.organization.value}",
        "device": f"{profile.device.system}|{profile.device.value}",
    }
    before = {kind: store.get_link(kind, key) for kind, key in keys.items()}
    writes: list[Exchange] = []
    previous = client.on_exchange

    def record(exchange: Exchange) -> None:
        if exchange.method == "POST":
            writes.append(exchange)
        if previous is not None:
            previous(exchange)

    client.on_exchange = record
    try:
        org_ref, device_ref = ensure_agency(store, client, profile, plan)
    except ConnectorError as exc:
        report.add("agency", "fail", f"matching or creating the Organization and Device: {exc}")
        return
    finally:
        client.on_exchange = previous
    report.organization_id = org_ref.partition("/")[2]
    report.device_id = device_ref.partition("/")[2]
    for kind, ref, identity, label in (
        ("organization", org_ref, profile.organization, "agency Organization"),
        ("device", device_ref, profile.device, "connector Device"),
    ):
        rtype, _, rid = ref.partition("/")
        if not ref:
            what = ("named as the note's custodian by display only"
                    if kind == "organization" else "not used (no Provenance resource)")
            report.add(label, "ok", f"{kind.capitalize()}: {what} "
                                    f"({plan.why.get(kind.capitalize(), 'write plan')})")
            continue
        which = f"{ref} (identifier {identity.system}|{identity.value})"
        by_id = kind == "organization" and plan.organization_by == "id"
        if by_id:
            which = f"{ref} (ehr.organization_id)"
        if before[kind] or by_id:
            try:
                client.read(rtype, rid)
            except EhrError as exc:
                status = getattr(exc, "status", None)
                if status in (404, 410):
                    report.add(label, "fail",
                               f"{which} is stored here but no longer in the EHR ({status}); "
                               "was the EHR reset?")
                else:
                    report.add(label, "warn", f"{which} stored earlier; could not re-read it: "
                                              f"{exc}")
                continue
            report.add(label, "ok", f"{which}: " + ("in the EHR" if by_id else
                                                    "stored earlier, still in the EHR"))
            continue
        post = next((e for e in writes if e.resource_type == rtype), None)
        created = post is not None and post.status == 201
        how = "created now" if created else "matched by identifier"
        report.add(label, "ok", f"{which}: {how}; id stored")


# ---------------------------------------------------------------- config show


def render_config(config: Config, *, environ: Mapping[str, str] | None = None) -> str:
    """The effective config as TOML, secrets masked: auth ``*_file``/``*_env`` keys show the
    path or the variable name (never the content), the database URL has no password."""
    env = os.environ if environ is None else environ
    ehr = config.ehr
    lines = [f"# effective config from {config.path}"]
    if env.get("PEERSYNC_EHR_URL"):
        lines.append("# ehr.base_url comes from PEERSYNC_EHR_URL")
    if env.get("PEERSYNC_DATABASE_URL"):
        lines.append("# database_url comes from PEERSYNC_DATABASE_URL")
    lines += [
        f"profile = {_toml(config.profile)}  # {config.profile_path()}",
        f"database_url = {_toml(safe_database_url(config.database_url))}",
        f"default_source = {_toml(config.default_source)}",
        "",
        "[ehr]",
    ]
    for key in ("base_url", "preset", "organization_id"):
        lines.append(f"{key} = {_toml(getattr(ehr, key))}")
    for key in ("mode", "conditional", "note_content_type", "create_encounters"):
        if key in ehr.explicit:
            lines.append(f"{key} = {_toml(getattr(ehr, key))}  # overrides the preset")
    for key in ("max_bundle_entries", "timeout_s", "ca_file"):
        lines.append(f"{key} = {_toml(getattr(ehr, key))}")
    lines += ["", "[ehr.auth]"]
    for key, value in ehr.auth.items():
        how = auth_key_shown_as(key)
        if how == "file":
            lines.append(f"{key} = {_toml(value)}  # the file's path; its content is not shown")
        elif how == "env":
            lines.append(f"{key} = {_toml(value)}  # the variable's name; its value is not shown")
        elif how == "value":
            lines.append(f"{key} = {_toml(value)}")
        else:
            lines.append(f'{key} = "<hidden>"')
    audit_key = getattr(config, "audit_key_file", None)
    lines += ["", "[audit]"]
    if audit_key:
        lines.append(f"key_file = {_toml(audit_key)}  # the file's path; its content is not shown")
    else:
        lines.append("# key_file not set: peersync.key beside this file (content not shown)")
    lines += ["", "[sync]"]
    for key in ("lease_s", "renew_every_s", "max_wait_s", "max_attempts"):
        lines.append(f"{key} = {_toml(getattr(config.sync, key))}")
    return "\n".join(lines)


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return json.dumps(str(value), ensure_ascii=False)  # a JSON string is a TOML basic string


def safe_database_url(url: str) -> str:
    """A database URL without its password."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - printing only
        return "(database URL not shown)"
