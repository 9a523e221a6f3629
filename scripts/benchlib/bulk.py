"""Rows straight into a migrated store's tables, for the pages benchmark's seed (:mod:`.seed`).

``executemany`` in one transaction per chunk on SQLite (``synchronous=OFF`` while
loading), ``COPY`` on PostgreSQL; then the sequences are moved past the seeded
ids and PostgreSQL is ``VACUUM ANALYZE``d, as autovacuum would after a bulk load.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

CHUNK = 20_000  # rows generated and written at a time

COLUMNS = {
    "record_versions": ("id", "source", "record_id", "content_hash", "received_at",
                        "received_by", "payload", "participant_id", "specialist_id", "note_id",
                        "note_version", "status", "part2", "start_at", "documentation_minutes"),
    "jobs": ("id", "record_version_id", "source", "record_id", "state", "attempts",
             "next_attempt_at", "lease_owner", "lease_expires_at", "claimed_from", "run_id",
             "reason", "outcome_text", "created_at", "updated_at", "synced_at"),
    "ledger": ("id", "record_version_id", "source", "record_id", "resource_type",
               "identifier_system", "identifier_value", "ehr_id", "ehr_version", "action",
               "state", "written_at"),
    "audit_events": ("seq", "at", "actor", "action", "source", "record_id",
                     "record_version_id", "job_id", "state_from", "state_to", "detail", "mac"),
    "specialists": ("specialist_id", "payload", "updated_at"),
    "consents": ("source", "participant_id", "status", "consent_id", "updated_by",
                 "updated_at"),
    "links": ("kind", "key", "ehr_id", "linked_by", "linked_at"),
}
SEQUENCES = {"record_versions": "id", "jobs": "id", "ledger": "id", "audit_events": "seq"}


def _sqlite_value(value: Any) -> Any:
    if isinstance(value, datetime):  # SQLAlchemy's SQLite storage format (naive UTC)
        return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
    if isinstance(value, bool):
        return int(value)
    return value


class Writer:
    """Rows into one database: ``executemany`` (SQLite) or ``COPY`` (PostgreSQL)."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.dialect = engine.dialect.name
        self.raw = engine.raw_connection()
        self.conn = self.raw.driver_connection
        if self.dialect == "sqlite":
            self.conn.rollback()
            self.conn.isolation_level = None  # BEGIN/COMMIT written out below
            self.conn.execute("PRAGMA synchronous=OFF")

    def write(self, table: str, rows: Iterable[tuple[Any, ...]]) -> int:
        columns = COLUMNS[table]
        count = 0
        if self.dialect == "sqlite":
            sql = (f"INSERT INTO {table} ({', '.join(columns)}) "
                   f"VALUES ({', '.join('?' * len(columns))})")
            self.conn.execute("BEGIN")
            batch = [tuple(_sqlite_value(v) for v in row) for row in rows]
            self.conn.executemany(sql, batch)
            self.conn.execute("COMMIT")
            return len(batch)
        with self.conn.cursor() as cur, \
                cur.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
                count += 1
        self.conn.commit()
        return count

    def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        if self.dialect == "sqlite":
            self.conn.execute(sql, tuple(params))
            return
        with self.conn.cursor() as cur:
            cur.execute(sql.replace("?", "%s"), tuple(params))
        self.conn.commit()

    def finish(self) -> None:
        """Sequences past the seeded ids (PostgreSQL), statistics as a deployment has them,
        and the load written out (a checkpoint), so that what is measured next is the
        store, not the bulk load's write-back."""
        if self.dialect == "postgresql":
            for table, column in SEQUENCES.items():
                self.execute(f"SELECT setval(pg_get_serial_sequence('{table}', '{column}'), "
                             f"(SELECT coalesce(max({column}), 1) FROM {table}))")
            self.conn.autocommit = True
            with self.conn.cursor() as cur:
                cur.execute("VACUUM ANALYZE")
                with contextlib.suppress(Exception):  # needs pg_checkpoint or a superuser
                    cur.execute("CHECKPOINT")
            self.conn.autocommit = False
        else:
            self.conn.execute("PRAGMA synchronous=FULL")
            self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self.raw.close()
