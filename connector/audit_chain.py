"""The audit chain: each row's MAC over its content and the previous row's MAC.

``mac = HMAC-SHA256(key, prev_mac || canonical(row))``; :func:`append` takes the
next sequence numbers from the locked ``audit_chain_head`` row in the caller's
transaction, and :func:`iter_rows` reads the rows back in sequence order, in
short batches, narrowed as the audit page narrows them. Part of
:mod:`connector.audit` (which re-exports every name); imports neither the store
nor the CLI (the store imports this module).
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

from connector.errors import ConnectorError

if TYPE_CHECKING:
    from sqlalchemy import Connection, Engine, Select

# SQLAlchemy is imported where it is used: the CLI registers `peersync audit`
# at start-up, and `peersync --help` or `map` should not pay for it.

GENESIS_MAC = "0" * 64
HEAD_ID = 1

# The content a MAC covers, in this order (the JSON is sorted anyway).
CONTENT_COLUMNS = (
    "seq",
    "at",
    "actor",
    "action",
    "source",
    "record_id",
    "record_version_id",
    "job_id",
    "state_from",
    "state_to",
    "detail",
)
EXPORT_COLUMNS = (*CONTENT_COLUMNS, "mac")

BATCH_ROWS = 2000


class AuditError(ConnectorError):
    """The audit chain cannot be appended to (its head row is missing). Not retry-safe."""


# -- the chain ------------------------------------------------------------------


def utc_iso(value: datetime) -> str:
    if value.tzinfo is None:  # SQLite hands back naive times; everything written is UTC
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def _json_value(value: Any) -> Any:
    """``value`` exactly as it comes back from a JSON column (tuples become lists...)."""
    if value is None:
        return None
    return json.loads(json.dumps(value, sort_keys=True, allow_nan=False))


def canonical(row: Mapping[str, Any]) -> bytes:
    """The bytes a row's MAC covers: its content columns as sorted, compact, ASCII JSON."""
    doc: dict[str, Any] = {}
    for name in CONTENT_COLUMNS:
        value = row.get(name)
        if name == "at":
            value = utc_iso(value) if value is not None else None
        elif name in ("seq", "record_version_id", "job_id") and value is not None:
            value = int(value)
        doc[name] = value
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), allow_nan=False).encode("ascii")


def _mac_bytes(mac: str | None) -> bytes:
    try:
        return bytes.fromhex(mac or "")
    except ValueError:  # not hex at all: chains to nothing that verifies
        return (mac or "").encode("utf-8", "replace")


def row_mac(key: bytes, prev_mac: str, content: bytes) -> str:
    return hmac.digest(key, _mac_bytes(prev_mac) + content, hashlib.sha256).hex()


def append(conn: Connection, rows: Sequence[Mapping[str, Any]], key: bytes) -> None:
    """Append ``rows`` to the chain in the caller's transaction.

    Each row holds the content columns but ``seq`` (``at`` defaults to now).
    Sequence numbers come from the head row, locked first, so two transactions
    can never take the same ones or chain onto the same predecessor.
    """
    if not rows:
        return  # and take no lock
    from sqlalchemy import insert, select, update

    from connector.schema import audit_chain_head, audit_events

    head = conn.execute(
        select(audit_chain_head.c.last_seq, audit_chain_head.c.last_mac)
        .where(audit_chain_head.c.id == HEAD_ID)
        .with_for_update()  # SQLite: no-op; the write transaction already holds the lock
    ).first()
    if head is None:
        raise AuditError("the audit chain head is missing: run `peersync db upgrade`")
    seq, mac = int(head.last_seq), str(head.last_mac)
    values: list[dict[str, Any]] = []
    now = datetime.now(UTC)
    for row in rows:
        seq += 1
        at = row.get("at") or now
        item = {
            "seq": seq,
            "at": at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC),
            "actor": row["actor"],
            "action": row["action"],
            "detail": _json_value(row.get("detail")),
        }
        for name in ("source", "record_id", "record_version_id", "job_id", "state_from",
                     "state_to"):
            item[name] = row.get(name)
        mac = row_mac(key, mac, canonical(item))
        item["mac"] = mac
        values.append(item)
    conn.execute(insert(audit_events), values)
    conn.execute(
        update(audit_chain_head)
        .where(audit_chain_head.c.id == HEAD_ID)
        .values(last_seq=seq, last_mac=mac)
    )


