"""Recovery: settle writes whose answer was lost, by whatever look-up the EHR allows.

Nothing is re-sent before this says the EHR does not hold it:

- by identifier, where the EHR keeps a client's identifiers and can search them;
- by marker, where it does not (Oracle Health, Epic): the note's attachment
  title carries an HMAC marker and the note version, found again with the
  search parameters the write plan allows (patient + type + a date/period window
  around the session, every page) and matched on author and marker exactly.
  One match settles it; none: look again after a grace period, and re-send only
  after a second miss (some EHRs index a new note late); two or more: an admin;
- an in-place update is settled by reading the note: the new version's marker
  (or a version moved on) means applied; the version we last saw means not
  applied; anything else is someone's edit, never overwritten.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from connector.records import EncounterRecord, parse_datetime
from connector.states import JobState
from connector.store import Job
from connector.sync.model import (
    PROVENANCE_SYSTEM,
    LedgerView,
    Plan,
    SyncContext,
    Wait,
    Write,
    as_int,
    version_of,
)
from connector.sync.outcomes import Outcomes


class Recovery:
    def __init__(self, ctx: SyncContext, outcomes: Outcomes) -> None:
        self.ctx = ctx
        self.out = outcomes

    # -- staged modes -------------------------------------------------------

    def resume(self, plan: Plan, ledger: LedgerView) -> Wait | None:
        """Skip what the ledger confirms, settle what is in doubt; a Wait when it must wait.

        ``ledger``: the record's own rows (read once per claim); the store is asked only
        where they show a write of this version (then whether it is the newest of its
        identifier), so a first try costs no query.
        """
        store = self.ctx.store
        rvid = plan.job.record_version_id
        for write in plan.writes:
            if write.resource_type == "Provenance":
                entry = next((e for e in ledger.ledger_for_record(
                    plan.record.source, plan.record.id, "Provenance")
                    if e.identifier_value == write.value), None)
                if entry is not None and entry.state == "sent":
                    self._settle_provenance(plan, write)
                continue
            mine = ledger.ledger_latest(write.resource_type, write.system, write.value)
            if mine is None or mine.record_version_id != rvid:
                continue  # not written by this version yet
            entry = store.ledger_latest(write.resource_type, write.system, write.value)
            if entry is None or entry.record_version_id != rvid or entry.action == "match":
                continue  # not written by this version yet
            if entry.state == "confirmed":
                write.done, write.ehr_id = True, entry.ehr_id
            elif write.ehr_id:
                wait = self._settle_update(plan, write, entry.ehr_version)
                if wait is not None:
                    return wait
            else:
                wait = self._settle_create(plan, write, entry.state)
                if wait is not None:
                    return wait
            if write.done:
                plan.ids[write.full_url] = f"{write.resource_type}/{write.ehr_id}"
        return None

    def _settle_update(self, plan: Plan, write: Write, before: str | None) -> Wait | None:
        assert write.ehr_id is not None
        current = self.ctx.client.read(write.resource_type, write.ehr_id)
        version = version_of(current)
        if write.action == "amend":
            if _title(current) == _title(write.resource):
                self._settle(plan, write, write.ehr_id, version)
            elif version != before:
                return Wait(JobState.NEEDS_ATTENTION, "note-changed-in-ehr-meanwhile",
                            "The note was changed in the EHR after PeerSync last saw it; "
                            "the amendment was not written over it.")
        elif as_int(version) > as_int(before):
            self._settle(plan, write, write.ehr_id, version)
        return None

    def _settle_create(self, plan: Plan, write: Write, state: str) -> Wait | None:
        from mappings.resources import search_token

        if write.resource_type == "DocumentReference" and \
                self.ctx.plan.note.find_by == "marker":
            found = self._find_by_marker(write)
            if len(found) > 1:
                return Wait(JobState.NEEDS_ATTENTION, f"marker-matches-{len(found)}-notes")
            if not found:
                if state == "sent":  # the first miss: look again later, send nothing yet
                    with self.ctx.store.begin() as conn:
                        self.out.confirm(conn, plan, write, None, None, state="unseen")
                    return Wait(JobState.UNKNOWN, "note-not-found-yet-looking-again",
                                delay_s=self.ctx.config.sync.lookup_grace_s)
                return None  # missed twice: re-send
        else:
            found = self.ctx.client.search(
                write.resource_type, {"identifier": search_token(write.system, write.value)})
            if len(found) != 1:
                return None
        self._settle(plan, write, found[0]["id"], version_of(found[0]))
        return None

    def _find_by_marker(self, write: Write) -> list[dict[str, Any]]:
        """The notes of this patient, type and session window that carry this write's marker."""
        rules = self.ctx.plan.note
        doc = write.resource
        period = doc["context"]["period"]
        start, end = parse_datetime(period["start"]), parse_datetime(period["end"])
        if rules.window_precision == "date":
            low = (start - timedelta(days=1)).date().isoformat()
            high = (end + timedelta(days=1)).date().isoformat()
        else:
            low = (start - timedelta(days=1)).isoformat()
            high = (end + timedelta(days=1)).isoformat()
        coding = doc["type"]["coding"][0]
        params = [("patient", doc["subject"]["reference"].removeprefix("Patient/")),
                  ("type", f"{coding['system']}|{coding['code']}"),
                  (rules.search_window, f"ge{low}"), (rules.search_window, f"le{high}")]
        author = doc["author"][0]["reference"]
        return [found for found in self.ctx.client.search("DocumentReference", params)
                if _title(found) == _title(doc)
                and any(a.get("reference") == author for a in found.get("author") or [])]

    def _settle(self, plan: Plan, write: Write, ehr_id: str, version: str | None) -> None:
        with self.ctx.store.begin() as conn:
            self.out.confirm(conn, plan, write, ehr_id, version)
        write.done, write.ehr_id = True, ehr_id

    def _settle_provenance(self, plan: Plan, write: Write) -> None:
        """Provenance has no identifier: find ours by target and recorded time."""
        target = next((t["reference"] for t in write.resource.get("target", [])
                       if not t["reference"].startswith("urn:")), None)
        for w in plan.writes:
            if target is None and w.done and w.ehr_id and w.resource_type != "Provenance":
                target = f"{w.resource_type}/{w.ehr_id}"
        if target is None:
            return
        recorded = write.resource.get("recorded")
        for found in self.ctx.client.search("Provenance", {"target": target}):
            if _same_instant(found.get("recorded"), recorded):
                self._settle(plan, write, found["id"], version_of(found))
                return

    # -- transaction mode ---------------------------------------------------

    def settle_transaction(self, job: Job, record: EncounterRecord) -> Wait | None:
        """A transaction may have been applied without us hearing back: look before re-sending.

        Returns a Wait (here: SYNCED) when the EHR already holds this version,
        None when it does not (the record is then planned and sent as usual).
        """
        from mappings.resources import encounter_identifier, note_version_identifier, search_token

        store, client, profile = self.ctx.store, self.ctx.client, self.ctx.profile
        if record.note is not None and record.status != "entered_in_error":
            system, value = note_version_identifier(record, profile)
            resource_type = "DocumentReference"
        else:
            system, value = encounter_identifier(record, profile)
            resource_type = "Encounter"
        previous = store.ledger_latest(resource_type, system, value)
        found = client.search(resource_type, {"identifier": search_token(system, value)})
        if len(found) != 1:
            return None
        resource = found[0]
        version = version_of(resource)
        applied = previous is None or (
            previous.ehr_version is not None and version is not None
            and as_int(version) > as_int(previous.ehr_version))
        if not applied:
            return None
        # Applied as a whole (transactions are all or nothing): record what the EHR holds.
        with store.begin() as conn:
            store.ledger_add(conn, resource_type=resource_type, system=system, value=value,
                             ehr_id=resource.get("id"), ehr_version=version, action="match",
                             job=job)
            if resource_type == "DocumentReference" and self.ctx.plan.encounter == "create":
                system_e, value_e = encounter_identifier(record, profile)
                enc = client.search("Encounter", {"identifier": search_token(system_e, value_e)})
                if len(enc) == 1:
                    store.ledger_add(conn, resource_type="Encounter", system=system_e,
                                     value=value_e, ehr_id=enc[0].get("id"),
                                     ehr_version=version_of(enc[0]), action="match", job=job)
            if self.ctx.plan.provenance:
                # The Provenance travelled in the same (all-or-nothing) transaction.
                store.ledger_add(conn, resource_type="Provenance", system=PROVENANCE_SYSTEM,
                                 value=f"{job.record_version_id}@settled", ehr_id=None,
                                 ehr_version=None, action="provenance", job=job)
        return Wait(JobState.SYNCED, "settled-by-lookup")


def _title(resource: dict[str, Any]) -> str | None:
    content = resource.get("content") or [{}]
    return (content[0].get("attachment") or {}).get("title")


def _same_instant(a: str | None, b: str | None) -> bool:
    if not a or not b:
        return False
    try:
        return parse_datetime(a) == parse_datetime(b)
    except ValueError:
        return False
