"""The last check of `peersync config check`: the agency Organization and the
connector's Device that Provenance names, matched or created once by identifier
(:func:`connector.sync.ensure_agency`) and their ids stored.

Part of :func:`connector.setup_check.check_setup`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from connector.errors import ConnectorError, EhrError

if TYPE_CHECKING:
    from connector.fhir_client import Exchange, FhirClient
    from connector.setup_check import CheckReport
    from connector.store import Store
    from connector.writeplan import WritePlan
    from mappings.profile import Profile


def check_agency(report: CheckReport, store: Store, client: FhirClient, profile: Profile,
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
