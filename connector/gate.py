"""The EHR gate: every worker backs off together while the EHR is unreachable.

One row in the store (``ehr_gate``, id 1), shared by every worker on every host:

- **closing**: a send that finds the EHR down (nothing reached it:
  :class:`~connector.errors.EhrUnavailable`) or a 429 with ``Retry-After``
  closes the gate at once; 5xx answers and timeouts close it after
  ``[sync] outage_after_failures`` of them in a row (one stray 503 pauses
  nobody). Closed, it holds ``closed_until``: no worker claims before then.
- **probing**: at ``closed_until`` one worker takes the probe in one
  conditional UPDATE (the one whose UPDATE matched; every other worker finds
  ``closed_until`` moved on), claims a single record and sends it. The next
  probe is ``[sync] probe_every_s`` later, doubling per failed probe up to
  ``probe_max_s`` (and never before a ``Retry-After``).
- **opening**: when the EHR answers again the gate opens and every record
  waiting on a scheduled retry is due at once (``next_attempt_at`` = now)
  rather than each sitting out its own backoff.

Closing and opening append an audit event (``ehr.unreachable``,
``ehr.reachable``); no record data, only the error's class and status. Every
write here takes the audit chain head first (``Store.begin()``), as every other
writer does, so the gate row never joins a lock cycle.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, and_, func, or_, select, update

from connector.errors import (
    ConnectorError,
    EhrHttpError,
    EhrOutcomeUnknown,
    EhrTransient,
    EhrUnavailable,
)
from connector.schema import ehr_gate, jobs
from connector.states import JobState

if TYPE_CHECKING:
    from connector.config import SyncConfig
    from connector.store import Store

GATE_ID = 1
OPEN, CLOSED = "open", "closed"
# The records an outage holds up: not yet in the EHR, to be sent when it answers.
WAITING = (JobState.PENDING.value, JobState.RETRY_SCHEDULED.value, JobState.UNKNOWN.value,
           JobState.IN_FLIGHT.value)


def _aware(value: datetime | None) -> datetime | None:
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class Gate:
    """The gate as last read."""

    is_open: bool = True
    since: datetime | None = None  # unreachable since
    closed_until: datetime | None = None
    failures: int = 0
    probes: int = 0
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class Admission:
    """May this worker claim now? ``probe``: yes, one record, to test the EHR."""

    kind: str  # open | probe | closed
    until: datetime | None = None  # closed: not before this

    @property
    def closed(self) -> bool:
        return self.kind == CLOSED


def outage_kind(error: ConnectorError) -> str | None:
    """How a failure bears on the gate.

    ``down``: nothing reached the EHR (close now); ``throttled``: a 429 with
    Retry-After (close until then); ``flaky``: a 5xx, another 429 or a lost
    answer (close after a few in a row); None: the EHR answered (a 4xx) or the
    failure is not the EHR's.
    """
    if isinstance(error, EhrUnavailable):
        return "down"
    if isinstance(error, EhrTransient):
        if error.status == 429 and error.retry_after is not None:
            return "throttled"
        return "flaky"
    if isinstance(error, EhrOutcomeUnknown):
        return "flaky"
    return None


def probe_interval(probes: int, cfg: SyncConfig) -> float:
    """Seconds before the next probe after ``probes`` probes in this outage."""
    return float(min(cfg.probe_max_s, cfg.probe_every_s * 2 ** min(max(0, probes), 32)))


def _row(conn: Connection, *, lock: bool = False) -> Any:
    query = select(ehr_gate).where(ehr_gate.c.id == GATE_ID)
    if lock:
        query = query.with_for_update()  # SQLite: the write transaction holds the lock already
    return conn.execute(query).first()


def _gate(row: Any) -> Gate:
    if row is None:
        return Gate()
    return Gate(is_open=row.state != CLOSED, since=_aware(row.since),
                closed_until=_aware(row.closed_until), failures=int(row.failures),
                probes=int(row.probes), reason=row.reason)


def read(store: Store) -> Gate:
    with store.engine.connect() as conn:
        return _gate(_row(conn))


def waiting_count(store: Store) -> int:
    """Records the EHR has not taken yet (pending, in flight, retry scheduled, unknown)."""
    with store.engine.connect() as conn:
        return int(conn.execute(
            select(func.count()).select_from(jobs).where(jobs.c.state.in_(WAITING))
        ).scalar_one())


def admit(store: Store, *, worker: str, now: datetime, cfg: SyncConfig) -> Admission:
    """Check the gate before claiming; at most one worker gets each probe."""
    gate = read(store)
    if gate.is_open:
        return Admission(OPEN)
    if gate.closed_until is not None and gate.closed_until > now:
        return Admission(CLOSED, gate.closed_until)
    with store.begin() as conn:
        row = _row(conn, lock=True)
        current = _gate(row)
        if current.is_open:
            return Admission(OPEN)
        if current.closed_until is not None and current.closed_until > now:
            return Admission(CLOSED, current.closed_until)
        until = now + timedelta(seconds=probe_interval(current.probes, cfg))
        taken = conn.execute(
            update(ehr_gate)
            .where(ehr_gate.c.id == GATE_ID, ehr_gate.c.state == CLOSED,
                   or_(ehr_gate.c.closed_until.is_(None), ehr_gate.c.closed_until <= now))
            .values(closed_until=until, probes=ehr_gate.c.probes + 1, probe_owner=worker,
                    updated_at=now)
        ).rowcount
        if not taken:
            return Admission(CLOSED, until)
        # The probe needs a record to send: the one whose retry comes first is due now.
        first = (select(jobs.c.id)
                 .where(jobs.c.state == JobState.RETRY_SCHEDULED.value)
                 .order_by(jobs.c.next_attempt_at, jobs.c.id).limit(1).scalar_subquery())
        conn.execute(update(jobs).where(jobs.c.id == first, jobs.c.next_attempt_at > now)
                     .values(next_attempt_at=now))
    return Admission("probe")


def record_failure(store: Store, conn: Connection, error: ConnectorError, *, actor: str,
                   now: datetime, cfg: SyncConfig) -> bool:
    """Count an EHR failure in the caller's transaction; True when it closed the gate."""
    kind = outage_kind(error)
    if kind is None:
        return False
    row = _row(conn, lock=True)
    if row is None:
        return False
    gate = _gate(row)
    failures = gate.failures + 1
    retry_after = error.retry_after if isinstance(error, EhrHttpError) else None
    # A 429's Retry-After is the server's own word on when to come back; else one interval.
    pause = (float(retry_after) if kind == "throttled" and retry_after is not None
             else probe_interval(gate.probes, cfg))
    pause = min(pause, 3600.0)
    until = now + timedelta(seconds=pause)
    reason = type(error).__name__ + (f" {error.status}" if isinstance(error, EhrHttpError) else "")
    if gate.is_open:
        closes = kind in ("down", "throttled") or failures >= cfg.outage_after_failures
        values: dict[str, Any] = {"failures": failures, "reason": reason, "updated_at": now}
        if closes:
            values.update(state=CLOSED, since=now, closed_until=until, probes=0,
                          probe_owner=None)
        conn.execute(update(ehr_gate).where(ehr_gate.c.id == GATE_ID).values(**values))
        if closes:
            store.audit(conn, actor=actor, action="ehr.unreachable", at=now,
                        detail={"error": reason, "closed_until": until.isoformat()})
        return closes
    # Already closed (a probe failed, or a batch sent before it closed): push the next probe on.
    later = until if gate.closed_until is None or until > gate.closed_until else gate.closed_until
    conn.execute(update(ehr_gate).where(ehr_gate.c.id == GATE_ID)
                 .values(failures=failures, reason=reason, closed_until=later, updated_at=now))
    return False


