"""Reference resolution: one phase before planning, so bundles hold literal references only.

The participant's Patient (by MRN, or an admin's link), the specialist's
Practitioner (by staff id or NPI; created once where the write plan allows it),
the agency Organization and connector Device (matched or created once, or left
out), and the EHR's own Encounter where the EHR owns them. What the plan rules
out is never sent: a type the EHR cannot create is only ever matched.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections.abc import Callable, Sequence
from datetime import timedelta
from functools import partial
from typing import TYPE_CHECKING, Any

from connector.errors import ConnectorError
from connector.records import EncounterRecord, parse_datetime
from connector.states import JobState
from connector.store import Job, StoreError
from connector.sync.agency import ensure_agency
from connector.sync.concurrency import run_all
from connector.sync.model import LedgerView, SyncContext, Wait, version_of

if TYPE_CHECKING:
    pass


Params = dict[str, str] | list[tuple[str, str]]  # a search's parameters (names may repeat)


log = logging.getLogger("peersync.sync")


class References:
    """Resolves one record's references; caches per run (cleared by :meth:`reset`).

    :meth:`prefetch` makes a claim's look-ups ahead, side by side (``[ehr]
    max_in_flight`` at once): the searches only, their answers kept for the one
    resolution that asks next. Every decision (a link, a create, a wait) is still
    taken one record after another, under the same locks, from those answers.
    """

    def __init__(self, ctx: SyncContext) -> None:
        self.ctx = ctx
        self._patients: dict[str, Wait | str] = {}
        self._patient_links: dict[str, str] = {}  # per run: "" = no admin link
        self._practitioners: dict[str, Wait | str] = {}
        self._agency: tuple[str, str] | None = None
        # searches made ahead by prefetch: (type, query) -> the matches, used once
        self._found: dict[tuple[str, str], list[dict[str, Any]]] = {}
        self._reused: set[tuple[str, str]] = set()  # of _found: answers other workers shared
        self._to_share: dict[str, str] = {}  # matches found here, shared at the next claim

    def reset(self) -> None:
        self._patients.clear()
        self._patient_links.clear()
        self._practitioners.clear()
        self._found.clear()
        self._reused.clear()

    def _search(self, resource_type: str, params: Params) -> list[dict[str, Any]]:
        """A search's matches: made ahead by :meth:`prefetch`, or now."""
        found = self._found.pop((resource_type, _query(params)), None)
        if found is not None:
            return found
        return self.ctx.client.search(resource_type, params)

    # -- look-ups ahead -----------------------------------------------------

    def prefetch(self, records: Sequence[EncounterRecord],
                 encounter_known: Callable[[EncounterRecord], bool]) -> int:
        """Search, side by side, for what these records' resolutions will look up:
        each new MRN's Patient and staff id's Practitioner, then (where the EHR owns
        them) each session's Encounter. A search that fails is simply made again
        when its record is resolved (and fails there, by name). Returns the number
        of searches made."""
        self.share_found()
        self._found.clear()
        self._reused.clear()
        searches: dict[tuple[str, str], Params] = {}
        for record in records:
            for resource_type, params in self._first_lookups(record):
                searches.setdefault((resource_type, _query(params)), params)
        self._reuse_shared(searches)
        made = self._search_all(searches)
        if self.ctx.plan.encounter == "ehr":
            encounters: dict[tuple[str, str], Params] = {}
            for record in records:
                wanted = self._encounter_lookup(record, encounter_known)
                if wanted is not None:
                    encounters.setdefault(("Encounter", _query(wanted)), wanted)
            made += self._search_all(encounters)
        return made

    def share_found(self) -> None:
        """Give the other workers the Patient matches found since the last claim. A cache:
        if the database refuses it now, the others search for themselves."""
        found, self._to_share = self._to_share, {}
        try:
            self.ctx.store.share_matches("Patient", found)
        except StoreError as exc:
            log.warning("%d Patient match(es) not shared with the other workers: %s",
                        len(found), exc)

    def _reuse_shared(self, searches: dict[tuple[str, str], Params]) -> None:
        """Take out of ``searches`` the Patient searches another worker (or this one, in
        an earlier run) found one match for lately (``[sync] match_reuse_s``): their
        answer is that match. Practitioners are shared already, as links."""
        wanted = {_sha256(key[1]): key for key in searches if key[0] == "Patient"}
        shared = self.ctx.store.shared_matches(
            "Patient", wanted, max_age_s=self.ctx.config.sync.match_reuse_s)
        for digest, ehr_id in shared.items():
            key = wanted[digest]
            del searches[key]
            self._found[key] = [{"resourceType": "Patient", "id": ehr_id}]
            self._reused.add(key)

    def _first_lookups(self, record: EncounterRecord) -> list[tuple[str, Params]]:
        from mappings.resources import NPI, mrn_identifier, search_token, staff_identifier

        lookups: list[tuple[str, Params]] = []
        mrn = record.participant.mrn
        if mrn and mrn not in self._patients and not self._patient_link(record):
            lookups.append(("Patient", {"identifier": search_token(
                *mrn_identifier(mrn, self.ctx.profile))}))
        staff_id = record.specialist.id
        if staff_id not in self._practitioners:
            if self.ctx.plan.practitioner_by == "npi":
                token = search_token(NPI, record.specialist.npi) if record.specialist.npi else ""
            else:
                token = search_token(*staff_identifier(record.specialist, self.ctx.profile))
            linked = self.ctx.store.get_link("practitioner", staff_id) if token else None
            if linked:
                self._practitioners[staff_id] = f"Practitioner/{linked}"
            elif token:
                lookups.append(("Practitioner", {"identifier": token}))
        return lookups

    def _encounter_lookup(self, record: EncounterRecord,
                          known: Callable[[EncounterRecord], bool]) -> Params | None:
        patient = self._patients.get(record.participant.mrn or "") \
            or (f"Patient/{link}" if (link := self._patient_link(record)) else None)
        if not isinstance(patient, str) or known(record) \
                or self.ctx.store.get_link("encounter", f"{record.source}|{record.id}"):
            return None
        return _encounter_params(record, patient)

    def _search_all(self, searches: dict[tuple[str, str], Params]) -> int:
        if not searches:
            return 0
        keys = list(searches)

        slots = getattr(self.ctx.client, "in_flight", None)
        first = getattr(slots, "urgent", contextlib.nullcontext)

        def one(resource_type: str, params: Params) -> list[dict[str, Any]] | None:
            try:
                with first():  # the planning waits on these: ahead of queued writes
                    return self.ctx.client.search(resource_type, params)
            except ConnectorError:
                return None  # made again, and reported, when its record is resolved

        tasks = [partial(one, key[0], searches[key]) for key in keys]
        for key, found in zip(keys, run_all(tasks, self.ctx.config.ehr.max_in_flight),
                              strict=True):
            if found is not None:
                self._found[key] = found
        return len(keys)

    def _patient_link(self, record: EncounterRecord) -> str:
        """An admin's link of this participant to an EHR Patient ("" for none), per run."""
        link_key = f"{record.source}|{record.participant.id}"
        linked = self._patient_links.get(link_key)
        if linked is None:
            linked = self.ctx.store.get_link("patient", link_key) or ""
            self._patient_links[link_key] = linked
        return linked

    def _if_none_exist(self, token: str) -> dict[str, str] | None:
        return {"identifier": token} if self.ctx.plan.conditional_create else None

    # -- Patient ----------------------------------------------------------

    def patient(self, record: EncounterRecord) -> Wait | str:
        from mappings.resources import mrn_identifier, search_token

        linked = self._patient_link(record)
        if linked:
            return f"Patient/{linked}"
        creates = self.ctx.profile.create_patients and self.ctx.plan.creates("Patient")
        mrn = record.participant.mrn
        if not mrn:
            return self._create_patient(record) if creates else \
                Wait(JobState.WAITING_PATIENT, "no-mrn")
        cached = self._patients.get(mrn)
        if cached is not None:
            return cached
        system, value = mrn_identifier(mrn, self.ctx.profile)
        token = search_token(system, value)
        params: Params = {"identifier": token}
        found = self._search("Patient", params)
        result: Wait | str
        if len(found) == 1:
            result = f"Patient/{found[0]['id']}"
            key = ("Patient", _query(params))
            if key not in self._reused and self.ctx.config.sync.match_reuse_s > 0:
                self._to_share[_sha256(key[1])] = found[0]["id"]
        elif len(found) > 1:
            result = Wait(JobState.WAITING_PATIENT, f"mrn-matches-{len(found)}-patients")
        elif creates:
            result = f"Patient/{self._create_patient_resource(record, token)}"
        else:
            result = Wait(JobState.WAITING_PATIENT, "mrn-no-match")
        self._patients[mrn] = result
        return result

    def _create_patient_resource(self, record: EncounterRecord, token: str) -> str:
        from mappings.resources import map_patient

        written = self.ctx.client.create(
            map_patient(record, self.ctx.profile).model_dump(mode="json"),
            if_none_exist=self._if_none_exist(token),
        )
        return written.id

    def _create_patient(self, record: EncounterRecord) -> str:
        from mappings.resources import participant_identifier, search_token

        system, value = participant_identifier(record, self.ctx.profile)
        key = f"{record.source}|{record.participant.id}"
        with self.ctx.store.exclusive(f"link|patient|{key}") as conn:
            linked = self.ctx.store.get_link("patient", key)
            if linked:
                return f"Patient/{linked}"
            token = search_token(system, value)
            found = self.ctx.client.search("Patient", {"identifier": token})
            ehr_id = (found[0]["id"] if len(found) == 1
                      else self._create_patient_resource(record, token))
            self.ctx.store.set_link("patient", key, ehr_id, linked_by="create", conn=conn)
        return f"Patient/{ehr_id}"

    # -- Practitioner -----------------------------------------------------

    def practitioner(self, record: EncounterRecord) -> Wait | str:
        from mappings.resources import NPI, map_practitioner, search_token, staff_identifier

        store, plan = self.ctx.store, self.ctx.plan
        staff_id = record.specialist.id
        cached = self._practitioners.get(staff_id)
        if cached is not None:
            return cached
        linked = store.get_link("practitioner", staff_id)
        if linked:
            self._practitioners[staff_id] = f"Practitioner/{linked}"
            return self._practitioners[staff_id]
        if plan.practitioner_by == "npi":
            if not record.specialist.npi:
                return Wait(JobState.WAITING_STAFF, "no-npi-to-match")
            token = search_token(NPI, record.specialist.npi)
        else:
            token = search_token(*staff_identifier(record.specialist, self.ctx.profile))
        result: Wait | str
        # One worker at a time per staff id (a conditional create is racy on the EHR,
        # and an EHR without one would get two): the next one finds the link.
        with store.exclusive(f"link|practitioner|{staff_id}") as conn:
            linked = store.get_link("practitioner", staff_id)
            found = [] if linked else self._search("Practitioner", {"identifier": token})
            if linked:
                result = f"Practitioner/{linked}"
            elif len(found) == 1:
                store.set_link("practitioner", staff_id, found[0]["id"], linked_by="match",
                               conn=conn)
                result = f"Practitioner/{found[0]['id']}"
            elif len(found) > 1:
                result = Wait(JobState.WAITING_STAFF,
                              f"staff-id-matches-{len(found)}-practitioners")
            elif not plan.creates("Practitioner"):
                result = Wait(JobState.WAITING_STAFF, "staff-id-no-match-ehr-cannot-create")
            else:
                specialist = record.specialist
                if not specialist.has_name:
                    known = store.specialist_details(staff_id)
                    if known:
                        from connector.records import Specialist

                        specialist = Specialist(id=staff_id, **known)
                if not specialist.has_name:
                    result = Wait(JobState.WAITING_STAFF, "staff-id-no-match-no-name")
                else:
                    written = self.ctx.client.create(
                        map_practitioner(specialist, self.ctx.profile).model_dump(mode="json"),
                        if_none_exist=self._if_none_exist(token),
                    )
                    store.set_link("practitioner", staff_id, written.id,
                                   linked_by="create", conn=conn)
                    result = f"Practitioner/{written.id}"
        if not isinstance(result, Wait):
            self._practitioners[staff_id] = result
        return result

    # -- Organization and Device -------------------------------------------

    def agency(self) -> tuple[str, str]:
        """The agency Organization and connector Device references ("" where not used)."""
        if self._agency is None:
            ctx = self.ctx
            self._agency = ensure_agency(ctx.store, ctx.client, ctx.profile, ctx.plan)
        return self._agency

    # -- the EHR's own Encounter -------------------------------------------

    def ehr_encounter(self, job: Job, record: EncounterRecord, patient_ref: str,
                      ledger: LedgerView) -> Wait | str:
        """The EHR's own Encounter of this session ("" where the note may go without one).

        An admin's link first; then the one Encounter of the patient whose period
        overlaps the session, kept in the ledger so later versions use the same one.
        """
        from mappings.resources import encounter_identifier

        linked = self.ctx.store.get_link("encounter", f"{record.source}|{record.id}")
        if linked:
            return f"Encounter/{linked}"
        system, value = encounter_identifier(record, self.ctx.profile)
        known = ledger.ledger_latest("Encounter", system, value)
        if known is not None and known.ehr_id:
            return f"Encounter/{known.ehr_id}"
        candidates = self._search("Encounter", _encounter_params(record, patient_ref))
        matches = [enc for enc in candidates if overlaps(enc.get("period") or {}, record)]
        if not matches and not self.ctx.plan.note.encounter_required:
            return ""  # the EHR takes a note with context.period alone
        if len(matches) != 1:
            reason = ("no-ehr-encounter-in-session-window" if not matches
                      else f"{len(matches)}-ehr-encounters-in-session-window")
            return Wait(JobState.WAITING_ENCOUNTER, reason)
        with self.ctx.store.begin() as conn:
            self.ctx.store.ledger_add(
                conn, resource_type="Encounter", system=system, value=value,
                ehr_id=matches[0]["id"], ehr_version=version_of(matches[0]),
                action="match", job=job,
            )
        return f"Encounter/{matches[0]['id']}"


