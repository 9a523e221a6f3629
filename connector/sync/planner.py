"""The planner: a record version + its resolved references + the write plan -> writes (pure).

No I/O: what the EHR already holds comes from the ledger view passed in, and
every choice that depends on the EHR comes from the :class:`WritePlan`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from connector.records import EncounterRecord
from connector.store import LedgerEntry
from connector.sync.model import (
    PROVENANCE_SYSTEM,
    LedgerView,
    Refs,
    Write,
    note_version_number,
    urn,
)
from connector.writeplan import WritePlan
from mappings.profile import Profile

CONTAINED_ENCOUNTER_ID = "encounter"


@dataclass(slots=True)
class Planned:
    writes: list[Write]
    proof: Write | None = None  # the write whose presence in the EHR proves the plan applied
    omitted: list[str] = field(default_factory=list)  # what this EHR cannot carry (reason codes)
    part2_form: str | None = None  # labels+content[1] | notice-in-content[0]


def omitted_parts(record: EncounterRecord, plan: WritePlan) -> list[str]:
    """What of this record the EHR cannot carry: reason codes, shown on the record's page."""
    if plan.encounter != "ehr":
        return []
    out = []
    if record.status in ("cancelled", "no_show"):
        out.append(f"encounter-status-{record.status}:ehr-owns-encounters")
    if record.status == "entered_in_error":
        out.append("encounter-retraction:ehr-owns-encounters")
    if record.goals:
        out.append("goals:ehr-owns-encounters")
    return out


def plan_record(
    record: EncounterRecord,
    refs: Refs,
    *,
    key: str,
    profile: Profile,
    plan: WritePlan,
    ledger: LedgerView,
    recorded: datetime,
    ledger_key: str = "",
    marker_key: bytes = b"",
) -> Planned:
    """The writes that bring the EHR up to this record version (pure, given the ledger).

    Encounter (create, update or retract: only where the plan writes
    Encounters); the note version's DocumentReference, either a new note that
    replaces the version before it (which becomes superseded) or, where the
    EHR amends in place, an update of the same note; on retraction every
    standing note marked entered-in-error; and, where the EHR stores
    Provenance, one for the change.
    """
    from mappings.notes import NoteShape, document_reference_json
    from mappings.resources import encounter_identifier, encounter_json, note_version_identifier

    retracting = record.status == "entered_in_error"
    rules = plan.note
    planned = Planned(writes=[], omitted=omitted_parts(record, plan))
    writes = planned.writes
    enc_ref: str | None = refs.encounter or None

    def encounter_resource(rec: EncounterRecord, *, validate: bool = True) -> dict[str, Any]:
        return encounter_json(rec, profile, patient_ref=refs.patient,
                              practitioner_ref=refs.practitioner,
                              organization_ref=refs.organization or None, validate=validate)

    if plan.encounter == "create":
        enc_system, enc_value = encounter_identifier(record, profile)
        enc_ledger = ledger.ledger_latest("Encounter", enc_system, enc_value)
        enc_write = Write(
            "Encounter", encounter_resource(record), urn("Encounter", enc_system, enc_value, key),
            "retract" if retracting else ("update" if enc_ledger else "create"),
            enc_system, enc_value,
            ehr_id=enc_ledger.ehr_id if enc_ledger else None,
            if_match=enc_ledger.ehr_version if enc_ledger else None,
        )
        writes.append(enc_write)
        planned.proof = enc_write
        enc_ref = f"Encounter/{enc_write.ehr_id}" if enc_write.ehr_id else enc_write.full_url

    def contained_encounter(rec: EncounterRecord) -> list[dict[str, Any]]:
        resource = encounter_resource(rec, validate=False)  # validated within the note
        resource["id"] = CONTAINED_ENCOUNTER_ID
        resource.pop("meta", None)  # contained resources carry no meta of their own
        return [resource]

    if plan.encounter == "contained":
        enc_ref = f"#{CONTAINED_ENCOUNTER_ID}"

    def note_doc(rec: EncounterRecord, *, update: bool, authenticator: str = "",
                 **choices: Any) -> dict[str, Any]:
        part2_in_labels = plan.part2_in_labels
        shape = NoteShape(
            content_type=rules.content_type_update if update else rules.content_type,
            part2_trailer=not part2_in_labels,
            identifiers=rules.keeps_identifiers,  # never rely on (or send) what is dropped
            marker_key=marker_key if rules.find_by == "marker" else None,
            doc_status=choices.pop("doc_status", "final"),
            relates_to=rules.keeps_relates_to,
        )
        return document_reference_json(
            rec, profile, patient_ref=refs.patient, practitioner_ref=refs.practitioner,
            encounter_ref=enc_ref, note_format=_format(rules.content_type),
            organization_ref=refs.organization, shape=shape,
            contained=contained_encounter(rec) if plan.encounter == "contained" else None,
            # a co-signing supervisor, where the EHR keeps it (else audit log/Provenance only)
            authenticator_ref=authenticator if rules.keeps_authenticator else None,
            **choices,
        )

    def rewrite(entry: LedgerEntry, status: str, action: str) -> Write:
        # Re-map an already-sent note version with a new status; content unchanged.
        assert entry.record_version_id is not None and entry.ehr_id is not None
        if action == "retract" and rules.retraction == "partial":
            doc: dict[str, Any] = {"resourceType": "DocumentReference", "status": status}
        else:
            old = ledger.load_records([entry.record_version_id])[entry.record_version_id]
            amended = rules.amendment == "update" and note_version_number(
                entry.identifier_value) > 1
            doc = note_doc(old, update=True, status=status,
                           doc_status="amended" if amended else "final",
                           authenticator=refs.earlier_authenticators.get(
                               entry.record_version_id, ""))
        doc["id"] = entry.ehr_id
        return Write("DocumentReference", doc,
                     urn("DocumentReference", entry.identifier_value, action, key), action,
                     entry.identifier_system, entry.identifier_value,
                     ehr_id=entry.ehr_id, if_match=entry.ehr_version)

    sent_notes = [
        entry for entry in ledger.ledger_for_record(record.source, record.id, "DocumentReference")
        if entry.identifier_system == profile.note_version_system(record.source)
    ]
    standing = _standing(sent_notes)
    if retracting:
        # Retract every note still standing; never create a new note.
        writes.extend(rewrite(entry, "entered-in-error", "retract") for entry in standing)
    elif record.note is not None:
        nv_system, nv_value = note_version_identifier(record, profile)
        same = next((e for e in sent_notes if e.identifier_value == nv_value), None)
        older = [e for e in standing if e.identifier_value != nv_value]
        newest = max(older, key=lambda e: note_version_number(e.identifier_value), default=None)
        if rules.amendment == "update" and newest is not None and same is None:
            # The same note, amended in place (docStatus amended), If-Match its version.
            doc = note_doc(record, update=True, doc_status="amended",
                           authenticator=refs.authenticator)
            doc["id"] = newest.ehr_id
            doc_write = Write("DocumentReference", doc,
                              urn("DocumentReference", nv_system, nv_value, key), "amend",
                              nv_system, nv_value, ehr_id=newest.ehr_id,
                              if_match=newest.ehr_version)
            older = []
        else:
            replaces = f"DocumentReference/{newest.ehr_id}" if newest else None
            amended = rules.amendment == "update" and record.note.version > 1
            doc = note_doc(record, update=same is not None, replaces_ref=replaces,
                           doc_status="amended" if amended and same else "final",
                           authenticator=refs.authenticator)
            doc_write = Write("DocumentReference", doc,
                              urn("DocumentReference", nv_system, nv_value, key),
                              "update" if same else "create", nv_system, nv_value,
                              ehr_id=same.ehr_id if same else None,
                              if_match=same.ehr_version if same else None)
        writes.append(doc_write)
        if not same or planned.proof is None:
            planned.proof = doc_write
        if plan.updates("DocumentReference"):
            writes.extend(rewrite(entry, "superseded", "supersede") for entry in older)
    if record.part2 and any(w.resource_type == "DocumentReference" for w in writes):
        planned.part2_form = ("labels+content[1]" if plan.part2_in_labels
                              else "notice-in-content[0]")
    if not writes:
        planned.proof = None
        return planned  # e.g. no note, and the EHR owns the Encounter
    if plan.provenance:
        writes.append(_provenance(record, refs, writes, recorded=recorded, key=key,
                                  ledger_key=ledger_key))
    return planned


