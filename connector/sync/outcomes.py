"""Outcomes: a job's new state, with its audit event, in one database transaction."""

from __future__ import annotations

import logging
import random
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, select

from connector import gate
from connector.errors import ConnectorError, EhrError, EhrHttpError, EhrRejected
from connector.retry import decide
from connector.schema import audit_events
from connector.states import JobState
from connector.store import Job
from connector.sync.model import Plan, SyncContext, SyncSummary, Wait, Write

log = logging.getLogger("peersync.sync")


class Outcomes:
    def __init__(self, ctx: SyncContext, rng: random.Random) -> None:
        self.ctx = ctx
        self.rng = rng
        self.answers = 0  # answers heard from the EHR (a claim compares before and after)
        self.outages = 0  # failures that count against the EHR gate
        self._counted: int | None = None  # id() of the error last counted at the gate
        self._lock = threading.Lock()

    def heard(self) -> None:
        """The EHR answered (not with a 429 or 5xx): it is up."""
        with self._lock:
            self.answers += 1

    def confirm(self, conn: Any, plan: Plan, write: Write, ehr_id: str | None,
                version: str | None, *, state: str = "confirmed") -> None:
        """A ledger row for one write: ``sent`` before it goes, ``confirmed`` once answered."""
        self.confirm_many(conn, [(plan, write, ehr_id, version)], state=state)

    def confirm_many(self, conn: Any,
                     items: list[tuple[Plan, Write, str | None, str | None]], *,
                     state: str = "confirmed") -> None:
        """:meth:`confirm` for many writes (plan, write, EHR id, version), in one statement."""
        self.ctx.store.ledger_add_many(conn, [{
            "resource_type": write.resource_type, "system": write.system, "value": write.value,
            "ehr_id": ehr_id or write.ehr_id, "ehr_version": version, "action": write.action,
            "job": plan.job, "state": state,
        } for plan, write, ehr_id, version in items])

    def synced(self, conn: Any, plan: Plan, resources: list[str],
               summary: SyncSummary) -> None:
        detail: dict[str, Any] = {"mode": self.ctx.plan.mode, "preset": self.ctx.plan.preset.name,
                                  "resources": resources}
        if plan.omitted:
            detail["omitted"] = plan.omitted  # what this EHR cannot carry: not a failure
        if plan.part2_form:
            detail["part2_form"] = plan.part2_form
        self.ctx.store.finish(conn, plan.job, JobState.SYNCED, actor=self.ctx.worker,
                              detail=detail)
        self.heard()
        summary.add(JobState.SYNCED)

    def wait(self, job: Job, wait: Wait, summary: SyncSummary) -> None:
        next_at = (self.ctx.clock() + timedelta(seconds=wait.delay_s)
                   if wait.delay_s is not None else None)
        with self.ctx.store.begin() as conn:
            self.ctx.store.finish(conn, job, wait.state, actor=self.ctx.worker,
                                  reason=wait.reason, outcome_text=wait.outcome_text,
                                  next_attempt_at=next_at)
        summary.add(wait.state)

    def fail(self, job: Job, error: ConnectorError, summary: SyncSummary) -> None:
        attempts = job.attempts + 1
        sync = self.ctx.config.sync
        now = self.ctx.clock()
        outcome_text = error.outcome_text if isinstance(error, EhrError) else None
        detail: dict[str, Any] = {"error": type(error).__name__, "attempt": attempts,
                                  "mode": self.ctx.plan.mode}
        if isinstance(error, EhrHttpError):
            detail["status"] = error.status
            if error.outcome:
                detail["outcome_codes"] = error.outcome.codes
        if isinstance(error, EhrRejected):
            self.heard()  # a refusal is an answer: the EHR is up
        # A transaction's failure fails each of its records with the same error: one outage
        # failure at the gate, not one per record.
        with self._lock:  # the planning and the sending thread both fail jobs
            counts_at_gate = id(error) != self._counted
            self._counted = id(error)
        with self.ctx.store.begin() as conn:
            first = self._first_failure_at(conn, job, now)
            decision = decide(
                error, attempts, max_attempts=sync.max_attempts, first_failure_at=first,
                now=now, give_up_after_s=sync.give_up_after, base_s=sync.retry_base_s,
                max_s=sync.retry_max_s, rng=self.rng,
            )
            next_at = (
                now + timedelta(seconds=decision.delay_s)
                if decision.state in (JobState.RETRY_SCHEDULED, JobState.UNKNOWN)
                else None
            )
            if decision.state in (JobState.RETRY_SCHEDULED, JobState.UNKNOWN):
                detail["first_failure_at"] = first.isoformat()
            if decision.reason:
                detail["last_error"] = str(error)[:200]
            finished = self.ctx.store.finish(
                conn, job, decision.state, actor=self.ctx.worker,
                reason=decision.reason or str(error), outcome_text=outcome_text,
                next_attempt_at=next_at, count_attempt=True, detail=detail,
            )
            if counts_at_gate and gate.outage_kind(error) is not None:
                with self._lock:
                    self.outages += 1
                if finished:
                    gate.record_failure(self.ctx.store, conn, error, actor=self.ctx.worker,
                                        now=now, cfg=sync)
        summary.add(decision.state, f"{job.source}/{job.record_id}: {error}")
        log.info("job %s (%s/%s) -> %s: %s", job.id, job.source, job.record_id,
                 decision.state.value, decision.reason or error)

    def _first_failure_at(self, conn: Connection, job: Job, now: datetime) -> datetime:
        """When this record's current run of failures began (the give-up budget counts
        from there): carried in the audit detail of its last failure, when it was claimed
        from one; ``now`` for a first failure."""
        if job.claimed_from not in (JobState.RETRY_SCHEDULED.value, JobState.UNKNOWN.value,
                                    JobState.IN_FLIGHT.value):
            return now
        row = conn.execute(
            select(audit_events.c.at, audit_events.c.detail)
            .where(audit_events.c.source == job.source,
                   audit_events.c.record_id == job.record_id,
                   audit_events.c.job_id == job.id,
                   audit_events.c.action == "job.state",
                   audit_events.c.state_to.in_([JobState.RETRY_SCHEDULED.value,
                                                JobState.UNKNOWN.value]))
            .order_by(audit_events.c.seq.desc()).limit(1)
        ).first()
        if row is None:
            return now
        carried = (row.detail or {}).get("first_failure_at")
        try:
            first = datetime.fromisoformat(carried) if carried else row.at
        except (TypeError, ValueError):
            first = row.at
        if first.tzinfo is None:
            first = first.replace(tzinfo=UTC)
        return min(first, now)
