"""The agency's Organization and the connector's Device: matched or created once.

Every note names them (custodian, Provenance agent); they are resolved once per
run (:class:`connector.sync.resolve.References`) and by ``config check``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from connector.errors import EhrConflict, Outcome
from connector.writeplan import MATCH_ACTIONS

if TYPE_CHECKING:
    from connector.fhir_client import FhirClient
    from connector.store import Store
    from connector.writeplan import WritePlan
    from mappings.profile import Profile


def ensure_agency(store: Store, client: FhirClient, profile: Profile, plan: WritePlan
                  ) -> tuple[str, str]:
    """Match or create (once, by identifier) the agency Organization and connector Device.

    Only as far as the write plan allows: a type the EHR cannot create is matched
    (the Organization by ``[ehr] organization_id`` where the EHR finds it by _id
    only), and one the plan leaves out gives "".
    """
    from mappings.resources import map_device, map_organization, search_token

    refs: list[str] = []
    for kind, identity in (("organization", profile.organization), ("device", profile.device)):
        resource_type = kind.capitalize()
        action = plan.action(resource_type)
        if action not in MATCH_ACTIONS:
            refs.append("")
            continue
        if resource_type == "Organization" and plan.organization_by == "id":
            refs.append(f"Organization/{plan.organization_id}")
            continue
        key = f"{identity.system}|{identity.value}"
        linked = store.get_link(kind, key)
        if not linked:
            # One worker at a time: a conditional create is racy on the EHR, so two
            # workers starting together would both create. The next one finds the link.
            with store.exclusive(f"link|{kind}|{key}") as conn:
                linked = store.get_link(kind, key)
                if not linked:
                    token = search_token(identity.system, identity.value)
                    found = client.search(resource_type, {"identifier": token})
                    if len(found) > 1:
                        raise EhrConflict(
                            f"{len(found)} {resource_type} resources carry the agency's "
                            "identifier", status=412, method="GET",
                            url=f"{client.base_url}/{resource_type}", outcome=Outcome())
                    how = "match"
                    if found:
                        linked = found[0]["id"]
                    elif not plan.creates(resource_type):
                        refs.append("")  # not in the EHR and not ours to create
                        continue
                    else:
                        model: Any = (map_organization(profile) if kind == "organization"
                                      else map_device(profile, organization_ref=refs[0] or None))
                        linked = client.create(
                            model.model_dump(mode="json"),
                            if_none_exist={"identifier": token}
                            if plan.conditional_create else None).id
                        how = "create"
                    store.set_link(kind, key, linked, linked_by=how, conn=conn)
        refs.append(f"{resource_type}/{linked}")
    return refs[0], refs[1]
