"""The sync worker: claim jobs, resolve references, plan, send, record.

One pass of :meth:`SyncEngine.run_once`:

1. claim a batch of due jobs (atomic, leased);
2. for each record decide whether it can go (:mod:`.rules`), then resolve its
   references (:mod:`.resolve`) so that bundles hold literal references only;
3. plan its writes (:mod:`.planner`, pure, consulting the write plan and the ledger);
4. send them in the EHR's style (:mod:`.senders`), settling first whatever an
   earlier try left in doubt (:mod:`.recovery`);
5. record the EHR's ids and versions, the job's new state, audit events (:mod:`.outcomes`).

:meth:`SyncEngine.run` pipelines these passes: steps 4-5 of one claim run on a
sending thread while steps 1-3 of the next run here (the claim's look-ups made
side by side first, :meth:`.resolve.References.prefetch`); the EHR client holds
every request of the worker to ``[ehr] max_in_flight`` at once.
"""

from __future__ import annotations

import logging
import random
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from connector import gate, ratelimit
from connector.config import Config
from connector.errors import ConnectorError
from connector.fhir_client import FhirClient
from connector.records import EncounterRecord
from connector.review import Cosignature, ReviewRule, carried_cosignature
from connector.states import JobState
from connector.store import Job, Store, utcnow
from connector.sync.concurrency import HeldJobs, InFlight, LeaseRenewal
from connector.sync.cosign import cosigner, earlier_cosigners
from connector.sync.model import Plan, RecordLedger, Refs, SyncContext, SyncSummary, Wait
from connector.sync.outcomes import Outcomes
from connector.sync.planner import plan_record
from connector.sync.recovery import Recovery
from connector.sync.resolve import References
from connector.sync.rules import wait_rule
from connector.sync.senders import sender_for
from connector.writeplan import WritePlan
from mappings.profile import Profile

log = logging.getLogger("peersync.sync")


