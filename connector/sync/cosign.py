"""The co-signing supervisor's Practitioner (issue 10): the note's authenticator and the
Provenance's verifier, where the write plan sends them.

A supervisor is resolved as an author is (:meth:`.resolve.References.practitioner`:
by staff id or NPI; matched, or created where the plan allows it and a name is known
from the supervisor's own records); where that cannot be done the record waits in
``waiting_staff`` as it would for its author, the reason prefixed ``cosigner-``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING

from connector.records import EncounterRecord, Participant, Specialist
from connector.review import Cosignature, carried_cosignature
from connector.sync.model import RecordLedger, SyncContext, Wait

if TYPE_CHECKING:
    from connector.store import Job
    from connector.sync.resolve import References


def cosigner(ctx: SyncContext, refs: References, signature: Cosignature | None) -> Wait | str:
    """The co-signer's Practitioner reference; "" when none is co-signed or none is sent."""
    if signature is None or not (ctx.plan.note.keeps_authenticator or ctx.plan.provenance):
        return ""
    known = ctx.store.specialist_details(signature.staff_id) or {}
    found = refs.practitioner(_as_author(Specialist(id=signature.staff_id, **known)))
    if isinstance(found, Wait):
        return Wait(found.state, f"cosigner-{found.reason}"[:200], found.outcome_text)
    return found


def earlier_cosigners(ctx: SyncContext, job: Job, ledger: RecordLedger) -> dict[int, str]:
    """The co-signers of the note's earlier versions in the EHR, by record version id, from
    links only (no EHR look-up): a version re-written as superseded or entered-in-error
    keeps its own authenticator (where the EHR keeps one at all)."""
    if not ctx.plan.note.keeps_authenticator:
        return {}
    store = ctx.store
    earlier = {e.record_version_id for e in ledger.entries
               if e.resource_type == "DocumentReference" and e.record_version_id
               and e.record_version_id != job.record_version_id}
    if not earlier:
        return {}
    signed = store.cosignatures(sorted(earlier))
    for version_id, old in store.load_records(sorted(earlier - set(signed))).items():
        carried = carried_cosignature(old)
        if carried is not None:
            signed[version_id] = carried
    out: dict[int, str] = {}
    for version_id, signature in signed.items():
        link = store.get_link("practitioner", signature.staff_id)
        if link:
            out[version_id] = f"Practitioner/{link}"
    return out


def _as_author(specialist: Specialist) -> EncounterRecord:
    """A co-signer as the author of a record, for the author's resolution (which reads
    only the record's specialist)."""
    moment = datetime(2000, 1, 1, tzinfo=UTC)
    return EncounterRecord(source="-", id="-", participant=Participant(id="-"),
                           specialist=specialist, start=moment, end=moment)
