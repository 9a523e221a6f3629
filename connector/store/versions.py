"""Record versions: storing what intake accepted (one outbox job each), reading it back."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    Connection,
    insert,
    select,
    tuple_,
    update,
)
from sqlalchemy.exc import IntegrityError

from connector.audit_chain import append as append_audit
from connector.records import EncounterRecord
from connector.review import NO_REVIEW, ReviewRule, carried_cosignature
from connector.schema import (
    jobs,
    record_versions,
    specialists,
)
from connector.states import JobState
from connector.store.base import AddSummary, utcnow
from connector.store.consent import ConsentMixin
from connector.store.refusals import _REFUSALS, refusal

log = logging.getLogger("peersync.store")


class VersionsMixin(ConsentMixin):
    # The profile's [review] (connector.review), set by whoever opens the store for a
    # deployment (connector.wiring, the web app): which new versions wait for review.
    # The default holds none.
    review_rule: ReviewRule = NO_REVIEW

    # -- intake -----------------------------------------------------------

    def add_records(
        self, records: Iterable[EncounterRecord], *, actor: str, batch_size: int = 500
    ) -> AddSummary:
        """Store new record versions and queue a job for each, in batches.

        Identical content already stored is counted as unchanged and adds
        nothing. Consent carried by a record updates its participant's consent
        (and an active one releases that participant's waiting records).
        """
        total = AddSummary()
        batch: list[EncounterRecord] = []
        for record in records:
            batch.append(record)
            if len(batch) >= batch_size:
                total += self._add_batch(batch, actor=actor)
                batch = []
        if batch:
            total += self._add_batch(batch, actor=actor)
        return total

    def _add_batch(self, batch: list[EncounterRecord], *, actor: str) -> AddSummary:
        try:
            with self.begin() as conn:
                return self._insert_batch(conn, batch, actor=actor)
        except (IntegrityError, *_REFUSALS):
            # Another process stored some of these at the same moment, or the
            # database refused a row: take them one at a time so each is ours,
            # already there, or refused by name, and the rest are kept.
            total = AddSummary()
            for record in batch:
                try:
                    with self.begin() as conn:
                        total += self._insert_batch(conn, [record], actor=actor)
                except IntegrityError:
                    total += AddSummary(unchanged=1)
                except _REFUSALS as exc:
                    refused = refusal(record, exc)
                    log.warning("%s", refused)
                    total += AddSummary(refused=(refused,))
            return total

    def _insert_batch(
        self, conn: Connection, batch: list[EncounterRecord], *, actor: str
    ) -> AddSummary:
        now = utcnow()
        keyed = {(r.source, r.id, r.content_hash): r for r in batch}
        existing = set(tuple(row) for row in
            conn.execute(
                select(
                    record_versions.c.source,
                    record_versions.c.record_id,
                    record_versions.c.content_hash,
                ).where(
                    tuple_(record_versions.c.source, record_versions.c.record_id).in_(
                        list({(r.source, r.id) for r in batch})
                    )
                )
            ).all()
        )
        fresh = [record for key, record in keyed.items() if key not in existing]
        unchanged = len(batch) - len(fresh)
        if not fresh:
            return AddSummary(unchanged=unchanged)
        rows = [_version_row(record, now=now, actor=actor) for record in fresh]
        # pending, or waiting_review where the profile's [review] holds it (connector.review)
        starts = [self.review_rule.initial_state(record).value for record in fresh]
        ids = (
            conn.execute(
                insert(record_versions).returning(
                    record_versions.c.id, sort_by_parameter_order=True
                ),
                rows,
            )
            .scalars()
            .all()
        )
        job_ids = (
            conn.execute(
                insert(jobs).returning(jobs.c.id, sort_by_parameter_order=True),
                [
                    {
                        "record_version_id": version_id,
                        "source": record.source,
                        "record_id": record.id,
                        "state": state,
                        "reason": "review-required" if state != JobState.PENDING else None,
                        "attempts": 0,
                        "created_at": now,
                        "updated_at": now,
                    }
                    for version_id, record, state in zip(ids, fresh, starts, strict=True)
                ],
            )
            .scalars()
            .all()
        )
        accepted = [
            {
                "at": now,
                "actor": actor,
                "action": "record.accepted",
                "source": record.source,
                "record_id": record.id,
                "record_version_id": version_id,
                "job_id": job_id,
                "state_from": None,
                "state_to": state,
                "detail": {"content_hash": record.content_hash, **_cosigned(record)},
            }
            for version_id, job_id, record, state in zip(ids, job_ids, fresh, starts,
                                                          strict=True)
        ]
        self._remember_specialists(conn, fresh, now=now)
        for record in fresh:
            if record.consent is not None and record.consent.status:
                self._set_consent(
                    conn,
                    source=record.source,
                    participant_id=record.participant.id,
                    status=record.consent.status,
                    consent_id=record.consent.id,
                    actor=actor,
                    now=now,
                )
        # Appended last: the chain head is the last lock this transaction takes,
        # after any job rows a consent release locked, as in every other writer
        # (claim, finish, release), so no two writers wait on each other.
        append_audit(conn, accepted, self.audit_key)
        return AddSummary(new_versions=len(fresh), unchanged=unchanged)

    def _remember_specialists(
        self, conn: Connection, records: Sequence[EncounterRecord], *, now: datetime
    ) -> None:
        latest: dict[str, dict[str, str]] = {}
        for record in records:
            s = record.specialist
            if s.has_name:
                latest[s.id] = {
                    k: v
                    for k, v in (
                        ("given", s.given),
                        ("family", s.family),
                        ("credential", s.credential),
                        ("npi", s.npi),
                    )
                    if v
                }
        for specialist_id, payload in latest.items():
            updated = conn.execute(
                update(specialists)
                .where(specialists.c.specialist_id == specialist_id)
                .values(payload=payload, updated_at=now)
            ).rowcount
            if not updated:
                conn.execute(
                    insert(specialists).values(
                        specialist_id=specialist_id, payload=payload, updated_at=now
                    )
                )

    def specialist_details(self, specialist_id: str) -> dict[str, str] | None:
        with self.engine.connect() as conn:
            row = conn.execute(
                select(specialists.c.payload).where(specialists.c.specialist_id == specialist_id)
            ).first()
        return dict(row[0]) if row else None


    def load_records(self, record_version_ids: Sequence[int]) -> dict[int, EncounterRecord]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(
                    record_versions.c.id, record_versions.c.source, record_versions.c.payload
                ).where(record_versions.c.id.in_(list(record_version_ids)))
            ).all()
        return {row.id: EncounterRecord.from_json(row.source, row.payload) for row in rows}


def _cosigned(record: EncounterRecord) -> dict[str, str]:
    """A co-signature the record arrived with, for its audit event (a staff id and a time)."""
    signature = carried_cosignature(record)
    if signature is None:
        return {}
    return {"cosigned_by": signature.staff_id, "cosigned_at": signature.at.isoformat()}


def _version_row(record: EncounterRecord, *, now: datetime, actor: str) -> dict[str, Any]:
    note = record.note
    return {
        "source": record.source,
        "record_id": record.id,
        "content_hash": record.content_hash,
        "received_at": now,
        "received_by": actor,
        "payload": record.canonical_json,
        "participant_id": record.participant.id,
        "specialist_id": record.specialist.id,
        "note_id": note.id if note else None,
        "note_version": note.version if note else None,
        "status": record.status,
        "part2": record.part2,
        "start_at": record.start.astimezone(UTC),
        "documentation_minutes": note.minutes_spent if note else None,
    }