def _standing(sent_notes: list[LedgerEntry]) -> list[LedgerEntry]:
    """Notes sent and not (for sure) superseded or retracted: the newest entry per EHR id.

    An unconfirmed supersede/retract stays standing: the staged sender settles it by
    look-up. Where notes are amended in place, several versions share one EHR id.
    """
    by_id: dict[str, LedgerEntry] = {}
    for entry in sent_notes:
        if not entry.ehr_id:
            continue
        if entry.action in ("supersede", "retract") and entry.state == "confirmed":
            by_id[entry.ehr_id] = entry
            continue
        held = by_id.get(entry.ehr_id)
        if held is None or note_version_number(entry.identifier_value) >= \
                note_version_number(held.identifier_value):
            by_id[entry.ehr_id] = entry
    return [e for e in by_id.values()
            if not (e.action in ("supersede", "retract") and e.state == "confirmed")]


def _format(content_type: str) -> str:
    return "application/xhtml+xml" if content_type.startswith("application/xhtml") \
        else "text/plain"


def _provenance(record: EncounterRecord, refs: Refs, writes: list[Write], *,
                recorded: datetime, key: str, ledger_key: str) -> Write:
    from mappings.resources import provenance_json

    retracting = record.status == "entered_in_error"
    targets = [f"{w.resource_type}/{w.ehr_id}" if w.ehr_id else w.full_url for w in writes]
    first = writes[0]
    provenance = provenance_json(
        targets=targets, recorded=recorded, practitioner_ref=refs.practitioner,
        device_ref=refs.device, organization_ref=refs.organization, part2=record.part2,
        activity="NULLIFY" if retracting else ("CREATE" if first.action == "create" else "UPDATE"),
        verifier_ref=refs.authenticator or None,  # the co-signing supervisor
    )
    return Write("Provenance", provenance, urn("Provenance", key), "provenance",
                 PROVENANCE_SYSTEM, f"{ledger_key}@{recorded.isoformat()}")

