"""Actions that the CLI and the web app share: the EHR client for a config, linking.

Both front ends call these, so a link made from ``peersync link`` and one made
on the web app's matching page check and record exactly the same things.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from connector.states import JobState

if TYPE_CHECKING:
    from connector.config import Config
    from connector.fhir_client import FhirClient
    from connector.store import Store
    from mappings.profile import Profile


def make_client(config: Config, profile: Profile, *, timeout_s: float | None = None
                ) -> FhirClient:
    """The FHIR client for the configured EHR: :class:`connector.wiring.Wiring`'s."""
    from connector.wiring import Wiring

    return Wiring(config=config, profile=profile).client(timeout_s=timeout_s)


@dataclass(frozen=True, slots=True)
class Linked:
    reference: str  # e.g. "Patient/123"
    released: int  # waiting records put back in line


def link_patient(
    store: Store, client: FhirClient, *, source: str, participant_id: str, patient_id: str,
    actor: str,
) -> Linked:
    """Link a source's participant to the EHR's Patient and release its waiting records.

    Raises EhrError (e.g. EhrNotFound) when the EHR has no such Patient: nothing is linked.
    """
    return link(store, client, "patient", f"{source}|{participant_id}", "Patient", patient_id,
                JobState.WAITING_PATIENT, actor=actor, source=source,
                participant_id=participant_id)


def link_staff(
    store: Store, client: FhirClient, *, specialist_id: str, practitioner_id: str, actor: str,
) -> Linked:
    """Link a staff id to the EHR's Practitioner and release its waiting records."""
    return link(store, client, "practitioner", specialist_id, "Practitioner", practitioner_id,
                JobState.WAITING_STAFF, actor=actor, specialist_id=specialist_id)


def link(store: Store, client: FhirClient, kind: str, key: str, resource_type: str,
         ehr_id: str, state: JobState, *, actor: str, **who: str) -> Linked:
    """Check that the EHR has ``resource_type/ehr_id``, store the link, release the waiting.

    Raises EhrError when the EHR cannot show it (then nothing is linked).
    """
    client.read(resource_type, ehr_id)  # it must exist before anything points at it
    store.set_link(kind, key, ehr_id, linked_by=actor)
    released = store.release_waiting(state, actor=actor, why=f"{kind} linked", **who)
    return Linked(f"{resource_type}/{ehr_id}", released)
