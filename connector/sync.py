"""The sync worker: claim jobs, resolve references, map, send, record.

One pass of :meth:`SyncEngine.run`:

1. claim a batch of due jobs (atomic, leased);
2. for each record decide whether it can go: Part 2 consent, the EHR Patient
   (by MRN, cached per run), the Practitioner (by staff id; created once from
   a known name), so that bundles hold literal references only;
3. plan the writes of each ready record: Encounter, the note version's
   DocumentReference (superseding the version it replaces), retractions, and
   a Provenance for the change. The write ledger decides create or update;
4. pack plans into bundles of at most ``max_bundle_entries``, one version of a
   record per bundle; send them in the EHR's mode. A refused transaction is
   re-sent one record per bundle so only the bad record waits;
5. record the EHR's ids and versions in the ledger and the job's new state,
   with an audit event, in one database transaction.

A job whose response was lost (or whose worker died mid-send) is ``unknown``
until an identifier search settles whether the EHR applied it; nothing is
re-sent before that.
"""

from __future__ import annotations

import logging
import random
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

from pydantic import ValidationError

from connector.config import Config
from connector.errors import (
    ConnectorError,
    EhrConflict,
    EhrError,
    EhrHttpError,
    EhrOutcomeUnknown,
    EhrRejected,
    Outcome,
)
from connector.fhir_client import FhirClient, entry_results
from connector.records import EncounterRecord
from connector.retry import decide
from connector.states import JobState
from connector.store import Job, LedgerEntry, Store, utcnow
from mappings.profile import Profile

log = logging.getLogger("peersync.sync")

# Provenance has no identifier of its own: the ledger keys ours by record version and time.
PROVENANCE_SYSTEM = "urn:peersync:provenance"
# Staged modes send these resource types in this order, each stage with literal references.
STAGES = ("Encounter", "DocumentReference", "Provenance")
NAMESPACE = uuid.UUID("4f7d0c9e-2b1a-4a47-9a55-6a1f0f5b3c21")


@dataclass(frozen=True, slots=True)
class Wait:
    """A record that cannot go yet (or needs nothing sent)."""

    state: JobState
    reason: str
    outcome_text: str | None = None


@dataclass(slots=True)
class Write:
    """One resource write of a record's plan (one bundle entry, or one request in single mode)."""

    resource_type: str
    resource: dict[str, Any]
    full_url: str
    action: str  # create | update | supersede | retract | provenance
    system: str = ""  # the identifier the ledger keys it by ("" for Provenance)
    value: str = ""
    ehr_id: str | None = None  # known from the ledger: update by id
    done: bool = False  # staged modes: already in the EHR (ledger-confirmed)
    # the version we last wrote or saw: an update by id is sent with If-Match,
    # so an edit made in the EHR meanwhile is never overwritten unseen
    if_match: str | None = None
    refreshed: bool = False  # the version was re-read after an If-Match conflict

    @property
    def token(self) -> str:
        from mappings.resources import search_token

        return search_token(self.system, self.value)

    def request(self, *, conditional: bool) -> dict[str, Any]:
        if self.resource_type == "Provenance":
            return {"method": "POST", "url": "Provenance"}
        if self.ehr_id:
            request = {"method": "PUT", "url": f"{self.resource_type}/{self.ehr_id}"}
            if self.if_match:
                request["ifMatch"] = f'W/"{self.if_match}"'
            return request
        if conditional:
            return {"method": "PUT", "url": f"{self.resource_type}?identifier={self.token}"}
        return {"method": "POST", "url": self.resource_type}


@dataclass(slots=True)
class Plan:
    job: Job
    record: EncounterRecord
    writes: list[Write]
    # the write whose presence in the EHR proves this plan was applied
    proof: Write | None = None
    # staged modes: urn:uuid of a write -> its literal reference once written
    ids: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class SyncSummary:
    claimed: int = 0
    states: Counter[str] = field(default_factory=Counter)
    bundles: int = 0
    requests: int = 0
    waited_s: float = 0.0
    errors: list[str] = field(default_factory=list)

    def add(self, state: JobState) -> None:
        self.states[state.value] += 1


