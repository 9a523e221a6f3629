"""The durable store: record versions, the outbox, the write ledger, links, audit.

One :class:`Store` wraps one SQLAlchemy engine (SQLite file by default,
PostgreSQL for several workers on several hosts). Every state change goes
through a method here and appends an audit event in the same transaction.
The CLI and the web app call these methods; neither writes SQL of its own.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Connection,
    Engine,
    and_,
    create_engine,
    event,
    func,
    insert,
    or_,
    select,
    tuple_,
    update,
)
from sqlalchemy.exc import IntegrityError, OperationalError, SQLAlchemyError

from connector.audit import DEVELOPMENT_KEY
from connector.audit import append as append_audit
from connector.errors import ConnectorError
from connector.records import EncounterRecord
from connector.schema import (
    audit_chain_head,
    audit_events,
    consents,
    jobs,
    ledger,
    links,
    record_versions,
    specialists,
)
from connector.states import ALL_STATES, UNFINISHED_STATES, WAITING_STATES, JobState

log = logging.getLogger("peersync.store")

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


class StoreError(ConnectorError):
    """The database refused or could not be reached. Retry is safe (nothing half-written)."""

    retry_safe = True


def utcnow() -> datetime:
    return datetime.now(UTC)


def _utc(value: datetime) -> datetime:
    """A time to write or compare, in UTC (naive: taken as UTC already).

    SQLite keeps a datetime's wall-clock digits and drops its offset, so a
    time in any other zone would be compared hours off.
    """
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def _aware(value: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; everything we write is UTC."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class Job:
    id: int
    record_version_id: int
    source: str
    record_id: str
    state: str
    attempts: int
    claimed_from: str | None = None
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class AddSummary:
    new_versions: int = 0
    unchanged: int = 0

    def __add__(self, other: AddSummary) -> AddSummary:
        return AddSummary(self.new_versions + other.new_versions, self.unchanged + other.unchanged)


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    resource_type: str
    identifier_system: str
    identifier_value: str
    ehr_id: str | None
    ehr_version: str | None
    action: str
    state: str
    record_version_id: int | None


def _engine_for(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            # Let SQLAlchemy emit BEGIN itself (below) so that every write
            # transaction takes the write lock up front: a claim is then one
            # atomic step even with several worker processes.
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn: Connection) -> None:
            # Writes (Store.begin) take the write lock up front; reads stay deferred
            # so they never wait behind a writer (WAL lets them read meanwhile).
            write = conn.get_execution_options().get("peersync_write", False)
            conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

        return engine
    return create_engine(url, pool_pre_ping=True)


class Store:
    """All reads and writes of PeerSync's database."""

    def __init__(self, engine: Engine, *, audit_key: bytes | None = None) -> None:
        self.engine = engine
        # The audit chain's HMAC key (connector.audit); without one, the public
        # development key, which `peersync audit verify` reports.
        self.audit_key = audit_key or DEVELOPMENT_KEY

    @classmethod
    def from_url(cls, url: str, *, audit_key: bytes | None = None) -> Store:
        return cls(_engine_for(url), audit_key=audit_key)

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def close(self) -> None:
        self.engine.dispose()

    # -- schema -----------------------------------------------------------

    def migrate(self) -> None:
        """Bring the schema to the newest Alembic revision."""
        from alembic import command
        from alembic.config import Config

        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        with self.engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")

    def check_schema(self) -> None:
        """Raise StoreError unless the schema is migrated (a clear message for the CLI)."""
        try:
            with self.engine.connect() as conn:
                conn.execute(select(func.count()).select_from(jobs)).scalar_one()
        except (OperationalError, SQLAlchemyError) as exc:
            raise StoreError(
                "the database is not initialised: run `peersync init` (or `peersync db upgrade`)"
            ) from exc

    @contextmanager
    def begin(self, *, audited: bool = True) -> Iterator[Connection]:
        """A write transaction.

        On SQLite it holds the database write lock from its first statement. On
        PostgreSQL an ``audited`` one (the default: nearly every write appends
        audit rows) takes the audit chain head's row lock first, before any job
        row: appends serialise on that row anyway, and taking it first means no
        transaction ever holds a job row while it waits for the head (seen:
        DeadlockDetected between a claim and a finishing batch).
        """
        try:
            with self.engine.connect() as conn:
                conn.execution_options(peersync_write=True)
                with conn.begin():
                    if audited and self.dialect == "postgresql":
                        conn.execute(select(audit_chain_head.c.id)
                                     .where(audit_chain_head.c.id == 1).with_for_update())
                    yield conn
        except IntegrityError:
            raise
        except OperationalError as exc:
            raise StoreError(f"database error ({type(exc.orig).__name__})") from exc

    @contextmanager
    def exclusive(self, name: str) -> Iterator[Connection]:
        """A write transaction holding a lock named ``name`` across processes until it ends.

        For a match-or-create in the EHR: a conditional create is racy on many
        servers (sekmet included), so two workers must not both search, find
        nothing, and create. The second waits here, then finds the first's link.
        PostgreSQL: a transaction-scoped advisory lock; SQLite: the database write
        lock every write transaction takes (BEGIN IMMEDIATE).
        """
        with self.begin() as conn:
            if self.dialect == "postgresql":
                digest = hashlib.sha256(name.encode("utf-8")).digest()
                conn.execute(select(func.pg_advisory_xact_lock(
                    int.from_bytes(digest[:8], "big", signed=True))))
            yield conn

    # -- audit ------------------------------------------------------------

    def audit(
        self,
        conn: Connection,
        *,
        actor: str,
        action: str,
        job: Job | None = None,
        source: str | None = None,
        record_id: str | None = None,
        record_version_id: int | None = None,
        state_from: str | None = None,
        state_to: str | None = None,
        detail: dict[str, Any] | None = None,
        at: datetime | None = None,
    ) -> None:
        """Append one audit event in the caller's transaction. No PHI in ``detail``."""
        if job is not None:
            source = source or job.source
            record_id = record_id or job.record_id
            record_version_id = record_version_id or job.record_version_id
        append_audit(
            conn,
            [
                {
                    "at": at or utcnow(),
                    "actor": actor,
                    "action": action,
                    "source": source,
                    "record_id": record_id,
                    "record_version_id": record_version_id,
                    "job_id": job.id if job else None,
                    "state_from": state_from,
                    "state_to": state_to,
                    "detail": detail,
                }
            ],
            self.audit_key,
        )

    def audit_events(
        self,
        *,
        source: str | None = None,
        record_id: str | None = None,
        limit: int = 200,
        after_seq: int = 0,
    ) -> list[dict[str, Any]]:
        query = select(audit_events).where(audit_events.c.seq > after_seq)
        if source is not None:
            query = query.where(audit_events.c.source == source)
        if record_id is not None:
            query = query.where(audit_events.c.record_id == record_id)
        query = query.order_by(audit_events.c.seq).limit(limit)
        with self.engine.connect() as conn:
            return [dict(row._mapping) for row in conn.execute(query)]

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
        except IntegrityError:
            # Another process stored some of these at the same moment: take
            # them one at a time so each is either ours or already there.
            total = AddSummary()
            for record in batch:
                try:
                    with self.begin() as conn:
                        total += self._insert_batch(conn, [record], actor=actor)
                except IntegrityError:
                    total += AddSummary(unchanged=1)
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
                        "state": JobState.PENDING.value,
                        "attempts": 0,
                        "created_at": now,
                        "updated_at": now,
                    }
                    for version_id, record in zip(ids, fresh, strict=True)
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
                "state_to": JobState.PENDING.value,
                "detail": {"content_hash": record.content_hash},
            }
            for version_id, job_id, record in zip(ids, job_ids, fresh, strict=True)
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
    ) -> list[Job]:
        """Claim up to ``limit`` due jobs for ``worker`` in one atomic UPDATE.

        Due: pending; retry_scheduled or unknown whose time has come; in_flight
        whose lease expired (its worker died); and, once per run, the waiting
        ones (so a new EHR Patient or Practitioner is found at every sync).
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
                    jobs.c.state.in_([s.value for s in WAITING_STATES]),
                    or_(jobs.c.run_id.is_(None), jobs.c.run_id != run_id),
                ),
            )
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
            .limit(limit)
        )
        if self.dialect == "postgresql":
            # Choose and lock the rows once, in a materialized CTE (the usual
            # queue pattern): a subquery in `WHERE id IN (...)` is the planner's
            # to re-evaluate, and with SKIP LOCKED and LIMIT that is not stable.
            due_ids = (candidates.with_for_update(skip_locked=True)
                       .cte("due_jobs").prefix_with("MATERIALIZED"))
            chosen = jobs.c.id.in_(select(due_ids.c.id))
        else:
            chosen = jobs.c.id.in_(candidates.scalar_subquery())
        statement = (
            update(jobs)
            .where(chosen)
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
        with self.begin() as conn:
            rows = conn.execute(statement).all()
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

    def load_records(self, record_version_ids: Sequence[int]) -> dict[int, EncounterRecord]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(
                    record_versions.c.id, record_versions.c.source, record_versions.c.payload
                ).where(record_versions.c.id.in_(list(record_version_ids)))
            ).all()
        return {row.id: EncounterRecord.from_json(row.source, row.payload) for row in rows}

    def iter_record_versions(self, *, batch_size: int = 500) -> Iterator[EncounterRecord]:
        """Every stored version, oldest first, read in batches."""
        last = 0
        while True:
            with self.engine.connect() as conn:
                rows = conn.execute(
                    select(
                        record_versions.c.id, record_versions.c.source, record_versions.c.payload
                    )
                    .where(record_versions.c.id > last)
                    .order_by(record_versions.c.id)
                    .limit(batch_size)
                ).all()
            if not rows:
                return
            for row in rows:
                yield EncounterRecord.from_json(row.source, row.payload)
            last = rows[-1].id

    # -- ledger -----------------------------------------------------------

    def ledger_add(
        self,
        conn: Connection,
        *,
        resource_type: str,
        system: str,
        value: str,
        ehr_id: str | None,
        ehr_version: str | None,
        action: str,
        job: Job | None = None,
        state: str = "confirmed",
    ) -> None:
        conn.execute(
            insert(ledger).values(
                record_version_id=job.record_version_id if job else None,
                source=job.source if job else None,
                record_id=job.record_id if job else None,
                resource_type=resource_type,
                identifier_system=system,
                identifier_value=value,
                ehr_id=ehr_id,
                ehr_version=ehr_version,
                action=action,
                state=state,
                written_at=utcnow(),
            )
        )

    def ledger_latest(self, resource_type: str, system: str, value: str) -> LedgerEntry | None:
        with self.engine.connect() as conn:
            row = conn.execute(
                select(ledger)
                .where(
                    ledger.c.resource_type == resource_type,
                    ledger.c.identifier_system == system,
                    ledger.c.identifier_value == value,
                )
                .order_by(ledger.c.id.desc())
                .limit(1)
            ).first()
        return _ledger_entry(row) if row else None

    def ledger_snapshot(
        self, keys: Sequence[tuple[str, str]]
    ) -> dict[tuple[str, str], list[LedgerEntry]]:
        """Every ledger row of these records, oldest first, in one query (per claimed batch)."""
        found: dict[tuple[str, str], list[LedgerEntry]] = {key: [] for key in keys}
        if not keys:
            return found
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(ledger)
                .where(tuple_(ledger.c.source, ledger.c.record_id).in_(list(set(keys))))
                .order_by(ledger.c.id)
            )
            for row in rows:
                found.setdefault((row.source, row.record_id), []).append(_ledger_entry(row))
        return found

    def ledger_for_record(
        self, source: str, record_id: str, resource_type: str | None = None
    ) -> list[LedgerEntry]:
        """The newest ledger entry per identifier written for one record, oldest first."""
        query = select(ledger).where(ledger.c.source == source, ledger.c.record_id == record_id)
        if resource_type:
            query = query.where(ledger.c.resource_type == resource_type)
        newest: dict[tuple[str, str, str], LedgerEntry] = {}
        with self.engine.connect() as conn:
            for row in conn.execute(query.order_by(ledger.c.id)):
                entry = _ledger_entry(row)
                newest[(entry.resource_type, entry.identifier_system, entry.identifier_value)] = (
                    entry
                )
        return list(newest.values())

    # -- links ------------------------------------------------------------

    def get_link(self, kind: str, key: str) -> str | None:
        with self.engine.connect() as conn:
            return conn.execute(
                select(links.c.ehr_id).where(links.c.kind == kind, links.c.key == key)
            ).scalar_one_or_none()

    def set_link(
        self,
        kind: str,
        key: str,
        ehr_id: str,
        *,
        linked_by: str,
        conn: Connection | None = None,
    ) -> None:
        def write(c: Connection) -> None:
            now = utcnow()
            changed = c.execute(
                update(links)
                .where(links.c.kind == kind, links.c.key == key)
                .values(ehr_id=ehr_id, linked_by=linked_by, linked_at=now)
            ).rowcount
            if not changed:
                c.execute(
                    insert(links).values(
                        kind=kind, key=key, ehr_id=ehr_id, linked_by=linked_by, linked_at=now
                    )
                )
            self.audit(
                c,
                actor=linked_by,
                action="link.set",
                detail={
                    "kind": kind,
                    "ehr_id": ehr_id,
                    **({"key": key} if kind in ("practitioner", "organization", "device") else {}),
                },
            )

        if conn is not None:
            write(conn)
        else:
            with self.begin() as c:
                write(c)


def _ledger_entry(row: Any) -> LedgerEntry:
    return LedgerEntry(
        resource_type=row.resource_type,
        identifier_system=row.identifier_system,
        identifier_value=row.identifier_value,
        ehr_id=row.ehr_id,
        ehr_version=row.ehr_version,
        action=row.action,
        state=row.state,
        record_version_id=row.record_version_id,
    )


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