# -- reading --------------------------------------------------------------------


def read_head(engine: Engine) -> tuple[int, str] | None:
    from sqlalchemy import select

    from connector.schema import audit_chain_head

    with engine.connect() as conn:
        row = conn.execute(
            select(audit_chain_head.c.last_seq, audit_chain_head.c.last_mac).where(
                audit_chain_head.c.id == HEAD_ID
            )
        ).first()
    return (int(row.last_seq), str(row.last_mac)) if row else None


class AuditFilter(Protocol):
    """The audit page's filters (connector.reports.AuditQuery has the same shape)."""

    @property
    def since(self) -> datetime | None: ...  # at or after
    @property
    def until(self) -> datetime | None: ...  # before
    @property
    def actor(self) -> str | None: ...  # exact, or a prefix ending in "*" or ":"
    @property
    def record_id(self) -> str | None: ...
    @property
    def outcome(self) -> str | None: ...  # a state reached (state_to) or an action


@dataclass(frozen=True)
class RowFilter:
    """An :class:`AuditFilter` for callers without the web app's query (the CLI)."""

    since: datetime | None = None
    until: datetime | None = None
    actor: str | None = None
    record_id: str | None = None
    outcome: str | None = None

    def used(self) -> list[str]:
        return used_filters(self)


def used_filters(where: AuditFilter) -> list[str]:
    """The names of the filters set (never their values: a typed value may be anything)."""
    names = ("since", "until", "actor", "record_id", "outcome")
    return [name for name in names if getattr(where, name) not in (None, "")]


def as_utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _filtered(query: Select[Any], where: AuditFilter) -> Select[Any]:
    """``query`` narrowed as the audit page narrows its rows (connector.reports)."""
    from sqlalchemy import or_

    from connector.schema import audit_events

    column = audit_events.c
    if where.since is not None:
        query = query.where(column.at >= as_utc(where.since))
    if where.until is not None:
        query = query.where(column.at < as_utc(where.until))
    actor = (where.actor or "").strip()
    if actor.endswith(("*", ":")):
        prefix = actor[:-1] if actor.endswith("*") else actor
        escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        query = query.where(column.actor.like(escaped + "%", escape="\\"))
    elif actor:
        query = query.where(column.actor == actor)
    if where.record_id:
        query = query.where(column.record_id == where.record_id)
    if where.outcome:
        query = query.where(or_(column.state_to == where.outcome,
                                column.action == where.outcome))
    return query


def iter_rows(
    engine: Engine,
    *,
    after_seq: int = 0,
    upto_seq: int | None = None,
    since: datetime | None = None,
    where: AuditFilter | None = None,
    batch_size: int = BATCH_ROWS,
) -> Iterator[dict[str, Any]]:
    """Audit rows in sequence order, read in short batches (never all in memory)."""
    from sqlalchemy import select

    from connector.schema import audit_events

    last = after_seq
    while True:
        query = select(audit_events).where(audit_events.c.seq > last)
        if upto_seq is not None:
            query = query.where(audit_events.c.seq <= upto_seq)
        if since is not None:
            query = query.where(audit_events.c.at >= since)
        if where is not None:
            query = _filtered(query, where)
        with engine.connect() as conn:
            result = conn.execute(query.order_by(audit_events.c.seq).limit(batch_size))
            names = tuple(result.keys())
            batch = [dict(zip(names, row, strict=True)) for row in result]
        if not batch:
            return
        yield from batch
        last = batch[-1]["seq"]