class SyncEngine:
    """Sends due jobs to the EHR. One engine per worker process."""

    def __init__(
        self,
        *,
        store: Store,
        client: FhirClient,
        profile: Profile,
        config: Config,
        worker: str | None = None,
        clock: Callable[[], datetime] = utcnow,
        rng: random.Random | None = None,
    ) -> None:
        self.store = store
        self.client = client
        self.profile = profile
        self.config = config
        self.ehr = config.ehr
        self.worker = worker or f"worker-{uuid.uuid4().hex[:8]}"
        self.clock = clock
        self.rng = rng or random.Random()
        self._patients: dict[str, Wait | str] = {}
        self._patient_links: dict[str, str] = {}  # per run: "" = no admin link
        self._practitioners: dict[str, Wait | str] = {}
        self._agency: tuple[str, str] | None = None

    # -- the loop ---------------------------------------------------------

    def run(
        self,
        *,
        max_wait_s: float | None = None,
        stop: threading.Event | None = None,
        on_progress: Callable[[SyncSummary], None] | None = None,
        include_waiting: bool = True,
    ) -> SyncSummary:
        """Work until nothing is due; wait for scheduled retries up to ``max_wait_s``.

        ``include_waiting``: also re-resolve the waiting records (once in this run).
        """
        max_wait = self.config.sync.max_wait_s if max_wait_s is None else max_wait_s
        summary = SyncSummary()
        run_id = uuid.uuid4().hex
        self._patients.clear()
        self._patient_links.clear()
        self._practitioners.clear()
        waited = 0.0
        while not (stop and stop.is_set()):
            claimed = self.run_once(run_id, summary, include_waiting=include_waiting)
            if on_progress and claimed:
                on_progress(summary)
            if claimed:
                continue
            due_at = self.store.next_due_at()
            if due_at is None:
                break
            pause = max(0.0, (due_at - self.clock()).total_seconds())
            if waited + pause > max_wait:
                break
            pause = min(pause, 1.0) if pause > 0 else 0.05
            waited += pause
            if stop is not None:
                if stop.wait(pause):
                    break
            else:
                time.sleep(pause)
        summary.waited_s = waited
        return summary

    def records_per_bundle(self) -> int:
        # A record needs at most ~5 entries (Encounter, note, superseded note,
        # Provenance, one retraction); bundles are packed by real entry count.
        return max(1, self.ehr.max_bundle_entries // 3)

    def run_once(self, run_id: str, summary: SyncSummary, *, include_waiting: bool = True) -> int:
        jobs = self.store.claim(
            worker=self.worker,
            run_id=run_id,
            limit=self.records_per_bundle(),
            lease_s=self.config.sync.lease_s,
            include_waiting=include_waiting,
            now=self.clock(),
        )
        if not jobs:
            return 0
        summary.claimed += len(jobs)
        with self._lease_renewal([job.id for job in jobs]):
            records = self.store.load_records([job.record_version_id for job in jobs])
            ledgers = self.store.ledger_snapshot([(job.source, job.record_id) for job in jobs])
            plans: list[Plan] = []
            for job in jobs:
                record = records[job.record_version_id]
                try:
                    ledger = RecordLedger(ledgers[(job.source, job.record_id)], self.store)
                    outcome = self._prepare(job, record, ledger)
                except ConnectorError as exc:
                    self._fail(job, exc, summary)
                    continue
                except ValidationError as exc:
                    # The record passed intake but FHIR refuses a value (e.g. a control
                    # character in a name): name the elements, never the values.
                    where = sorted({".".join(str(p) for p in err["loc"]) for err in exc.errors()})
                    self._finish(job, JobState.NEEDS_ATTENTION, summary,
                                 reason=f"cannot be mapped to FHIR R4: {', '.join(where)[:150]}")
                    continue
                if isinstance(outcome, Wait):
                    self._finish(
                        job,
                        outcome.state,
                        summary,
                        reason=outcome.reason,
                        outcome_text=outcome.outcome_text,
                    )
                else:
                    plans.append(outcome)
            for bundle in self._pack(plans):
                self._send(bundle, summary)
        return len(jobs)

    @contextmanager
    def _lease_renewal(self, job_ids: list[int]) -> Iterator[None]:
        """Renew the lease every ``renew_every_s`` while this batch is being worked on."""
        done = threading.Event()

        def renew() -> None:
            while not done.wait(self.config.sync.renew_every_s):
                try:
                    self.store.renew_lease(
                        job_ids, worker=self.worker, lease_s=self.config.sync.lease_s
                    )
                except ConnectorError:
                    log.warning("lease renewal failed for %d jobs", len(job_ids))

        thread = threading.Thread(target=renew, name="lease-renewal", daemon=True)
        thread.start()
        try:
            yield
        finally:
            done.set()
            thread.join()

    # -- deciding ---------------------------------------------------------

    def _prepare(self, job: Job, record: EncounterRecord, ledger: RecordLedger) -> Plan | Wait:
        if record.part2:
            consent = self.store.consent_status(record.source, record.participant.id)
            if consent != "active":
                return Wait(JobState.WAITING_CONSENT, f"part2-consent-{consent or 'none'}")
        if self._already_applied(job, record, ledger):
            # A re-send of a version the EHR already holds: no write, no second Provenance.
            return Wait(JobState.SYNCED, "already-in-ehr")
        # A 5xx can come after the EHR applied the bundle (a gateway's 504 on a slow
        # upstream, a 500 after commit): a retried transaction is looked up first too.
        in_doubt = job.claimed_from in (JobState.UNKNOWN.value, JobState.IN_FLIGHT.value,
                                        JobState.RETRY_SCHEDULED.value)
        if in_doubt and self.ehr.mode == "transaction":
            settled = self._settle(job, record)
            if settled is not None:
                return settled
        if record.status == "entered_in_error" and not ledger.ledger_for_record(
            record.source, record.id
        ):
            return Wait(JobState.SYNCED, "nothing-sent-nothing-to-retract")
        patient = self._resolve_patient(record)
        if isinstance(patient, Wait):
            return patient
        practitioner = self._resolve_practitioner(record)
        if isinstance(practitioner, Wait):
            return practitioner
        ehr_encounter = None
        if not self.ehr.create_encounters:
            found = self._ehr_encounter(job, record, patient, ledger)
            if isinstance(found, Wait):
                return found
            ehr_encounter = found
        org_ref, device_ref = self._agency_refs()
        refs = Refs(
            patient=patient, practitioner=practitioner, organization=org_ref, device=device_ref
        )
        writes, proof = plan_record(
            record,
            refs,
            key=str(job.id),
            profile=self.profile,
            note_format=self.ehr.note_content_type,
            ledger=ledger,
            recorded=self._recorded(job, ledger),
            ledger_key=str(job.record_version_id),
            ehr_encounter=ehr_encounter,
        )
        if not writes:
            return Wait(JobState.SYNCED, "nothing-to-send-ehr-owns-the-encounter")
        plan = Plan(job=job, record=record, writes=writes, proof=proof)
        if self.ehr.mode != "transaction":
            self._skip_done(plan)
        return plan

    def _already_applied(self, job: Job, record: EncounterRecord, ledger: RecordLedger) -> bool:
        """The ledger holds this record version's Provenance: every write of it went through."""
        prefix = f"{job.record_version_id}@"
        return any(
            e.identifier_value.startswith(prefix) and e.state == "confirmed"
            for e in ledger.ledger_for_record(record.source, record.id, "Provenance")
        )

    def _recorded(self, job: Job, ledger: RecordLedger) -> datetime:
        """The Provenance time of this job: reused after a lost response, so it can be found."""
        prefix = f"{job.record_version_id}@"
        for entry in ledger.ledger_for_record(job.source, job.record_id, "Provenance"):
            if entry.identifier_value.startswith(prefix):
                try:
                    return datetime.fromisoformat(entry.identifier_value[len(prefix):])
                except ValueError:
                    break
        # Whole seconds: an EHR that stores fewer digits must still match it after a lost answer.
        return self.clock().replace(microsecond=0)

    def _ehr_encounter(self, job: Job, record: EncounterRecord, patient_ref: str,
                       ledger: RecordLedger) -> Wait | str:
        """The EHR's own Encounter for this session (for EHRs that cannot create Encounters).

        The one Encounter of the patient whose period overlaps the session; the
        match is kept in the ledger so later versions use the same one.
        """
        from mappings.resources import encounter_identifier

        system, value = encounter_identifier(record, self.profile)
        known = ledger.ledger_latest("Encounter", system, value)
        if known is not None and known.ehr_id:
            return f"Encounter/{known.ehr_id}"
        day_before = (record.start - timedelta(days=1)).date().isoformat()
        candidates = self.client.search(
            "Encounter", {"subject": patient_ref, "date": f"ge{day_before}"}
        )
        matches = [enc for enc in candidates if _overlaps(enc.get("period") or {}, record)]
        if len(matches) != 1:
            reason = ("no-ehr-encounter-in-session-window" if not matches
                      else f"{len(matches)}-ehr-encounters-in-session-window")
            return Wait(JobState.WAITING_ENCOUNTER, reason)
        with self.store.begin() as conn:
            self.store.ledger_add(
                conn, resource_type="Encounter", system=system, value=value,
                ehr_id=matches[0]["id"],
                ehr_version=(matches[0].get("meta") or {}).get("versionId"),
                action="match", job=job,
            )
        return f"Encounter/{matches[0]['id']}"

    def _resolve_patient(self, record: EncounterRecord) -> Wait | str:
        from mappings.resources import map_patient, mrn_identifier, search_token

        link_key = f"{record.source}|{record.participant.id}"
        linked = self._patient_links.get(link_key)
        if linked is None:
            linked = self.store.get_link("patient", link_key) or ""
            self._patient_links[link_key] = linked
        if linked:
            return f"Patient/{linked}"
        mrn = record.participant.mrn
        if not mrn:
            if self.profile.create_patients:
                return self._create_patient(record)
            return Wait(JobState.WAITING_PATIENT, "no-mrn")
        cached = self._patients.get(mrn)
        if cached is not None:
            return cached
        system, value = mrn_identifier(mrn, self.profile)
        found = self.client.search("Patient", {"identifier": search_token(system, value)})
        result: Wait | str
        if len(found) == 1:
            result = f"Patient/{found[0]['id']}"
        elif len(found) > 1:
            result = Wait(JobState.WAITING_PATIENT, f"mrn-matches-{len(found)}-patients")
        elif self.profile.create_patients:
            written = self.client.create(
                map_patient(record, self.profile).model_dump(mode="json"),
                if_none_exist={"identifier": search_token(system, value)},
            )
            result = f"Patient/{written.id}"
        else:
            result = Wait(JobState.WAITING_PATIENT, "mrn-no-match")
        self._patients[mrn] = result
        return result

    def _create_patient(self, record: EncounterRecord) -> str:
        from mappings.resources import map_patient, participant_identifier, search_token

        system, value = participant_identifier(record, self.profile)
        written = self.client.create(
            map_patient(record, self.profile).model_dump(mode="json"),
            if_none_exist={"identifier": search_token(system, value)},
        )
        self.store.set_link(
            "patient", f"{record.source}|{record.participant.id}", written.id, linked_by="create"
        )
        return f"Patient/{written.id}"

    def _resolve_practitioner(self, record: EncounterRecord) -> Wait | str:
        from mappings.resources import map_practitioner, search_token, staff_identifier

        staff_id = record.specialist.id
        cached = self._practitioners.get(staff_id)
        if cached is not None:
            return cached
        linked = self.store.get_link("practitioner", staff_id)
        if linked:
            self._practitioners[staff_id] = f"Practitioner/{linked}"
            return self._practitioners[staff_id]
        system, value = staff_identifier(record.specialist, self.profile)
        token = search_token(system, value)
        result: Wait | str
        # One worker at a time per staff id (a conditional create is racy on the EHR,
        # see ensure_agency): the next one finds the link.
        with self.store.exclusive(f"link|practitioner|{staff_id}") as conn:
            linked = self.store.get_link("practitioner", staff_id)
            found = [] if linked else self.client.search("Practitioner", {"identifier": token})
            if linked:
                result = f"Practitioner/{linked}"
            elif len(found) == 1:
                self.store.set_link("practitioner", staff_id, found[0]["id"], linked_by="match",
                                    conn=conn)
                result = f"Practitioner/{found[0]['id']}"
            elif len(found) > 1:
                result = Wait(JobState.WAITING_STAFF,
                              f"staff-id-matches-{len(found)}-practitioners")
            else:
                specialist = record.specialist
                if not specialist.has_name:
                    known = self.store.specialist_details(staff_id)
                    if known:
                        from connector.records import Specialist

                        specialist = Specialist(id=staff_id, **known)
                if not specialist.has_name:
                    result = Wait(JobState.WAITING_STAFF, "staff-id-no-match-no-name")
                else:
                    written = self.client.create(
                        map_practitioner(specialist, self.profile).model_dump(mode="json"),
                        if_none_exist={"identifier": token},
                    )
                    self.store.set_link("practitioner", staff_id, written.id,
                                        linked_by="create", conn=conn)
                    result = f"Practitioner/{written.id}"
        if not isinstance(result, Wait):
            self._practitioners[staff_id] = result
        return result

    def _agency_refs(self) -> tuple[str, str]:
        """The agency Organization and connector Device: matched or created once, ids kept."""
        if self._agency is None:
            self._agency = ensure_agency(self.store, self.client, self.profile)
        return self._agency

    # -- planning ---------------------------------------------------------

    def _pack(self, plans: list[Plan]) -> Iterator[list[Plan]]:
        limit = self.ehr.max_bundle_entries
        bundle: list[Plan] = []
        size = 0
        for plan in plans:
            if bundle and size + len(plan.writes) > limit:
                yield bundle
                bundle, size = [], 0
            bundle.append(plan)
            size += len(plan.writes)
        if bundle:
            yield bundle

    # -- sending ----------------------------------------------------------

    def _send(self, plans: list[Plan], summary: SyncSummary) -> None:
        if self.ehr.mode == "transaction":
            self._send_transaction(plans, summary)
        else:
            self._send_staged(plans, summary)

    def _send_transaction(self, plans: list[Plan], summary: SyncSummary) -> None:
        bundle = bundle_for(
            [w for plan in plans for w in plan.writes], conditional=self.ehr.conditional
        )
        summary.bundles += 1
        summary.requests += 1
        try:
            response = self.client.transaction(bundle)
        except EhrRejected as exc:
            if len(plans) == 1 and self._refresh_versions(plans[0], exc):
                self._send_transaction(plans, summary)  # once, with the current versions
                return
            if len(plans) > 1:
                # All or nothing: find the bad record by sending each alone.
                log.info(
                    "transaction of %d records refused (%s); re-sending one by one",
                    len(plans), exc.status,
                )
                for plan in plans:
                    self._send_transaction([plan], summary)
                return
            self._fail(plans[0].job, exc, summary)
            return
        except EhrError as exc:
            for plan in plans:
                self._fail(plan.job, exc, summary)
            return
        results = entry_results(response)
        writes = [w for plan in plans for w in plan.writes]
        if len(results) != len(writes):
            error = EhrOutcomeUnknown(
                f"transaction response has {len(results)} entries for {len(writes)} sent",
                method="POST", url=self.client.base_url,
            )
            for plan in plans:
                self._fail(plan.job, error, summary)
            return
        by_write = dict(zip((id(w) for w in writes), results, strict=True))
        with self.store.begin() as conn:
            for plan in plans:
                for write in plan.writes:
                    result = by_write[id(write)]
                    self._confirm(conn, plan, write, result.id, result.version_id)
                self.store.finish(
                    conn, plan.job, JobState.SYNCED, actor=self.worker,
                    detail={"mode": "transaction", "resources": [
                        f"{w.resource_type}/{by_write[id(w)].id}" for w in plan.writes]},
                )
                summary.add(JobState.SYNCED)

    def _confirm(self, conn: Any, plan: Plan, write: Write, ehr_id: str | None,
                 version: str | None, *, state: str = "confirmed") -> None:
        self.store.ledger_add(
            conn, resource_type=write.resource_type, system=write.system, value=write.value,
            ehr_id=ehr_id or write.ehr_id, ehr_version=version, action=write.action,
            job=plan.job, state=state,
        )

    # -- batch and single modes: stage by stage, literal references only ----

    def _send_staged(self, plans: list[Plan], summary: SyncSummary) -> None:
        """Encounters first, then notes (pointing at the Encounters' real ids), then Provenance.

        Batch entries cannot reference each other, and single requests even
        less, so each stage waits for the ids the previous one produced. Every
        write is recorded in the ledger as intended before it is sent and as
        confirmed after, so a lost answer is settled by a look-up, not a re-send.
        """
        alive = {plan.job.id: plan for plan in plans}
        for stage in STAGES:
            items = [(plan, w) for plan in alive.values() for w in plan.writes
                     if w.resource_type == stage and not w.done]
            if not items:
                continue
            for plan, write in items:
                _literalize(write.resource, plan.ids)
            priors = [self.store.ledger_latest(w.resource_type, w.system, w.value)
                      for _, w in items]
            with self.store.begin() as conn:
                for (plan, write), prior in zip(items, priors, strict=True):
                    self._confirm(conn, plan, write, write.ehr_id,
                                  prior.ehr_version if prior else None, state="sent")
            if self.ehr.mode == "batch":
                outcomes = self._send_batch(items, summary)
            else:
                outcomes = [self._send_one(write, summary) for _, write in items]
            failed: dict[int, ConnectorError] = {}
            with self.store.begin() as conn:
                for (plan, write), outcome in zip(items, outcomes, strict=True):
                    if isinstance(outcome, ConnectorError):
                        failed.setdefault(plan.job.id, outcome)
                        continue
                    ehr_id, version = outcome
                    self._confirm(conn, plan, write, ehr_id, version)
                    write.ehr_id = write.ehr_id or ehr_id
                    write.done = True
                    plan.ids[write.full_url] = f"{write.resource_type}/{write.ehr_id}"
            for job_id, error in failed.items():
                self._fail(alive.pop(job_id).job, error, summary)
        for plan in alive.values():
            with self.store.begin() as conn:
                self.store.finish(
                    conn, plan.job, JobState.SYNCED, actor=self.worker,
                    detail={"mode": self.ehr.mode, "resources": [
                        f"{w.resource_type}/{w.ehr_id}" for w in plan.writes]},
                )
            summary.add(JobState.SYNCED)

    def _send_one(self, write: Write, summary: SyncSummary
                  ) -> tuple[str | None, str | None] | ConnectorError:
        summary.requests += 1
        try:
            if write.resource_type == "Provenance":
                result = self.client.create(write.resource)
            elif write.ehr_id:
                write.resource["id"] = write.ehr_id
                try:
                    result = self.client.update(write.resource, resource_id=write.ehr_id,
                                                if_match=write.if_match)
                except EhrConflict as exc:
                    if not self._refresh_write(write, exc):
                        raise
                    result = self.client.update(write.resource, resource_id=write.ehr_id,
                                                if_match=write.if_match)
            elif self.ehr.conditional:
                result = self.client.update(write.resource,
                                            conditional=f"identifier={write.token}")
            else:
                result = self.client.create(write.resource)
        except ConnectorError as exc:
            return exc
        return result.id, result.version_id

    def _send_batch(self, items: list[tuple[Plan, Write]], summary: SyncSummary
                    ) -> list[tuple[str | None, str | None] | ConnectorError]:
        outcomes: list[tuple[str | None, str | None] | ConnectorError] = []
        size = self.ehr.max_bundle_entries
        for start in range(0, len(items), size):
            chunk = [write for _, write in items[start:start + size]]
            for write in chunk:
                if write.ehr_id:
                    write.resource["id"] = write.ehr_id
            summary.bundles += 1
            summary.requests += 1
            try:
                response = self.client.batch(
                    bundle_for(chunk, conditional=self.ehr.conditional, kind="batch"))
                results = entry_results(response)
                if len(results) != len(chunk):
                    raise EhrOutcomeUnknown(
                        f"batch response has {len(results)} entries for {len(chunk)} sent",
                        method="POST", url=self.client.base_url)
            except ConnectorError as exc:
                outcomes.extend(exc for _ in chunk)
                continue
            for write, result in zip(chunk, results, strict=True):
                if result.ok:
                    outcomes.append((result.id, result.version_id))
                    continue
                error = entry_error(result, write, self.client.base_url)
                if isinstance(error, EhrConflict) and self._refresh_write(write, error):
                    outcomes.append(self._send_one(write, summary))  # once, alone
                else:
                    outcomes.append(error)
        return outcomes

    def _refresh_write(self, write: Write, error: EhrConflict) -> bool:
        """After an If-Match conflict: re-read the current version, once per write.

        True when the write should be sent again with it. A 412 for multiple
        matches is a data problem, not a version conflict: never re-sent.
        """
        codes = error.outcome.codes if error.outcome else []
        if write.refreshed or not write.ehr_id or not write.if_match or \
                "multiple-matches" in codes or "duplicate" in codes:
            return False
        current = self.client.read(write.resource_type, write.ehr_id)
        write.if_match = (current.get("meta") or {}).get("versionId")
        write.refreshed = True
        log.info("%s/%s changed in the EHR meanwhile (If-Match conflict); re-sending once",
                 write.resource_type, write.ehr_id)
        return True

    def _refresh_versions(self, plan: Plan, error: EhrRejected) -> bool:
        """A refused single-record transaction: was it a version conflict worth one re-send?"""
        if not isinstance(error, EhrConflict):
            return False
        refreshed = False
        for write in plan.writes:
            if write.ehr_id and write.if_match:
                if not self._refresh_write(write, error):
                    return False
                refreshed = True
        return refreshed

    def _skip_done(self, plan: Plan) -> None:
        """Resume a staged plan: skip what the ledger confirms, settle what is in doubt."""
        from mappings.resources import search_token

        rvid = plan.job.record_version_id
        for write in plan.writes:
            if write.resource_type == "Provenance":
                entry = next((e for e in self.store.ledger_for_record(
                    plan.record.source, plan.record.id, "Provenance")
                    if e.identifier_value == write.value), None)
                if entry is not None and entry.state == "sent":
                    self._settle_provenance(plan, write)
                continue
            entry = self.store.ledger_latest(write.resource_type, write.system, write.value)
            if entry is None or entry.record_version_id != rvid or entry.action == "match":
                continue  # not written by this version yet
            if entry.state == "confirmed":
                write.done, write.ehr_id = True, entry.ehr_id
            elif write.ehr_id:  # an update in doubt: applied if the version moved on
                current = self.client.read(write.resource_type, write.ehr_id)
                version = (current.get("meta") or {}).get("versionId")
                if _int(version) > _int(entry.ehr_version):
                    self._settle_write(plan, write, write.ehr_id, version)
            else:  # a create in doubt: look for it by identifier before sending again
                found = self.client.search(write.resource_type,
                                           {"identifier": search_token(write.system, write.value)})
                if len(found) == 1:
                    self._settle_write(plan, write, found[0]["id"],
                                       (found[0].get("meta") or {}).get("versionId"))
            if write.done:
                plan.ids[write.full_url] = f"{write.resource_type}/{write.ehr_id}"

    def _settle_write(self, plan: Plan, write: Write, ehr_id: str, version: str | None) -> None:
        with self.store.begin() as conn:
            self._confirm(conn, plan, write, ehr_id, version)
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
        for found in self.client.search("Provenance", {"target": target}):
            if _same_instant(found.get("recorded"), recorded):
                self._settle_write(plan, write, found["id"],
                                   (found.get("meta") or {}).get("versionId"))
                return

    def _settle(self, job: Job, record: EncounterRecord) -> Wait | None:
        """A write may have been applied without us hearing back: look before re-sending.

        Returns a Wait (here: SYNCED) when the EHR already holds this version,
        None when it does not (the record is then planned and sent as usual).
        """
        from mappings.resources import (
            encounter_identifier,
            note_version_identifier,
            search_token,
        )

        if record.note is not None and record.status != "entered_in_error":
            system, value = note_version_identifier(record, self.profile)
            resource_type = "DocumentReference"
        else:
            system, value = encounter_identifier(record, self.profile)
            resource_type = "Encounter"
        previous = self.store.ledger_latest(resource_type, system, value)
        found = self.client.search(resource_type, {"identifier": search_token(system, value)})
        if len(found) != 1:
            return None
        resource = found[0]
        version = (resource.get("meta") or {}).get("versionId")
        applied = previous is None or (
            previous.ehr_version is not None
            and version is not None
            and _int(version) > _int(previous.ehr_version)
        )
        if not applied:
            return None
        # Applied as a whole (transactions are all or nothing): record what the EHR holds.
        with self.store.begin() as conn:
            self.store.ledger_add(
                conn,
                resource_type=resource_type,
                system=system,
                value=value,
                ehr_id=resource.get("id"),
                ehr_version=version,
                action="match",
                job=job,
            )
            if resource_type == "DocumentReference":
                system_e, value_e = encounter_identifier(record, self.profile)
                enc = self.client.search(
                    "Encounter", {"identifier": search_token(system_e, value_e)}
                )
                if len(enc) == 1:
                    self.store.ledger_add(
                        conn,
                        resource_type="Encounter",
                        system=system_e,
                        value=value_e,
                        ehr_id=enc[0].get("id"),
                        ehr_version=(enc[0].get("meta") or {}).get("versionId"),
                        action="match",
                        job=job,
                    )
            # The Provenance travelled in the same (all-or-nothing) transaction.
            self.store.ledger_add(
                conn, resource_type="Provenance", system=PROVENANCE_SYSTEM,
                value=f"{job.record_version_id}@settled", ehr_id=None, ehr_version=None,
                action="provenance", job=job,
            )
        return Wait(JobState.SYNCED, "settled-by-lookup")

    # -- outcomes ---------------------------------------------------------

    def _finish(
        self,
        job: Job,
        state: JobState,
        summary: SyncSummary,
        *,
        reason: str | None,
        outcome_text: str | None = None,
    ) -> None:
        with self.store.begin() as conn:
            self.store.finish(
                conn, job, state, actor=self.worker, reason=reason, outcome_text=outcome_text
            )
        summary.add(state)

    def _fail(self, job: Job, error: ConnectorError, summary: SyncSummary) -> None:
        attempts = job.attempts + 1
        decision = decide(error, attempts, max_attempts=self.config.sync.max_attempts, rng=self.rng)
        next_at = (
            self.clock() + timedelta(seconds=decision.delay_s)
            if decision.state in (JobState.RETRY_SCHEDULED, JobState.UNKNOWN)
            else None
        )
        outcome_text = error.outcome_text if isinstance(error, EhrError) else None
        detail: dict[str, Any] = {"error": type(error).__name__, "attempt": attempts,
                                  "mode": self.ehr.mode}
        if isinstance(error, EhrHttpError):
            detail["status"] = error.status
            if error.outcome:
                detail["outcome_codes"] = error.outcome.codes
        with self.store.begin() as conn:
            self.store.finish(
                conn,
                job,
                decision.state,
                actor=self.worker,
                reason=str(error),
                outcome_text=outcome_text,
                next_attempt_at=next_at,
                count_attempt=True,
                detail=detail,
            )
        summary.add(decision.state)
        summary.errors.append(f"{job.source}/{job.record_id}: {error}")
        log.info(
            "job %s (%s/%s) -> %s: %s",
            job.id,
            job.source,
            job.record_id,
            decision.state.value,
            error,
        )


@dataclass(frozen=True, slots=True)
class Refs:
    """References resolved before planning: literal ids, or conditional ones in `map`."""

    patient: str
    practitioner: str
    organization: str
    device: str


class LedgerView(Protocol):
    def ledger_latest(self, resource_type: str, system: str, value: str) -> LedgerEntry | None: ...

    def ledger_for_record(
        self, source: str, record_id: str, resource_type: str | None = None
    ) -> list[LedgerEntry]: ...

    def load_records(self, record_version_ids: Sequence[int]) -> dict[int, EncounterRecord]: ...


class EmptyLedger:
    """A ledger with nothing in it: what `peersync map` plans against (no store, no EHR)."""

    def ledger_latest(self, resource_type: str, system: str, value: str) -> LedgerEntry | None:
        return None

    def ledger_for_record(
        self, source: str, record_id: str, resource_type: str | None = None
    ) -> list[LedgerEntry]:
        return []

    def load_records(self, record_version_ids: Sequence[int]) -> dict[int, EncounterRecord]:
        return {}


class RecordLedger:
    """One record's ledger rows, read once per claimed batch (a LedgerView).

    Every row a record's writes produce carries its (source, id), and a batch
    never holds two versions of one record, so the snapshot answers every
    question planning asks about that record without another query.
    """

    def __init__(self, entries: list[LedgerEntry], store: Store) -> None:
        self.entries = entries
        self.store = store

    def ledger_latest(self, resource_type: str, system: str, value: str) -> LedgerEntry | None:
        for entry in reversed(self.entries):
            if (entry.resource_type, entry.identifier_system,
                    entry.identifier_value) == (resource_type, system, value):
                return entry
        return None

    def ledger_for_record(
        self, source: str, record_id: str, resource_type: str | None = None
    ) -> list[LedgerEntry]:
        newest: dict[tuple[str, str, str], LedgerEntry] = {}
        for entry in self.entries:
            if resource_type in (None, entry.resource_type):
                newest[(entry.resource_type, entry.identifier_system,
                        entry.identifier_value)] = entry
        return list(newest.values())

    def load_records(self, record_version_ids: Sequence[int]) -> dict[int, EncounterRecord]:
        return self.store.load_records(record_version_ids)


def _urn(*parts: str) -> str:
    return f"urn:uuid:{uuid.uuid5(NAMESPACE, '|'.join(parts))}"


def plan_record(
    record: EncounterRecord,
    refs: Refs,
    *,
    key: str,
    profile: Profile,
    note_format: str,
    ledger: LedgerView,
    recorded: datetime,
    ledger_key: str = "",
    ehr_encounter: str | None = None,
) -> tuple[list[Write], Write | None]:
    """The writes that bring the EHR up to this record version (pure, given the ledger).

    Encounter (create, update, or retract); the note version's
    DocumentReference, superseding the version it replaces (never rewriting a
    note's content); on retraction every standing note version marked
    entered-in-error; and one Provenance for the change. Returns the writes and
    the one whose presence in the EHR proves the plan was applied.
    """
    from mappings.resources import (
        encounter_identifier,
        map_document_reference,
        map_encounter,
        map_provenance,
        note_version_identifier,
    )

    retracting = record.status == "entered_in_error"
    writes: list[Write] = []
    proof: Write | None = None
    enc_write: Write | None = None
    if ehr_encounter is not None:
        enc_ref = ehr_encounter  # the EHR's own Encounter: never written by us
    else:
        enc_system, enc_value = encounter_identifier(record, profile)
        enc_ledger = ledger.ledger_latest("Encounter", enc_system, enc_value)
        enc_write = Write(
            "Encounter",
            map_encounter(
                record,
                profile,
                patient_ref=refs.patient,
                practitioner_ref=refs.practitioner,
                organization_ref=refs.organization,
            ).model_dump(mode="json"),
            _urn("Encounter", enc_system, enc_value, key),
            "retract" if retracting else ("update" if enc_ledger else "create"),
            enc_system,
            enc_value,
            ehr_id=enc_ledger.ehr_id if enc_ledger else None,
            if_match=enc_ledger.ehr_version if enc_ledger else None,
        )
        writes.append(enc_write)
        proof = enc_write
        enc_ref = f"Encounter/{enc_write.ehr_id}" if enc_write.ehr_id else enc_write.full_url
    sent_notes = [
        entry
        for entry in ledger.ledger_for_record(record.source, record.id, "DocumentReference")
        if entry.identifier_system == profile.note_version_system(record.source)
    ]

    def note_doc(rec: EncounterRecord, **choices: Any) -> dict[str, Any]:
        return map_document_reference(
            rec, profile, patient_ref=refs.patient, practitioner_ref=refs.practitioner,
            encounter_ref=enc_ref, note_format=note_format, organization_ref=refs.organization,
            **choices,
        ).model_dump(mode="json")

    def rewrite(entry: LedgerEntry, status: str, action: str) -> Write:
        # Re-map an already-sent note version with a new status; content unchanged.
        assert entry.record_version_id is not None and entry.ehr_id is not None
        old = ledger.load_records([entry.record_version_id])[entry.record_version_id]
        doc = note_doc(old, status=status)
        doc["id"] = entry.ehr_id
        return Write(
            "DocumentReference",
            doc,
            _urn("DocumentReference", entry.identifier_value, action, key),
            action,
            entry.identifier_system,
            entry.identifier_value,
            ehr_id=entry.ehr_id,
            if_match=entry.ehr_version,
        )

    # Standing: sent and not (for sure) superseded or retracted. An unconfirmed
    # supersede/retract is planned again; the staged sender settles it by look-up.
    standing = [
        e for e in sent_notes
        if e.ehr_id and not (e.action in ("supersede", "retract") and e.state == "confirmed")
    ]
    if retracting:
        # Retract every note version still standing; never create a new note.
        writes.extend(rewrite(entry, "entered-in-error", "retract") for entry in standing)
    elif record.note is not None:
        nv_system, nv_value = note_version_identifier(record, profile)
        same = next((e for e in sent_notes if e.identifier_value == nv_value), None)
        replaced = [e for e in standing if e.identifier_value != nv_value]
        replaces_ref = None
        if replaced:
            newest = max(replaced, key=lambda e: _note_version_number(e.identifier_value))
            replaces_ref = f"DocumentReference/{newest.ehr_id}"
        doc = note_doc(record, replaces_ref=replaces_ref)
        doc_write = Write(
            "DocumentReference",
            doc,
            _urn("DocumentReference", nv_system, nv_value, key),
            "update" if same else "create",
            nv_system,
            nv_value,
            ehr_id=same.ehr_id if same else None,
            if_match=same.ehr_version if same else None,
        )
        writes.append(doc_write)
        if not same or proof is None:
            proof = doc_write
        writes.extend(rewrite(entry, "superseded", "supersede") for entry in replaced)
    if not writes:
        return [], None  # e.g. no note, and the EHR owns the Encounter
    targets = [f"{w.resource_type}/{w.ehr_id}" if w.ehr_id else w.full_url for w in writes]
    first = writes[0]
    provenance = map_provenance(
        targets=targets,
        recorded=recorded,
        practitioner_ref=refs.practitioner,
        device_ref=refs.device,
        organization_ref=refs.organization,
        part2=record.part2,
        activity="NULLIFY" if retracting else ("CREATE" if first.action == "create" else "UPDATE"),
    ).model_dump(mode="json")
    writes.append(
        Write("Provenance", provenance, _urn("Provenance", key), "provenance",
              PROVENANCE_SYSTEM, f"{ledger_key}@{recorded.isoformat()}")
    )
    return writes, proof


def bundle_for(
    writes: Sequence[Write], *, conditional: bool, kind: str = "transaction"
) -> dict[str, Any]:
    """A transaction (or batch) Bundle of the given writes, in order."""
    entries = []
    for write in writes:
        entry: dict[str, Any] = {}
        if not write.ehr_id:
            entry["fullUrl"] = write.full_url
        entry["resource"] = write.resource
        entry["request"] = write.request(conditional=conditional)
        entries.append(entry)
    return {"resourceType": "Bundle", "type": kind, "entry": entries}


def ensure_agency(store: Store, client: FhirClient, profile: Profile) -> tuple[str, str]:
    """Match or create (once, by identifier) the agency Organization and the connector Device."""
    from mappings.resources import map_device, map_organization, search_token

    refs = []
    org_ref = ""
    for kind, identity in (("organization", profile.organization), ("device", profile.device)):
        key = f"{identity.system}|{identity.value}"
        linked = store.get_link(kind, key)
        resource_type = kind.capitalize()
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
                            "identifier",
                            status=412,
                            method="GET",
                            url=f"{client.base_url}/{resource_type}",
                            outcome=Outcome(),
                        )
                    if found:
                        linked = found[0]["id"]
                        how = "match"
                    else:
                        model = (
                            map_organization(profile)
                            if kind == "organization"
                            else map_device(profile, organization_ref=org_ref)
                        )
                        linked = client.create(
                            model.model_dump(mode="json"), if_none_exist={"identifier": token}
                        ).id
                        how = "create"
                    store.set_link(kind, key, linked, linked_by=how, conn=conn)
        ref = f"{resource_type}/{linked}"
        if kind == "organization":
            org_ref = ref
        refs.append(ref)
    return refs[0], refs[1]


