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

    from connector.config import Config, EhrConfig
    from connector.fhir_client import Exchange, FhirClient
    from connector.store import Store
    from mappings.profile import Profile

__all__ = [
    "Check",
    "CheckReport",
    "check_capabilities",
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
        return [c.line() for c in self.checks] + [
            ("ready to sync: " if self.ok else "not ready: ") + summary
        ]


# ---------------------------------------------------------------- the check


def check_setup(
    config: Config,
    *,
    profile: Profile,
    store: Store,
    client_factory: ClientFactory,
) -> CheckReport:
    """Run every set-up check against the configured EHR (see the module docstring)."""
    report = CheckReport()
    report.add("config", "ok", f"{config.path}")
    report.add(
        "profile",
        "ok",
        f"{profile.source_file} (agency {profile.name!r}; patients "
        + ("created when missing" if profile.create_patients else "matched by MRN only")
        + ")",
    )
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
        _run_ehr_checks(report, config, profile, store, client)
    return report


def _run_ehr_checks(
    report: CheckReport, config: Config, profile: Profile, store: Store, client: FhirClient
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
        check_capabilities(capability, config.ehr, profile, report)

    # 2. A token, and the scopes granted against those asked.
    if not _check_token(report, client):
        return
    if metadata_needs_auth:
        try:
            capability = client.capability_statement()
        except EhrError as exc:
            report.add("capability", "fail", f"GET metadata with the token: {exc}")
        else:
            check_capabilities(capability, config.ehr, profile, report)

    # 3. The agency Organization and the connector Device, matched or created once.
    _check_agency(report, store, client, profile)


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


# ---------------------------------------------------------------- capabilities


def check_capabilities(
    capability: Mapping[str, Any],
    ehr: EhrConfig,
    profile: Profile,
    report: CheckReport | None = None,
) -> CheckReport:
    """Compare a CapabilityStatement with the configured ``[ehr]``; checks go into ``report``."""
    report = report if report is not None else CheckReport()
    if capability.get("resourceType") != "CapabilityStatement":
        report.add("FHIR version", "fail", "GET metadata returned no CapabilityStatement")
        return report
    version = capability.get("fhirVersion")
    if isinstance(version, str) and (version == "4.0" or version.startswith("4.0.")):
        report.add("FHIR version", "ok", f"fhirVersion {version} (R4)")
    else:
        shown = _printable(version) if isinstance(version, str) else "not stated"
        report.add("FHIR version", "fail",
                   f"fhirVersion {shown}: PeerSync speaks FHIR R4 (4.0.x)")
    rest = _server_rest(capability)
    if rest is None:
        report.add("capability", "fail", "the CapabilityStatement has no rest (server) section")
        return report
    resources = _resources(rest)

    # mode
    system_interactions = _codes(rest.get("interaction"))
    if ehr.mode in ("transaction", "batch"):
        if ehr.mode in system_interactions:
            report.add("mode", "ok", f"{ehr.mode}: listed in rest.interaction")
        else:
            listed = ", ".join(sorted(system_interactions)) or "none"
            other = "batch" if ehr.mode == "transaction" and "batch" in system_interactions \
                else "single"
            report.add("mode", "fail",
                       f"ehr.mode = {ehr.mode!r} but the EHR does not list the '{ehr.mode}' "
                       f"interaction (rest.interaction: {listed}); set mode = {other!r}")
    else:
        report.add("mode", "ok", "single: one request per resource, no bundles")

    # conditional operations
    used = [t for t in CONDITIONAL_TYPES if t != "Encounter" or ehr.create_encounters]
    if ehr.conditional:
        present = [t for t in used if t in resources]
        no_update = [t for t in present if not resources[t].get("conditionalUpdate")]
        no_create = [t for t in present if not resources[t].get("conditionalCreate")]
        if no_update:
            nor = f" (nor conditionalCreate on {', '.join(no_create)})" if no_create else ""
            report.add("conditional", "fail",
                       "conditional = true but the EHR lists no conditionalUpdate on "
                       f"{', '.join(no_update)}{nor}; set conditional = false")
        elif no_create:
            report.add("conditional", "warn",
                       f"no conditionalCreate on {', '.join(no_create)}: If-None-Exist may be "
                       "ignored (PeerSync searches by identifier first)")
        else:
            report.add("conditional", "ok",
                       f"conditionalCreate and conditionalUpdate on {', '.join(used)}")
    else:
        report.add("conditional", "ok",
                   "conditional = false: writes by id after identifier look-ups")

    # resource types, interactions and search parameters
    for rtype, need in _needs(ehr, profile).items():
        _check_resource(report, rtype, resources.get(rtype), need)

    if ehr.note_content_type == "application/xhtml+xml":
        report.add("note format", "ok",
                   "notes are sent as XHTML (application/xhtml+xml), escaped text in a <pre>; "
                   "a CapabilityStatement cannot say whether the EHR requires it")
    security = rest.get("security")
    if ehr.auth.get("type", "none") == "none" and _advertises_oauth(security):
        report.add("security", "warn",
                   "the EHR advertises SMART/OAuth but [ehr.auth] type = \"none\"")
    return report


@dataclass(frozen=True, slots=True)
class _Need:
    write: bool = False  # needs create or update
    create: bool = False  # needs create itself (e.g. If-None-Exist creates)
    update: bool = False  # needs update itself (supersede, retract, amendments)
    read: bool = False
    search: tuple[str, ...] = ()
    optional_search: tuple[str, ...] = ()  # only used to settle a lost answer
    hint: str = ""  # what to change when a write interaction is missing


def _needs(ehr: EhrConfig, profile: Profile) -> dict[str, _Need]:
    needs: dict[str, _Need] = {}
    if ehr.create_encounters:
        needs["Encounter"] = _Need(
            write=True, update=True, search=("identifier",),
            hint="create_encounters = true; set it false to attach notes to the EHR's own "
                 "Encounter",
        )
    else:
        needs["Encounter"] = _Need(read=True, search=("identifier", "subject", "date"))
    needs["DocumentReference"] = _Need(write=True, update=True, search=("identifier",))
    needs["Practitioner"] = _Need(write=True, create=True, search=("identifier",))
    needs["Provenance"] = _Need(write=True, create=True, optional_search=("target",))
    needs["Organization"] = _Need(write=True, create=True, read=True, search=("identifier",))
    needs["Device"] = _Need(write=True, create=True, read=True, search=("identifier",))
    needs["Patient"] = _Need(create=profile.create_patients, read=True, search=("identifier",))
    return needs


def _check_resource(
    report: CheckReport, rtype: str, resource: dict[str, Any] | None, need: _Need
) -> None:
    name = f"capability {rtype}"
    role = "written" if need.write else "read"
    if resource is None:
        report.add(name, "fail", f"{rtype} is not listed: PeerSync needs it {role}")
        return
    interactions = _codes(resource.get("interaction"))
    problems: list[str] = []
    doubts: list[str] = []
    if not interactions:
        doubts.append("lists no interactions")
    else:
        if need.write and not interactions & {"create", "update"}:
            problems.append("lists neither create nor update"
                            + (f" ({need.hint})" if need.hint else ""))
        elif need.create and "create" not in interactions:
            problems.append("lists no create" + ("" if need.write else
                                           " (the profile creates missing patients)"))
        if need.update and "update" not in interactions and interactions & {"create", "update"}:
            doubts.append("lists no update (changed, amended and retracted records need it)")
        if need.search and "search-type" not in interactions:
            problems.append("lists no search-type")
        elif need.optional_search and "search-type" not in interactions:
            doubts.append("lists no search-type (used to settle a lost answer)")
        if need.read and "read" not in interactions:
            doubts.append("lists no read")
    params = resource.get("searchParam")
    names = {p.get("name") for p in params if isinstance(p, dict)} if isinstance(params, list) \
        else None
    if names is None:
        if need.search or need.optional_search:
            doubts.append("lists no search parameters")
    else:
        missing = [p for p in need.search if p not in names]
        if missing:
            problems.append("lists no search parameter " + ", ".join(missing))
        missing_optional = [p for p in need.optional_search if p not in names]
        if missing_optional:
            doubts.append(
                "lists no search parameter " + ", ".join(missing_optional)
                + " (used to settle a lost answer)"
            )
    used = ("create", "update", "read", "search-type")
    listed = ", ".join(i for i in used if i in interactions) or "none listed"
    searched = ", ".join(need.search + need.optional_search)
    if problems:
        report.add(name, "fail", f"{rtype} " + "; ".join(problems + doubts))
    elif doubts:
        report.add(name, "warn", f"{rtype} " + "; ".join(doubts))
    else:
        report.add(name, "ok", listed + (f"; search by {searched}" if searched else ""))


def _server_rest(capability: Mapping[str, Any]) -> dict[str, Any] | None:
    rest = capability.get("rest")
    if not isinstance(rest, list):
        return None
    entries = [r for r in rest if isinstance(r, dict)]
    servers = [r for r in entries if r.get("mode") == "server"]
    candidates = servers or entries
    return candidates[0] if candidates else None


def _resources(rest: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for resource in rest.get("resource") or []:
        if isinstance(resource, dict) and isinstance(resource.get("type"), str):
            out.setdefault(resource["type"], resource)
    return out


def _codes(interactions: Any) -> set[str]:
    if not isinstance(interactions, list):
        return set()
    return {i["code"] for i in interactions if isinstance(i, dict) and isinstance(i.get("code"),
                                                                                    str)}


def _advertises_oauth(security: Any) -> bool:
    if not isinstance(security, dict):
        return False
    for service in security.get("service") or []:
        for coding in (service or {}).get("coding") or [] if isinstance(service, dict) else []:
            if isinstance(coding, dict) and coding.get("code") in ("SMART-on-FHIR", "OAuth"):
                return True
    return False


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


def _check_agency(report: CheckReport, store: Store, client: FhirClient, profile: Profile) -> None:
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
        org_ref, device_ref = ensure_agency(store, client, profile)
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
        which = f"{ref} (identifier {identity.system}|{identity.value})"
        if before[kind]:
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
            report.add(label, "ok", f"{which}: stored earlier, still in the EHR")
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
    for key in ("base_url", "mode", "conditional", "max_bundle_entries", "note_content_type",
                "create_encounters", "timeout_s", "ca_file"):
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