class SyncEngine:
    """Sends due jobs to the EHR. One engine per worker process."""

    SENDING = 2  # claims whose requests may be in flight at once (pipelining)

    def __init__(
        self,
        *,
        store: Store,
        client: FhirClient,
        profile: Profile,
        config: Config,
        plan: WritePlan | None = None,
        worker: str | None = None,
        clock: Callable[[], datetime] = utcnow,
        rng: random.Random | None = None,
    ) -> None:
        if plan is None:
            from connector.writeplan import resolve_plan

            plan = resolve_plan(config.ehr, folder=config.folder)
        self.ctx = SyncContext(
            store=store, client=client, profile=profile, config=config, plan=plan,
            worker=worker or f"worker-{uuid.uuid4().hex[:8]}", clock=clock,
            marker_key=store.audit_key,
        )
        self.store, self.client, self.config, self.plan = store, client, config, plan
        self.worker, self.clock = self.ctx.worker, clock
        self.outcomes = Outcomes(self.ctx, rng or random.Random())
        self.refs = References(self.ctx)
        self.review = ReviewRule.of(profile)  # [review]: what may go only co-signed
        self.recovery = Recovery(self.ctx, self.outcomes)
        self.sender = sender_for(self.ctx, self.outcomes)
        # The EHR gate (connector.gate) as this worker last found it closed: until when.
        self.gate_closed_until: datetime | None = None
        # [ehr] max_requests_per_minute: a token from the shared bucket before every request
        self.limiter = ratelimit.install(client, store, config.ehr.max_requests_per_minute)
        # pipelining: claims' sends go on these threads while the next claim is planned;
        # two claims never hold versions of the same record (the claim's own rule), and
        # every request of this worker takes one of max_in_flight places (the client's)
        self._sends = ThreadPoolExecutor(max_workers=self.SENDING, thread_name_prefix="sync-send")
        self._sending: deque[Future[None]] = deque()
        self._held = HeldJobs()  # the jobs of the claims not yet finished
        if getattr(client, "in_flight", None) is None and hasattr(client, "in_flight"):
            client.in_flight = InFlight(max(1, config.ehr.max_in_flight))
        hooks = getattr(getattr(client, "session", None), "hooks", None)
        if isinstance(hooks, dict):
            hooks.setdefault("response", []).append(self._heard_from_ehr)

    def _heard_from_ehr(self, response: Any, *args: Any, **kwargs: Any) -> None:
        """A response hook: any answer but 429/5xx means the EHR is up (the gate may open)."""
        status = getattr(response, "status_code", 0)
        if status and status < 500 and status != 429:
            self.outcomes.heard()

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
        Pipelined: while one claim's requests are in flight, the next claim is taken,
        resolved and planned (:meth:`run_once` with ``pipelined``).
        """
        max_wait = self.config.sync.max_wait_s if max_wait_s is None else max_wait_s
        if self.limiter is not None:
            self.limiter.stop = stop  # stopping ends a wait for a token
        summary = SyncSummary()
        run_id = uuid.uuid4().hex
        self.refs.reset()
        waited = 0.0
        try:
            while not (stop and stop.is_set()):
                claimed = self.run_once(run_id, summary, include_waiting=include_waiting,
                                        pipelined=True)
                if on_progress and claimed:
                    on_progress(summary)
                if claimed:
                    continue
                due_at = self.store.next_due_at()
                if self.gate_closed_until is not None:
                    # The EHR is unreachable: nothing is claimed before the gate's next probe.
                    due_at = max(due_at or self.gate_closed_until, self.gate_closed_until)
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
        finally:
            self.finish_sending()
            self.refs.share_found()
        if on_progress and summary.claimed:
            on_progress(summary)
        summary.waited_s = waited
        return summary

    def records_per_bundle(self) -> int:
        # A record needs at most ~5 entries (Encounter, note, superseded note,
        # Provenance, one retraction); bundles are packed by real entry count.
        return max(1, self.config.ehr.max_bundle_entries // 3)

    def claim_size(self) -> int:
        """Records per claim: one bundle's worth in transaction mode; in the staged modes
        enough to keep ``max_in_flight`` requests (batch bundles, or single requests
        four rounds deep) going. Claims stay small, so that workers share a queue: the
        next claim is planned while this one is in flight (pipelining), not before."""
        in_flight = self.config.ehr.max_in_flight
        if self.plan.mode == "single":
            return max(1, 4 * in_flight)
        if self.plan.staged:
            return self.records_per_bundle() * in_flight
        return self.records_per_bundle()

    def run_once(self, run_id: str, summary: SyncSummary, *, include_waiting: bool = True,
                 pipelined: bool = False) -> int:
        """Claim due jobs, resolve and plan them, send them. Returns the number claimed.

        ``pipelined``: return while this claim's requests are still in flight (at most
        :attr:`SENDING` claims at once: a call waits for the oldest before sending its own,
        and :meth:`finish_sending` waits for all). Otherwise every send has ended on return.
        """
        admission = gate.admit(self.store, worker=self.worker, now=self.clock(),
                               cfg=self.config.sync)
        self.gate_closed_until = admission.until if admission.closed else None
        probe = admission.kind == "probe"
        if admission.closed or probe:
            self.finish_sending()  # a probe goes alone
            if admission.closed:
                return 0
        def claim() -> list[Job]:
            return self.store.claim(
                worker=self.worker, run_id=run_id, limit=1 if probe else self.claim_size(),
                lease_s=self.config.sync.lease_s, include_waiting=include_waiting and not probe,
                now=self.clock(), exclude=self._held.ids(), share_tail=True,
            )

        jobs = claim()
        if not jobs and self._sending:
            # the claims in flight hold back their records' later versions: once they
            # have ended, those may be due
            self.finish_sending()
            jobs = claim()
        if not jobs:
            if probe:  # nothing left to send: nothing waits on the EHR
                gate.record_success(self.store, actor=self.worker, now=self.clock())
            return 0
        summary.claimed += len(jobs)
        held = {job.id for job in jobs}
        self._held.add(held)  # until its sends end, even if its lease runs out meanwhile
        lease = LeaseRenewal(self.store, [job.id for job in jobs], worker=self.worker,
                             lease_s=self.config.sync.lease_s,
                             every_s=self.config.sync.renew_every_s)
        mark = (self.outcomes.answers, self.outcomes.outages)
        try:
            plans = self._prepare_claim(jobs, summary)
        except BaseException:
            lease.stop()
            self._held.release(held)
            raise
        while len(self._sending) >= self.SENDING:  # the oldest claim's sends end first
            self._sending.popleft().result()
        self._sending.append(self._sends.submit(self._send_claim, plans, lease, mark, held,
                                                summary))
        if not pipelined or probe:
            self.finish_sending()
        return len(jobs)

    def finish_sending(self) -> None:
        """Wait for the claims still in flight (and raise what their sending raised)."""
        while self._sending:
            self._sending.popleft().result()

    def _send_claim(self, plans: list[Plan], lease: LeaseRenewal, mark: tuple[int, int],
                    held: set[int], summary: SyncSummary) -> None:
        """One claim's sends (a sending thread), then what the claim says about the EHR:
        answered, and no outage failure meanwhile, opens the EHR gate."""
        try:
            for bundle in self._pack(plans):
                self.sender.send(bundle, summary)
            answers, outages = mark
            if self.outcomes.answers > answers and self.outcomes.outages == outages:
                released = gate.record_success(self.store, actor=self.worker, now=self.clock())
                if released:
                    log.info("the EHR answers again: %d scheduled retries released", released)
        finally:
            lease.stop()
            self._held.release(held)

    def _prepare_claim(self, jobs: list[Job], summary: SyncSummary) -> list[Plan]:
        """Each claimed record decided on: a plan to send, or its outcome recorded now.
        The claim's look-ups go first, side by side (:meth:`References.prefetch`)."""
        records = self.store.load_records([job.record_version_id for job in jobs])
        ledgers = self.store.ledger_snapshot([(job.source, job.record_id) for job in jobs])

        def encounter_known(record: EncounterRecord) -> bool:
            entries = ledgers[(record.source, record.id)]
            return any(e.resource_type == "Encounter" and e.ehr_id for e in entries)

        # co-signatures made here (records carry their own): one read for the claim
        signed = self.store.cosignatures([job.record_version_id for job in jobs])
        signatures = {job.id: carried_cosignature(records[job.record_version_id])
                      or signed.get(job.record_version_id) for job in jobs}

        def may_look_up(job: Job) -> bool:
            record = records[job.record_version_id]
            if self.review.needs_review(record) and signatures[job.id] is None:
                return False  # it waits for review: nothing is looked up for it yet
            # a Part 2 record's participant is looked up only once consent is active
            return not record.part2 or \
                self.store.consent_status(record.source, record.participant.id) == "active"

        self.refs.prefetch([records[job.record_version_id] for job in jobs if may_look_up(job)],
                           encounter_known)
        plans: list[Plan] = []
        for job in jobs:
            record = records[job.record_version_id]
            try:
                ledger = RecordLedger(ledgers[(job.source, job.record_id)], self.store)
                signature = signatures[job.id]
                outcome = self._prepare(job, record, ledger, signature)
            except ConnectorError as exc:
                self.outcomes.fail(job, exc, summary)
                continue
            except ValidationError as exc:
                # The record passed intake but FHIR refuses a value (e.g. a control
                # character in a name): name the elements, never the values.
                where = sorted({".".join(str(p) for p in err["loc"]) for err in exc.errors()})
                self.outcomes.wait(job, Wait(
                    JobState.NEEDS_ATTENTION,
                    f"cannot be mapped to FHIR R4: {', '.join(where)[:150]}"), summary)
                continue
            if isinstance(outcome, Wait):
                self.outcomes.wait(job, outcome, summary)
            else:
                plans.append(outcome)
        return plans

    # -- deciding ---------------------------------------------------------

    def _prepare(self, job: Job, record: EncounterRecord, ledger: RecordLedger,
                 signature: Cosignature | None = None) -> Plan | Wait:
        consent = (self.store.consent_status(record.source, record.participant.id)
                   if record.part2 else None)
        waiting = wait_rule(record, consent=consent,
                            sent_before=bool(ledger.ledger_for_record(record.source, record.id)),
                            review=self.review, cosigned=signature is not None)
        if waiting is not None and waiting.state in (JobState.WAITING_CONSENT,
                                                     JobState.WAITING_REVIEW):
            return waiting
        if self._already_applied(job, record, ledger):
            # A re-send of a version the EHR already holds: no write, no second Provenance.
            return Wait(JobState.SYNCED, "already-in-ehr")
        # A 5xx can come after the EHR applied the bundle (a gateway's 504 on a slow
        # upstream, a 500 after commit): a retried transaction is looked up first too.
        in_doubt = job.claimed_from in (JobState.UNKNOWN.value, JobState.IN_FLIGHT.value,
                                        JobState.RETRY_SCHEDULED.value)
        if in_doubt and not self.plan.staged:
            settled = self.recovery.settle_transaction(job, record)
            if settled is not None:
                return settled
        if waiting is not None:
            return waiting
        patient = self.refs.patient(record)
        if isinstance(patient, Wait):
            return patient
        practitioner = self.refs.practitioner(record)
        if isinstance(practitioner, Wait):
            return practitioner
        encounter = ""
        if self.plan.encounter == "ehr":
            found = self.refs.ehr_encounter(job, record, patient, ledger)
            if isinstance(found, Wait):
                return found
            encounter = found
        authenticator = cosigner(self.ctx, self.refs, signature)
        if isinstance(authenticator, Wait):
            return authenticator
        org_ref, device_ref = self.refs.agency()
        refs = Refs(patient=patient, practitioner=practitioner, organization=org_ref,
                    device=device_ref, encounter=encounter, authenticator=authenticator,
                    earlier_authenticators=earlier_cosigners(self.ctx, job, ledger))
        planned = plan_record(
            record, refs, key=str(job.id), profile=self.ctx.profile, plan=self.plan,
            ledger=ledger, recorded=self._recorded(job, ledger),
            ledger_key=str(job.record_version_id), marker_key=self.ctx.marker_key,
        )
        if not planned.writes:
            return Wait(JobState.SYNCED, "nothing-to-send-ehr-owns-the-encounter")
        plan = Plan(job=job, record=record, writes=planned.writes, proof=planned.proof,
                    omitted=planned.omitted, part2_form=planned.part2_form)
        if self.plan.staged:
            wait = self.recovery.resume(plan, ledger)
            if wait is not None:
                return wait
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

    def _pack(self, plans: list[Plan]) -> Iterator[list[Plan]]:
        limit = self.config.ehr.max_bundle_entries
        if self.plan.staged:  # the staged sender cuts its own bundles, per stage
            limit *= self.config.ehr.max_in_flight
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