def _encounter_params(record: EncounterRecord, patient_ref: str) -> Params:
    """The search for the EHR's Encounters that may be this session's: the patient's, over
    the session's days and one either side (dates only: Epic searches periods by date), so
    a patient with years of visits is not paged through for every note."""
    day_before = (record.start - timedelta(days=1)).date().isoformat()
    day_after = (record.end + timedelta(days=1)).date().isoformat()
    return [("subject", patient_ref), ("date", f"ge{day_before}"), ("date", f"le{day_after}")]


def _sha256(query: str) -> str:
    return hashlib.sha256(query.encode("utf-8")).hexdigest()


def _query(params: Params) -> str:
    pairs = params.items() if isinstance(params, dict) else params
    return "&".join(f"{k}={v}" for k, v in sorted(pairs))


def overlaps(period: dict[str, Any], record: EncounterRecord) -> bool:
    """Does an EHR Encounter's period overlap the session? (open ends count as open)"""
    try:
        start = parse_datetime(period["start"]) if period.get("start") else None
        end = parse_datetime(period["end"]) if period.get("end") else None
    except ValueError:
        return False
    if start is None and end is None:
        return False
    if start is not None and start.tzinfo is None or end is not None and end.tzinfo is None:
        return False  # a date without time zone cannot be placed on the session's clock
    return (start is None or start <= record.end) and (end is None or end >= record.start)
