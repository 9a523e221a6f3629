"""Outcomes: a job's new state, with its audit event, in one database transaction."""

from __future__ import annotations

import logging
import random
from datetime import timedelta
from typing import Any

from connector.errors import ConnectorError, EhrError, EhrHttpError
from connector.retry import decide
from connector.states import JobState
from connector.store import Job
from connector.sync.model import Plan, SyncContext, SyncSummary, Wait, Write

log = logging.getLogger("peersync.sync")


class Outcomes:
    def __init__(self, ctx: SyncContext, rng: random.Random) -> None:
        self.ctx = ctx
        self.rng = rng

    def confirm(self, conn: Any, plan: Plan, write: Write, ehr_id: str | None,
                version: str | None, *, state: str = "confirmed") -> None:
        """A ledger row for one write: ``sent`` before it goes, ``confirmed`` once answered."""
        self.ctx.store.ledger_add(
            conn, resource_type=write.resource_type, system=write.system, value=write.value,
            ehr_id=ehr_id or write.ehr_id, ehr_version=version, action=write.action,
            job=plan.job, state=state,
        )

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
        decision = decide(error, attempts, max_attempts=self.ctx.config.sync.max_attempts,
                          rng=self.rng)
        next_at = (
            self.ctx.clock() + timedelta(seconds=decision.delay_s)
            if decision.state in (JobState.RETRY_SCHEDULED, JobState.UNKNOWN)
            else None
        )
        outcome_text = error.outcome_text if isinstance(error, EhrError) else None
        detail: dict[str, Any] = {"error": type(error).__name__, "attempt": attempts,
                                  "mode": self.ctx.plan.mode}
        if isinstance(error, EhrHttpError):
            detail["status"] = error.status
            if error.outcome:
                detail["outcome_codes"] = error.outcome.codes
        with self.ctx.store.begin() as conn:
            self.ctx.store.finish(
                conn, job, decision.state, actor=self.ctx.worker, reason=str(error),
                outcome_text=outcome_text, next_attempt_at=next_at, count_attempt=True,
                detail=detail,
            )
        summary.add(decision.state)
        summary.errors.append(f"{job.source}/{job.record_id}: {error}")
        log.info("job %s (%s/%s) -> %s: %s", job.id, job.source, job.record_id,
                 decision.state.value, error)
