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

import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from connector.agency_check import check_agency
from connector.auth_check import check_token, describe_auth, scopes_covered
from connector.config_show import (
    SHOWN_AUTH_KEYS,
    auth_key_shown_as,
    render_config,
    safe_database_url,
)
from connector.errors import (
    ConfigError,
    EhrAuthError,
    EhrError,
    EhrOutcomeUnknown,
    EhrUnavailable,
)
from connector.file_modes import (
    SECRET_FILE_NAME,
    check_file_modes,
    check_secret_files,
    private_files,
)

if TYPE_CHECKING:
    from connector.config import Config
    from connector.fhir_client import FhirClient
    from connector.store import Store
    from connector.wiring import Wiring
    from connector.writeplan import WritePlan
    from mappings.profile import Profile

__all__ = [
    "SECRET_FILE_NAME",
    "SHOWN_AUTH_KEYS",
    "Check",
    "CheckReport",
    "auth_key_shown_as",
    "check_setup",
    "describe_auth",
    "private_files",
    "render_config",
    "safe_database_url",
    "scopes_covered",
]

Status = Literal["ok", "warn", "fail"]
ClientFactory = Callable[[], "FhirClient"]

# Search parameters PeerSync uses, per resource type (Encounter's depend on the config).
IDENTIFIED = ("Encounter", "DocumentReference", "Practitioner", "Organization", "Device",
              "Patient")
CONDITIONAL_TYPES = ("Encounter", "DocumentReference", "Practitioner")


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
        + ("; notes co-signed by a supervisor first ([review] policy = \"cosign\""
           + (f", codes {', '.join(profile.review_service_codes)}"
              if profile.review_service_codes else "") + ")"
           if profile.review_policy == "cosign" else "")
        + ")",
    )
    check_file_modes(report, config)
    auth_cfg = config.ehr.auth
    try:
        client = client_factory()
    except ConfigError as exc:
        name = "ehr.auth" if "ehr.auth" in str(exc) else "ehr"
        report.add(name, "fail", str(exc))
        return report
    with client:
        report.add("ehr.auth", "ok", describe_auth(auth_cfg, client.auth))
        check_secret_files(report, auth_cfg, config.folder)
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
    if not check_token(report, client):
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
    check_agency(report, store, client, wiring.profile, plan)


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