def _literalize(node: Any, ids: dict[str, str]) -> None:
    """Replace references to urn:uuid fullUrls with the literal ids they were written as."""
    if isinstance(node, dict):
        ref = node.get("reference")
        if isinstance(ref, str) and ref in ids:
            node["reference"] = ids[ref]
        for value in node.values():
            _literalize(value, ids)
    elif isinstance(node, list):
        for item in node:
            _literalize(item, ids)


def entry_error(result: Any, write: Write, base_url: str) -> ConnectorError:
    """A failed batch entry as the same exception a single request would have raised."""
    from connector.errors import error_class_for

    status = int(result.status or 0)
    codes = result.outcome.codes if result.outcome else []
    message = (f"EHR refused batch entry {write.request(conditional=False)['method']} "
               f"{write.resource_type} ({status}"
               + (f"; OperationOutcome codes: {', '.join(codes)}" if codes else "") + ")")
    if status == 0:
        return EhrOutcomeUnknown(f"batch entry for {write.resource_type} has no status",
                                 method="POST", url=base_url)
    cls = error_class_for(status)
    return cls(message, status=status, method="POST", url=base_url, outcome=result.outcome)


def _overlaps(period: dict[str, Any], record: EncounterRecord) -> bool:
    """Does an EHR Encounter's period overlap the session? (open ends count as open)"""
    from connector.records import parse_datetime

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


def _same_instant(a: str | None, b: str | None) -> bool:
    from connector.records import parse_datetime

    if not a or not b:
        return False
    try:
        return parse_datetime(a) == parse_datetime(b)
    except ValueError:
        return False


def _note_version_number(value: str) -> int:
    _, _, tail = value.rpartition(".v")
    return _int(tail)


def _int(value: str | None) -> int:
    try:
        return int(value or 0)
    except ValueError:
        return 0
