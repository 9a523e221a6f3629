"""The EHR's CapabilityStatement against the write plan: can this EHR take what we will send?

Part of ``peersync config check`` (:mod:`connector.setup_check`). Every
interaction, conditional operation and search parameter the plan will use is
looked up in the statement; one the server denies fails the check with the
``[ehr]`` key or preset to change. Details name resource types, interactions
and keys only.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from connector.writeplan import CATALOGUE, WritePlan

if TYPE_CHECKING:
    from connector.setup_check import CheckReport
    from mappings.profile import Profile


def check_capabilities(
    capability: Mapping[str, Any],
    plan: WritePlan,
    profile: Profile,
    report: CheckReport | None = None,
    *,
    auth_type: str = "none",
) -> CheckReport:
    """Compare a CapabilityStatement with the write plan; checks go into ``report``."""
    from connector.setup_check import CheckReport, _printable

    report = report if report is not None else CheckReport()
    if capability.get("resourceType") != "CapabilityStatement":
        report.add("FHIR version", "fail", "GET metadata returned no CapabilityStatement")
        return report
    version = capability.get("fhirVersion")
    if isinstance(version, str) and (version == "4.0" or version.startswith("4.0.")):
        report.add("FHIR version", "ok", f"fhirVersion {version} (R4)")
    else:
        shown = _printable(version) if isinstance(version, str) else "not stated"
        report.add("FHIR version", "fail", f"fhirVersion {shown}: PeerSync speaks FHIR R4 (4.0.x)")
    rest = server_rest(capability)
    if rest is None:
        report.add("capability", "fail", "the CapabilityStatement has no rest (server) section")
        return report
    resources = _resources(rest)
    _check_mode(report, plan, codes(rest.get("interaction")))
    _check_conditional(report, plan, resources, profile)
    for kind in CATALOGUE:
        _check_resource(report, plan, kind.name, resources.get(kind.name), profile)
    if plan.note.content_type.startswith("application/xhtml+xml"):
        report.add("note format", "ok",
                   "notes are sent as XHTML (application/xhtml+xml), escaped text in a <pre>; "
                   "a CapabilityStatement cannot say whether the EHR requires it")
    if auth_type == "none" and _advertises_oauth(rest.get("security")):
        report.add("security", "warn",
                   "the EHR advertises SMART/OAuth but [ehr.auth] type = \"none\"")
    return report


def _check_mode(report: CheckReport, plan: WritePlan, listed: set[str]) -> None:
    why = plan.why.get("mode", "")
    if plan.mode in ("transaction", "batch"):
        if plan.mode in listed:
            report.add("mode", "ok", f"{plan.mode}: listed in rest.interaction ({why})")
        else:
            shown = ", ".join(sorted(listed)) or "none"
            other = "batch" if plan.mode == "transaction" and "batch" in listed else "single"
            report.add("mode", "fail",
                       f"{plan.mode} ({why}) but the EHR does not list the '{plan.mode}' "
                       f"interaction (rest.interaction: {shown}); set mode = {other!r} "
                       "or mode = \"auto\"")
    else:
        report.add("mode", "ok", f"single: one request per resource, no bundles ({why})")


def _check_conditional(report: CheckReport, plan: WritePlan,
                       resources: dict[str, dict[str, Any]], profile: Profile) -> None:
    if not (plan.conditional_create or plan.conditional_update):
        report.add("conditional", "ok",
                   "no conditional requests: writes by id after look-ups (the ledger decides)")
        return
    problems = []
    for kind in CATALOGUE:
        if not plan.creates(kind.name) or kind.name == "Provenance" or (
                kind.name == "Patient" and not profile.create_patients):
            continue
        listed = resources.get(kind.name) or {}
        if plan.conditional_update and plan.updates(kind.name) \
                and not listed.get("conditionalUpdate"):
            problems.append(f"no conditionalUpdate on {kind.name}")
        if plan.conditional_create and not listed.get("conditionalCreate") \
                and not (plan.conditional_update and plan.updates(kind.name)):
            problems.append(f"no conditionalCreate on {kind.name}")
    if problems:
        report.add("conditional", "fail",
                   "; ".join(problems) + ": the EHR would ignore or refuse them; "
                   "set conditional = false (or the preset for this EHR)")
    else:
        report.add("conditional", "ok", "conditional create/update listed where used")


def _check_resource(report: CheckReport, plan: WritePlan, rtype: str,
                    resource: dict[str, Any] | None, profile: Profile) -> None:
    name = f"capability {rtype}"
    needed = plan.interactions(rtype, create_patients=profile.create_patients)
    searched = plan.searches(rtype)
    if not needed:
        report.add(name, "ok", f"{rtype}: {_doing(plan, rtype)}; nothing asked of the EHR")
        return
    if resource is None:
        report.add(name, "fail", f"{rtype} is not listed, but the write plan needs "
                                 f"{', '.join(needed)} ({plan.why.get(rtype, 'preset')})")
        return
    listed = codes(resource.get("interaction"))
    missing = [i for i in needed if i not in listed]
    hint = plan.why.get(rtype, f"preset {plan.preset.name}")
    params = {p.get("name") for p in resource.get("searchParam") or [] if isinstance(p, dict)}
    unsearchable = [p for p in searched if params and p not in params]
    if missing or unsearchable:
        parts = []
        if missing:
            parts.append(f"the EHR does not list {', '.join(missing)}")
        if unsearchable:
            parts.append(f"no search parameter {', '.join(unsearchable)}")
        report.add(name, "fail",
                   f"{rtype} ({_doing(plan, rtype)}, {hint}): " + "; ".join(parts)
                   + " — choose the preset for this EHR"
                   + (", or set ehr.create_encounters = false" if rtype == "Encounter"
                      and plan.encounter == "create" else ""))
        return
    if searched and not params:
        report.add(name, "warn", f"{rtype}: lists no search parameters (PeerSync searches by "
                                 f"{', '.join(searched)})")
        return
    report.add(name, "ok", f"{rtype}: {', '.join(needed)}"
               + (f"; search by {', '.join(searched)}" if searched else ""))


def _doing(plan: WritePlan, rtype: str) -> str:
    return {"write": "create + update", "create": "created", "match": "matched",
            "contained": "contained in the note", "none": "not written"}[plan.action(rtype)]


def server_rest(capability: Mapping[str, Any]) -> dict[str, Any] | None:
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


def codes(interactions: Any) -> set[str]:
    if not isinstance(interactions, list):
        return set()
    return {i["code"] for i in interactions
            if isinstance(i, dict) and isinstance(i.get("code"), str)}


def _advertises_oauth(security: Any) -> bool:
    if not isinstance(security, dict):
        return False
    for service in security.get("service") or []:
        for coding in (service or {}).get("coding") or [] if isinstance(service, dict) else []:
            if isinstance(coding, dict) and coding.get("code") in ("SMART-on-FHIR", "OAuth"):
                return True
    return False
