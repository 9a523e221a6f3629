"""Consent, and putting waiting or failed jobs back in line."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Connection,
    and_,
    insert,
    select,
    update,
)

from connector.audit_chain import append as append_audit
from connector.schema import (
    consents,
    jobs,
    record_versions,
)
from connector.states import JobState
from connector.store.base import utcnow
from connector.store.engine import StoreCore


class ConsentMixin(StoreCore):
    # -- consent ----------------------------------------------------------

    def _set_consent(
        self,
        conn: Connection,
        *,
        source: str,
        participant_id: str,
        status: str,
        consent_id: str | None,
        actor: str,
        now: datetime,
    ) -> int:
        """Record the participant's consent; an active one releases waiting records."""
        updated = conn.execute(
            update(consents)
            .where(consents.c.source == source, consents.c.participant_id == participant_id)
            .values(status=status, consent_id=consent_id, updated_by=actor, updated_at=now)
        ).rowcount
        if not updated:
            conn.execute(
                insert(consents).values(
                    source=source,
                    participant_id=participant_id,
                    status=status,
                    consent_id=consent_id,
                    updated_by=actor,
                    updated_at=now,
                )
            )
        released = 0
        if status == "active":
            released = self._release(
                conn,
                state=JobState.WAITING_CONSENT,
                where=jobs.c.record_version_id.in_(
                    select(record_versions.c.id).where(
                        record_versions.c.source == source,
                        record_versions.c.participant_id == participant_id,
                    )
                ),
                actor=actor,
                why="consent active",
                now=now,
            )
        return released

    def set_consent(
        self,
        *,
        source: str,
        participant_id: str,
        status: str,
        actor: str,
        consent_id: str | None = None,
    ) -> int:
        with self.begin() as conn:
            released = self._set_consent(
                conn,
                source=source,
                participant_id=participant_id,
                status=status,
                consent_id=consent_id,
                actor=actor,
                now=utcnow(),
            )
            self.audit(
                conn,
                actor=actor,
                action="consent.set",
                source=source,
                detail={"participant_id": participant_id, "status": status},
            )
            return released

    def consent_status(self, source: str, participant_id: str) -> str | None:
        with self.engine.connect() as conn:
            return conn.execute(
                select(consents.c.status).where(
                    consents.c.source == source, consents.c.participant_id == participant_id
                )
            ).scalar_one_or_none()

    def _release(
        self,
        conn: Connection,
        *,
        state: JobState,
        where: Any,
        actor: str,
        why: str,
        now: datetime,
        reset_attempts: bool = False,
    ) -> int:
        values: dict[str, Any] = {
            "state": JobState.PENDING.value,
            "updated_at": now,
            "reason": None,
        }
        if reset_attempts:
            values.update(attempts=0, next_attempt_at=None)
        released = conn.execute(
            update(jobs)
            .where(jobs.c.state == state.value, where)
            .values(**values)
            .returning(jobs.c.id, jobs.c.source, jobs.c.record_id, jobs.c.record_version_id)
        ).all()
        append_audit(
            conn,
            [
                {
                    "at": now,
                    "actor": actor,
                    "action": "job.released",
                    "source": row.source,
                    "record_id": row.record_id,
                    "record_version_id": row.record_version_id,
                    "job_id": row.id,
                    "state_from": state.value,
                    "state_to": JobState.PENDING.value,
                    "detail": {"why": why},
                }
                for row in released
            ],
            self.audit_key,
        )
        return len(released)


    def release_waiting(
        self,
        state: JobState,
        *,
        actor: str,
        why: str,
        source: str | None = None,
        participant_id: str | None = None,
        specialist_id: str | None = None,
        record_id: str | None = None,
    ) -> int:
        """Put the records waiting in ``state`` for one participant, specialist or record
        back in line."""
        versions = select(record_versions.c.id)
        if record_id is not None:
            versions = versions.where(record_versions.c.record_id == record_id)
        if source is not None:
            versions = versions.where(record_versions.c.source == source)
        if participant_id is not None:
            versions = versions.where(record_versions.c.participant_id == participant_id)
        if specialist_id is not None:
            versions = versions.where(record_versions.c.specialist_id == specialist_id)
        with self.begin() as conn:
            return self._release(conn, state=state, where=jobs.c.record_version_id.in_(versions),
                                 actor=actor, why=why, now=utcnow())

    def requeue(self, job_ids: Sequence[int] | None, *, actor: str) -> int:
        """Put failed jobs (needs_attention) back to pending after a fix."""
        now = utcnow()
        with self.begin() as conn:
            where = jobs.c.state == JobState.NEEDS_ATTENTION.value
            if job_ids is not None:
                where = and_(where, jobs.c.id.in_(list(job_ids)))
            return self._release(
                conn,
                state=JobState.NEEDS_ATTENTION,
                where=where,
                actor=actor,
                why="retry requested",
                now=now,
                # The admin fixed the cause: a full set of retries again, or
                # the first transient error would send it straight back.
                reset_attempts=True,
            )
