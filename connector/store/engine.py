"""Engines (one per database URL), transactions, locks and the audit append."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, Self

from sqlalchemy import (
    Connection,
    Engine,
    create_engine,
    event,
    func,
    select,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError, OperationalError, SQLAlchemyError

from connector.audit_chain import append as append_audit
from connector.audit_key import DEVELOPMENT_KEY
from connector.schema import (
    audit_chain_head,
    audit_events,
    jobs,
)
from connector.store.base import MIGRATIONS, Job, StoreError, utcnow


def _create_private(url: str) -> None:
    """Create a new SQLite database file with mode 0600 before SQLite does (it
    would use 0666 less the umask). Its -wal and -shm files take the database
    file's mode from SQLite itself."""
    database = make_url(url).database
    if not database or database == ":memory:" or database.startswith("file:"):
        return
    path = Path(database)
    if not path.parent.is_dir():
        return  # SQLite reports it
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    os.close(fd)


def _engine_for(url: str) -> Engine:
    # hide_parameters: a refused statement's error text never carries the
    # values (names, MRNs, note text) of the rows it was writing.
    if url.startswith("sqlite"):
        _create_private(url)
        engine = create_engine(url, connect_args={"timeout": 30}, hide_parameters=True)

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
    return create_engine(url, pool_pre_ping=True, hide_parameters=True)


class StoreCore:
    """The engine and its transactions; the rest of :class:`Store` builds on it."""

    def __init__(self, engine: Engine, *, audit_key: bytes | None = None) -> None:
        self.engine = engine
        # The audit chain's HMAC key (connector.audit); without one, the public
        # development key, which `peersync audit verify` reports.
        self.audit_key = audit_key or DEVELOPMENT_KEY
        # audit rows held per connection by audit_batch, chained when the batch ends
        self._audit_batches: dict[int, list[dict[str, Any]]] = {}

    @classmethod
    def from_url(cls, url: str, *, audit_key: bytes | None = None) -> Self:
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
                # a probe of the table, not a count of it (a full scan on PostgreSQL)
                conn.execute(select(jobs.c.id).limit(1)).first()
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

    @contextmanager
    def audit_batch(self, conn: Connection) -> Iterator[None]:
        """Hold the audit rows appended on ``conn`` meanwhile and chain them in one go at
        the end (one head read and update, one multi-row insert), in the same transaction:
        for the many events of a claim or of a batch's outcomes. Their order is kept."""
        rows: list[dict[str, Any]] = []
        self._audit_batches[id(conn)] = rows
        try:
            yield
        finally:
            self._audit_batches.pop(id(conn), None)
        append_audit(conn, rows, self.audit_key)

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
        row = {
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
        batch = self._audit_batches.get(id(conn))
        if batch is not None:
            batch.append(row)
        else:
            append_audit(conn, [row], self.audit_key)

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
