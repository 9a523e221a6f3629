"""Supervisor review: the queue, co-signing (approve) and returning note versions.

A version that waits for review has a job in ``waiting_review`` (see
:mod:`connector.review` for which versions do). :meth:`ReviewMixin.approve`
records the co-signature (the supervisor's account and staff id, the time) and
puts the job back in line (``pending``, due now); :meth:`ReviewMixin.return_note`
ends it in ``returned`` (terminal: never sent) with the supervisor's comment for
the specialist. Each appends an audit event in the same transaction; a refusal
(another supervisor's specialist, the author's own note, an inactive account, a
wrong password) is audited too. Ids and codes only in the log: never the comment.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, delete, insert, select, update

from connector.review import (
    APPROVED,
    MAX_COMMENT,
    RETURNED,
    Cosignature,
    ReviewRefused,
)
from connector.schema import jobs, record_versions, reviews, supervision, users
from connector.states import JobState
from connector.store.base import Job, _aware, _utc, utcnow
from connector.store.engine import StoreCore

if TYPE_CHECKING:
    from connector.accounts import User

rv = record_versions


@dataclass(frozen=True, slots=True)
class Waiting:
    """A version waiting for review (the queue's row; its payload is PHI, for pages only)."""

    job_id: int
    record_version_id: int
    source: str
    record_id: str
    specialist_id: str
    participant_id: str
    note_version: int | None
    start_at: datetime
    received_at: datetime
    payload: str


@dataclass(frozen=True, slots=True)
class Review:
    """A supervisor's decision on one version."""

    record_version_id: int
    decision: str  # approved | returned
    user_name: str
    staff_id: str
    decided_at: datetime
    comment: str | None

    @property
    def cosignature(self) -> Cosignature | None:
        if self.decision != APPROVED:
            return None
        return Cosignature(staff_id=self.staff_id, at=self.decided_at, user=self.user_name)


class ReviewMixin(StoreCore):
    # -- supervisors -------------------------------------------------------

    def set_supervised(self, conn: Connection, user_id: int, staff_ids: Sequence[str]) -> None:
        """The staff ids a supervisor supervises (none given: every specialist)."""
        conn.execute(delete(supervision).where(supervision.c.user_id == user_id))
        if staff_ids:
            conn.execute(insert(supervision), [
                {"user_id": user_id, "specialist_id": staff_id}
                for staff_id in dict.fromkeys(staff_ids)])

    def supervised(self, user_id: int) -> tuple[str, ...]:
        """The staff ids this supervisor supervises; () means every specialist."""
        with self.engine.connect() as conn:
            return self._supervised(conn, user_id)

    @staticmethod
    def _supervised(conn: Connection, user_id: int) -> tuple[str, ...]:
        return tuple(conn.execute(
            select(supervision.c.specialist_id).where(supervision.c.user_id == user_id)
            .order_by(supervision.c.specialist_id)).scalars())

    # -- reading -----------------------------------------------------------

    def review_queue(self, *, specialist_ids: Collection[str] | None = None,
                     source: str | None = None, record_id: str | None = None,
                     limit: int = 200) -> list[Waiting]:
        """Versions waiting for review, oldest first; ``specialist_ids`` None: everyone's."""
        query = (select(jobs.c.id, jobs.c.record_version_id, jobs.c.source, jobs.c.record_id,
                        rv.c.specialist_id, rv.c.participant_id, rv.c.note_version,
                        rv.c.start_at, rv.c.received_at, rv.c.payload)
                 .join(rv, rv.c.id == jobs.c.record_version_id)
                 .where(jobs.c.state == JobState.WAITING_REVIEW.value))
        if specialist_ids is not None:
            query = query.where(rv.c.specialist_id.in_(list(specialist_ids)))
        if source is not None:
            query = query.where(jobs.c.source == source)
        if record_id is not None:
            query = query.where(jobs.c.record_id == record_id)
        with self.engine.connect() as conn:
            rows = conn.execute(query.order_by(jobs.c.id).limit(limit)).all()
        return [Waiting(job_id=r.id, record_version_id=r.record_version_id, source=r.source,
                        record_id=r.record_id, specialist_id=r.specialist_id,
                        participant_id=r.participant_id, note_version=r.note_version,
                        start_at=_aware(r.start_at) or r.start_at,
                        received_at=_aware(r.received_at) or r.received_at,
                        payload=r.payload) for r in rows]

    def recent_versions(self, source: str, participant_id: str, *, before: int,
                        limit: int = 3) -> list[dict[str, Any]]:
        """A participant's latest versions before job ``before``: date, service, state."""
        query = (select(jobs.c.id, jobs.c.state, jobs.c.record_id, rv.c.start_at, rv.c.payload)
                 .join(rv, rv.c.id == jobs.c.record_version_id)
                 .where(rv.c.source == source, rv.c.participant_id == participant_id,
                        jobs.c.id < before)
                 .order_by(jobs.c.id.desc()).limit(limit))
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        return [{"job_id": r.id, "state": r.state, "record_id": r.record_id,
                 "start_at": _aware(r.start_at), "payload": r.payload} for r in rows]

    def review_of(self, record_version_id: int) -> Review | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(reviews).where(
                reviews.c.record_version_id == record_version_id)).first()
        return _review(row) if row else None

    def cosignatures(self, record_version_ids: Sequence[int]) -> dict[int, Cosignature]:
        """The co-signatures made in PeerSync of these versions (the sync's authenticator)."""
        if not record_version_ids:
            return {}
        with self.engine.connect() as conn:
            rows = conn.execute(select(reviews).where(
                reviews.c.record_version_id.in_(list(record_version_ids)),
                reviews.c.decision == APPROVED)).all()
        out: dict[int, Cosignature] = {}
        for row in rows:
            signature = _review(row).cosignature
            if signature is not None:
                out[row.record_version_id] = signature
        return out

    # -- deciding ----------------------------------------------------------

    def approve(self, record_version_id: int, supervisor: User, *,
                at: datetime | None = None) -> Cosignature:
        """Co-sign a waiting version: the job goes back in line (pending, due now)."""
        at = _utc(at) if at else utcnow()
        staff_id = self._decision(record_version_id, supervisor, APPROVED, None, at)
        return Cosignature(staff_id=staff_id, at=at, user=supervisor.name)

    def return_note(self, record_version_id: int, supervisor: User, *, comment: str,
                    at: datetime | None = None) -> None:
        """Return a waiting version to its author: ``returned`` (terminal), with the comment."""
        self._decision(record_version_id, supervisor, RETURNED, comment.strip(),
                       _utc(at) if at else utcnow())

    def _decision(self, record_version_id: int, supervisor: User, decision: str,
                  comment: str | None, at: datetime) -> str:
        """Record an approval or a return and move the job on; the signer's staff id."""
        approving = decision == APPROVED
        state = JobState.PENDING if approving else JobState.RETURNED
        with self._refusals_audited(record_version_id, supervisor,
                                    "approve" if approving else "return"), \
                self.begin() as conn:
            if not approving and (not comment or len(comment) > MAX_COMMENT):
                raise ReviewRefused(f"a return needs a comment for the specialist (1 to "
                                    f"{MAX_COMMENT} characters)", "no-comment")
            job, staff_id = self._decide(conn, record_version_id, supervisor)
            self._leave_review(conn, job, state=state,
                               reason=None if approving else "returned-by-supervisor", at=at)
            conn.execute(insert(reviews).values(
                record_version_id=record_version_id, decision=decision,
                user_name=supervisor.name, staff_id=staff_id, decided_at=at, comment=comment))
            # ids, codes and times only: never the comment (it may name the participant)
            detail: dict[str, Any] = (
                {"cosigned_by": staff_id, "cosigned_at": at.isoformat()} if approving
                else {"returned_by": staff_id, "comment_chars": len(comment or "")})
            self.audit(conn, actor=f"review:{supervisor.name}", action=f"review.{decision}",
                       job=job, state_from=JobState.WAITING_REVIEW.value, state_to=state.value,
                       detail={**detail, "user": supervisor.name}, at=at)
        return staff_id

    def review_refused(self, record_version_id: int | None, supervisor_name: str, *,
                       what: str, code: str) -> None:
        """Audit a refusal found before the store was asked (a wrong password)."""
        with self.begin() as conn:
            job = self._job_of(conn, record_version_id) if record_version_id else None
            self.audit(conn, actor=f"review:{supervisor_name}", action="review.refused",
                       job=job, detail={"what": what, "why": code, "user": supervisor_name})

    @contextmanager
    def _refusals_audited(self, record_version_id: int, supervisor: User,
                          what: str) -> Iterator[None]:
        """A refusal raised inside (its transaction rolled back) is audited on its own."""
        try:
            yield
        except ReviewRefused as problem:
            self.review_refused(record_version_id, supervisor.name, what=what,
                                code=problem.code)
            raise

    def _decide(self, conn: Connection, record_version_id: int,
                supervisor: User) -> tuple[Job, str]:
        """The waiting job and the signer's staff id, or ReviewRefused."""
        row = conn.execute(select(users).where(users.c.id == supervisor.id)).first()
        job = self._job_of(conn, record_version_id)
        author = conn.execute(select(rv.c.specialist_id).where(
            rv.c.id == record_version_id)).scalar_one_or_none()
        problem: ReviewRefused | None = None
        if row is None or row.role != "supervisor":
            problem = ReviewRefused(f"{supervisor.name} is not a supervisor account",
                                    "not-supervisor")
        elif not row.active:
            problem = ReviewRefused(f"{supervisor.name} is disabled", "inactive")
        elif not row.specialist_id:
            problem = ReviewRefused(f"{supervisor.name} has no staff id", "no-staff-id")
        elif job is None or author is None or job.state != JobState.WAITING_REVIEW.value:
            state = job.state if job else "unknown"
            problem = ReviewRefused(f"record version {record_version_id} is not waiting for "
                                    f"review (state {state})", "not-waiting")
        elif author == row.specialist_id:
            problem = ReviewRefused("a supervisor cannot co-sign or return their own note",
                                    "own-note")
        else:
            limited = self._supervised(conn, int(row.id))
            if limited and author not in limited:
                problem = ReviewRefused(f"{supervisor.name} does not supervise staff id "
                                        f"{author}", "not-supervised")
        if problem is not None:
            raise problem
        assert job is not None and row is not None
        return job, str(row.specialist_id)

    @staticmethod
    def _leave_review(conn: Connection, job: Job, *, state: JobState, reason: str | None,
                      at: datetime) -> None:
        """Move the job out of waiting_review, if it still is there: of two supervisors
        deciding at once, the second finds it gone (PostgreSQL: after the first commits)."""
        moved = conn.execute(update(jobs).where(
            jobs.c.id == job.id, jobs.c.state == JobState.WAITING_REVIEW.value).values(
            state=state.value, reason=reason, next_attempt_at=None, updated_at=at)).rowcount
        if not moved:
            raise ReviewRefused(f"record version {job.record_version_id} is no longer waiting "
                                "for review", "not-waiting")

    @staticmethod
    def _job_of(conn: Connection, record_version_id: int) -> Job | None:
        row = conn.execute(select(
            jobs.c.id, jobs.c.record_version_id, jobs.c.source, jobs.c.record_id, jobs.c.state,
            jobs.c.attempts).where(jobs.c.record_version_id == record_version_id)).first()
        return Job(*row) if row else None


def _review(row: Any) -> Review:
    return Review(record_version_id=row.record_version_id, decision=row.decision,
                  user_name=row.user_name, staff_id=row.staff_id,
                  decided_at=_aware(row.decided_at) or row.decided_at, comment=row.comment)
