"""The outbox: claiming due jobs under a lease, finishing them, counting them."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    Connection,
    and_,
    func,
    or_,
    select,
    update,
)

from connector.schema import (
    jobs,
    record_versions,
)
from connector.states import ALL_STATES, RESOLVED_BY_SYNC, UNFINISHED_STATES, JobState
from connector.store.base import Job, _aware, _utc, utcnow
from connector.store.consent import ConsentMixin

log = logging.getLogger("peersync.store")


class OutboxMixin(ConsentMixin):
    # -- outbox -----------------------------------------------------------

    def claim(
        self,
        *,
        worker: str,
        run_id: str,
        limit: int,
        lease_s: float = 30.0,
        include_waiting: bool = True,
        now: datetime | None = None,
        exclude: Sequence[int] = (),
        share_tail: bool = False,
    ) -> list[Job]:
        """Claim up to ``limit`` due jobs for ``worker`` in one transaction.

        ``share_tail``: when fewer than two claims' worth are due, take half of them (at
        least a quarter claim): the end of a back-fill is shared out between the workers
        polling the queue, not all left to the first one to ask (:func:`_share_of`).

        ``exclude``: ids of jobs the caller is still working on (a pipelined worker's
        earlier claims): never taken again by it, even if their lease ran out meanwhile.

        Due: pending; retry_scheduled or unknown whose time has come; in_flight
        whose lease expired (its worker died); and, once per run, the waiting
        ones (so a new EHR Patient or Practitioner is found at every sync), but
        not those waiting for review: only a supervisor's co-signature releases them.
        A job is never due while an earlier version of the same record is
        unfinished.
        """
        now = _utc(now) if now else utcnow()
        due = or_(
            jobs.c.state == JobState.PENDING.value,
            and_(
                jobs.c.state.in_([JobState.RETRY_SCHEDULED.value, JobState.UNKNOWN.value]),
                or_(jobs.c.next_attempt_at.is_(None), jobs.c.next_attempt_at <= now),
            ),
            and_(jobs.c.state == JobState.IN_FLIGHT.value, jobs.c.lease_expires_at < now),
        )
        if include_waiting:
            due = or_(
                due,
                and_(
                    jobs.c.state.in_([s.value for s in RESOLVED_BY_SYNC]),
                    or_(jobs.c.run_id.is_(None), jobs.c.run_id != run_id),
                ),
            )
        if exclude:
            due = and_(due, jobs.c.id.not_in(list(exclude)))
        earlier = jobs.alias("earlier")
        candidates = (
            select(jobs.c.id)
            .where(due)
            .where(
                ~select(earlier.c.id)
                .where(
                    earlier.c.source == jobs.c.source,
                    earlier.c.record_id == jobs.c.record_id,
                    earlier.c.id < jobs.c.id,
                    earlier.c.state.in_([s.value for s in UNFINISHED_STATES]),
                )
                .exists()
            )
            .order_by(jobs.c.id)
            .limit(2 * limit)
        )
        if self.dialect == "postgresql":
            # lock what is looked at (the usual queue pattern): another worker's
            # claim skips these rows, and takes the next ones
            candidates = candidates.with_for_update(of=jobs, skip_locked=True)
        statement = (
            update(jobs)
            .values(
                claimed_from=jobs.c.state,
                state=JobState.IN_FLIGHT.value,
                lease_owner=worker,
                lease_expires_at=now + timedelta(seconds=lease_s),
                run_id=run_id,
                updated_at=now,
            )
            .returning(
                jobs.c.id,
                jobs.c.record_version_id,
                jobs.c.source,
                jobs.c.record_id,
                jobs.c.state,
                jobs.c.attempts,
                jobs.c.claimed_from,
                jobs.c.reason,
            )
        )
        with self.begin() as conn, self.audit_batch(conn):
            due_ids = conn.execute(candidates).scalars().all()
            rows = conn.execute(statement.where(jobs.c.id.in_(
                due_ids[:_share_of(len(due_ids), limit) if share_tail else limit]))).all() \
                if due_ids else []
            claimed = sorted((Job(*row) for row in rows), key=lambda j: j.id)
            for job in claimed:
                self.audit(
                    conn,
                    actor=worker,
                    action="job.claimed",
                    job=job,
                    state_from=job.claimed_from,
                    state_to=JobState.IN_FLIGHT.value,
                    detail={"run_id": run_id},
                    at=now,
                )
        return claimed

    def renew_lease(self, job_ids: Sequence[int], *, worker: str, lease_s: float) -> int:
        now = utcnow()
        held = (
            select(jobs.c.id)
            .where(
                jobs.c.id.in_(list(job_ids)),
                jobs.c.lease_owner == worker,
                jobs.c.state == JobState.IN_FLIGHT.value,
            )
        )
        if self.dialect == "postgresql":
            # A row locked right now is being finished by this worker's own main
            # thread: skip it, or the two transactions deadlock on the batch's rows
            # (seen: DeadlockDetected, then the batch abandoned until its lease ran out).
            held = held.with_for_update(skip_locked=True)
        with self.begin(audited=False) as conn:
            return conn.execute(
                update(jobs)
                .where(jobs.c.id.in_(held.scalar_subquery()))
                .values(lease_expires_at=now + timedelta(seconds=lease_s))
            ).rowcount

    def finish(
        self,
        conn: Connection,
        job: Job,
        state: JobState,
        *,
        actor: str,
        reason: str | None = None,
        outcome_text: str | None = None,
        next_attempt_at: datetime | None = None,
        count_attempt: bool = False,
        detail: dict[str, Any] | None = None,
    ) -> bool:
        """Move a job ``actor`` holds the lease of to ``state`` (in the caller's transaction).

        Returns False, changing nothing, when the lease was lost meanwhile (the
        job expired and another worker took it): the newer holder decides.
        """
        now = utcnow()
        next_attempt_at = _utc(next_attempt_at) if next_attempt_at else None
        values: dict[str, Any] = {
            "state": state.value,
            "updated_at": now,
            "reason": reason[:200] if reason else None,
            "outcome_text": outcome_text,
            "next_attempt_at": next_attempt_at,
            "lease_owner": None,
            "lease_expires_at": None,
        }
        if count_attempt:
            values["attempts"] = jobs.c.attempts + 1
        if state is JobState.SYNCED:
            values["synced_at"] = now
        held = conn.execute(
            update(jobs)
            .where(
                jobs.c.id == job.id,
                jobs.c.state == JobState.IN_FLIGHT.value,
                jobs.c.lease_owner == actor,
            )
            .values(**values)
        ).rowcount
        if not held:
            log.warning("job %s: lease lost before it finished; outcome left to its new holder",
                        job.id)
            return False
        audit_detail = dict(detail or {})
        if reason:
            audit_detail["reason"] = reason[:200]
        if next_attempt_at:
            audit_detail["next_attempt_at"] = next_attempt_at.isoformat()
        self.audit(
            conn,
            actor=actor,
            action="job.state",
            job=job,
            state_from=JobState.IN_FLIGHT.value,
            state_to=state.value,
            detail=audit_detail or None,
            at=now,
        )
        return True

    def counts_by_state(self) -> dict[str, int]:
        counts = dict.fromkeys(ALL_STATES, 0)
        with self.engine.connect() as conn:
            for state, count in conn.execute(
                select(jobs.c.state, func.count()).group_by(jobs.c.state)
            ):
                counts[state] = int(count)
        return counts

    def count_due(self, *, now: datetime | None = None) -> int:
        now = _utc(now) if now else utcnow()
        with self.engine.connect() as conn:
            return int(
                conn.execute(
                    select(func.count())
                    .select_from(jobs)
                    .where(
                        or_(
                            jobs.c.state == JobState.PENDING.value,
                            and_(
                                jobs.c.state.in_(
                                    [JobState.RETRY_SCHEDULED.value, JobState.UNKNOWN.value]
                                ),
                                or_(
                                    jobs.c.next_attempt_at.is_(None), jobs.c.next_attempt_at <= now
                                ),
                            ),
                            and_(
                                jobs.c.state == JobState.IN_FLIGHT.value,
                                jobs.c.lease_expires_at < now,
                            ),
                        )
                    )
                ).scalar_one()
            )

    def next_due_at(self) -> datetime | None:
        """When the earliest scheduled retry falls due (None: nothing scheduled)."""
        with self.engine.connect() as conn:
            value = conn.execute(
                select(func.min(jobs.c.next_attempt_at)).where(
                    jobs.c.state.in_([JobState.RETRY_SCHEDULED.value, JobState.UNKNOWN.value])
                )
            ).scalar_one_or_none()
        return _aware(value)

    def jobs_overview(
        self,
        *,
        state: str | None = None,
        source: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[dict[str, Any]]:
        """Rows for listings (CLI, web app): ids, states and reasons, no PHI."""
        query = (
            select(
                jobs.c.id,
                jobs.c.source,
                jobs.c.record_id,
                jobs.c.state,
                jobs.c.attempts,
                jobs.c.reason,
                jobs.c.updated_at,
                jobs.c.synced_at,
                record_versions.c.specialist_id,
                record_versions.c.note_id,
                record_versions.c.note_version,
                record_versions.c.status,
                record_versions.c.start_at,
            )
            .join(record_versions, record_versions.c.id == jobs.c.record_version_id)
            .order_by(jobs.c.id.desc())
            .limit(limit)
            .offset(offset)
        )
        if state:
            query = query.where(jobs.c.state == state)
        if source:
            query = query.where(jobs.c.source == source)
        with self.engine.connect() as conn:
            return [dict(row._mapping) for row in conn.execute(query)]


def _share_of(due: int, limit: int) -> int:
    """How many of ``due`` jobs (at most 2 x ``limit`` looked at) one claim takes: a full
    claim while two are due, else half of what is left (at least a quarter claim), so
    that at the end of a queue the last records are shared out between the workers
    polling it instead of all going to the first one to ask."""
    if due >= 2 * limit:
        return limit
    return min(due, limit, max(-(-due // 2), limit // 4, 1))
