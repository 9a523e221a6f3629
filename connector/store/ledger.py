"""The write ledger (our identifier -> EHR id/version), links (our key -> EHR id), and
the look-up matches workers share (a search's unique answer, for a while)."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import timedelta
from typing import Any

from sqlalchemy import (
    Connection,
    insert,
    select,
    tuple_,
    update,
)

from connector.schema import (
    ehr_matches,
    ledger,
    links,
)
from connector.store.base import Job, LedgerEntry, utcnow
from connector.store.engine import StoreCore


class LedgerMixin(StoreCore):
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

    def ledger_add_many(self, conn: Connection, entries: Sequence[dict[str, Any]]) -> None:
        """Many :meth:`ledger_add` rows (its keyword arguments, each) in one statement."""
        if not entries:
            return
        now = utcnow()
        rows = []
        for e in entries:
            job: Job | None = e.get("job")
            rows.append({
                "record_version_id": job.record_version_id if job else None,
                "source": job.source if job else None,
                "record_id": job.record_id if job else None,
                "resource_type": e["resource_type"], "identifier_system": e["system"],
                "identifier_value": e["value"], "ehr_id": e["ehr_id"],
                "ehr_version": e["ehr_version"], "action": e["action"],
                "state": e.get("state", "confirmed"), "written_at": now,
            })
        conn.execute(insert(ledger), rows)

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

    def ledger_latest_many(
        self, keys: Sequence[tuple[str, str, str]]
    ) -> dict[tuple[str, str, str], LedgerEntry | None]:
        """:meth:`ledger_latest` of each (type, system, value), in one query per 300 keys."""
        found: dict[tuple[str, str, str], LedgerEntry | None] = dict.fromkeys(keys)
        wanted = list(found)
        columns = tuple_(ledger.c.resource_type, ledger.c.identifier_system,
                         ledger.c.identifier_value)
        with self.engine.connect() as conn:
            for start in range(0, len(wanted), 300):
                rows = conn.execute(
                    select(ledger).where(columns.in_(wanted[start:start + 300]))
                    .order_by(ledger.c.id)
                )
                for row in rows:  # oldest first: the last one seen is the latest
                    found[(row.resource_type, row.identifier_system,
                           row.identifier_value)] = _ledger_entry(row)
        return found

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

    # -- matches shared between workers ---------------------------------------

    def shared_matches(self, resource_type: str, queries: Collection[str], *,
                       max_age_s: float) -> dict[str, str]:
        """Of these searches (SHA-256 of the query), those some worker found one match
        for in the last ``max_age_s`` seconds: query hash -> EHR id. One query per call."""
        if not queries or max_age_s <= 0:
            return {}
        since = utcnow() - timedelta(seconds=max_age_s)
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(ehr_matches.c.query_sha256, ehr_matches.c.ehr_id).where(
                    ehr_matches.c.resource_type == resource_type,
                    ehr_matches.c.query_sha256.in_(list(queries)),
                    ehr_matches.c.found_at >= since,
                )
            ).all()
        return {row.query_sha256: row.ehr_id for row in rows}

    def share_matches(self, resource_type: str, found: dict[str, str]) -> None:
        """Keep searches' unique matches (query SHA-256 -> EHR id) for the other workers:
        one upsert, its rows in key order (two workers sharing at once never lock the
        same rows in opposite orders, nor both insert one key)."""
        if not found:
            return
        from sqlalchemy.dialects import postgresql, sqlite

        upsert = postgresql.insert if self.dialect == "postgresql" else sqlite.insert
        now = utcnow()
        rows = [{"resource_type": resource_type, "query_sha256": query, "ehr_id": ehr_id,
                 "found_at": now} for query, ehr_id in sorted(found.items())]
        statement: Any = upsert(ehr_matches).values(rows)
        statement = statement.on_conflict_do_update(
            index_elements=[ehr_matches.c.resource_type, ehr_matches.c.query_sha256],
            set_={"ehr_id": statement.excluded.ehr_id, "found_at": statement.excluded.found_at})
        with self.begin(audited=False) as conn:  # cache rows: no audit event
            conn.execute(statement)


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