def record_success(store: Store, *, actor: str, now: datetime) -> int:
    """The EHR answered: open the gate and release the records waiting on it.

    Returns how many scheduled retries were made due now (0 when it was open).
    A read first, so that a healthy sync writes nothing here.
    """
    gate = read(store)
    if gate.is_open and gate.failures == 0:
        return 0
    with store.begin() as conn:
        current = _gate(_row(conn, lock=True))
        if current.is_open:
            if current.failures:
                conn.execute(update(ehr_gate).where(ehr_gate.c.id == GATE_ID)
                             .values(failures=0, updated_at=now))
            return 0
        conn.execute(update(ehr_gate).where(ehr_gate.c.id == GATE_ID).values(
            state=OPEN, since=None, closed_until=None, failures=0, probe_owner=None,
            updated_at=now))
        released = conn.execute(
            update(jobs)
            .where(and_(jobs.c.state == JobState.RETRY_SCHEDULED.value,
                        jobs.c.next_attempt_at > now))
            .values(next_attempt_at=now)
        ).rowcount
        outage_s = (now - current.since).total_seconds() if current.since else None
        store.audit(conn, actor=actor, action="ehr.reachable", at=now,
                    detail={"released": released, "probes": current.probes,
                            "unreachable_s": round(outage_s, 1) if outage_s else None})
        return int(released)


def outage_line(store: Store, *, now: datetime | None = None) -> str | None:
    """``EHR unreachable since <time>, N records waiting`` while the gate is closed, else None."""
    gate = read(store)
    if gate.is_open:
        return None
    since = gate.since.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if gate.since \
        else "an unknown time"
    line = f"EHR unreachable since {since}, {waiting_count(store)} records waiting"
    if gate.closed_until is not None:
        left = (gate.closed_until - (now or datetime.now(UTC))).total_seconds()
        line += (f"; next probe in {left:.0f} s" if left > 0 else "; probing now")
    if gate.reason:
        line += f" (last error: {gate.reason})"
    return line
