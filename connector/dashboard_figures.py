"""The dashboard's figures: states, queue, last sync, oldest waiting record, synced per day.

Each figure is an index read (migration 0007), however large the store: the
counts by state from the state index (all but the synced jobs: they are the
rest), the last sync and the days' syncs from the ``synced_at`` index (counted
in the database, no row fetched), the oldest waiting record from one probe of
the (state, created_at) index per waiting state.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from sqlalchemy import and_, case, func, select

from connector.report_rows import aware, row_dict
from connector.schema import jobs
from connector.states import ALL_STATES, WAITING_STATES, JobState

if TYPE_CHECKING:
    from connector.store import Store

QUEUED_STATES = (
    JobState.PENDING.value,
    JobState.IN_FLIGHT.value,
    JobState.RETRY_SCHEDULED.value,
    JobState.UNKNOWN.value,
)
FAILED_STATES = (JobState.NEEDS_ATTENTION.value,)


@dataclass
class Dashboard:
    counts: dict[str, int]
    queue_depth: int
    needs_attention: int
    waiting: int
    last_synced_at: datetime | None
    oldest_waiting: dict[str, Any] | None
    synced_per_day: list[tuple[date, int]] = field(default_factory=list)


def state_counts(store: Store) -> dict[str, int]:
    """Jobs per state: :meth:`Store.counts_by_state`'s figures, in one statement that
    does not walk the synced jobs (nearly all of a large store's).

    The table's row count (SQLite counts a B-tree's cells without reading them)
    and each other state's count from the (state, id) index; ``synced`` is the
    rest, as every job is in one of :data:`ALL_STATES`.
    """
    others = [state for state in ALL_STATES if state != JobState.SYNCED.value]
    total = select(func.count()).select_from(jobs).scalar_subquery()
    each = [select(func.count()).select_from(jobs).where(jobs.c.state == state)
            .scalar_subquery() for state in others]
    with store.engine.connect() as conn:
        row = conn.execute(select(total, *each)).one()
    counts = dict.fromkeys(ALL_STATES, 0)
    counts.update({state: int(n) for state, n in zip(others, row[1:], strict=True)})
    counts[JobState.SYNCED.value] = int(row[0]) - sum(counts.values())
    return counts


def dashboard(store: Store, *, tz: ZoneInfo, days: int = 14,
              now: datetime | None = None) -> Dashboard:
    counts = state_counts(store)
    now = now or datetime.now(UTC)
    waiting = sorted(s.value for s in WAITING_STATES)
    with store.engine.connect() as conn:
        last = conn.execute(select(func.max(jobs.c.synced_at))).scalar_one_or_none()
        # the oldest of each waiting state's oldest (one index probe each), not a sort of all
        oldest = min((row for state in waiting for row in conn.execute(
            select(jobs.c.id, jobs.c.source, jobs.c.record_id, jobs.c.state, jobs.c.reason,
                   jobs.c.created_at)
            .where(jobs.c.state == state)
            .order_by(jobs.c.created_at, jobs.c.id).limit(1))),
            key=lambda row: (aware(row.created_at), row.id), default=None)
    return Dashboard(
        counts=counts,
        queue_depth=sum(counts[s] for s in QUEUED_STATES),
        needs_attention=sum(counts[s] for s in FAILED_STATES),
        waiting=sum(counts[s] for s in waiting),
        last_synced_at=aware(last),
        oldest_waiting=row_dict(oldest._mapping) if oldest else None,
        synced_per_day=synced_per_day(store, tz=tz, days=days, now=now),
    )


def synced_per_day(store: Store, *, tz: ZoneInfo, days: int = 14,
                   now: datetime | None = None) -> list[tuple[date, int]]:
    """Record versions that reached the EHR per local day, the last ``days`` days, oldest first.

    One query counts each local day between its midnights (in UTC, so days of 23 or
    25 hours count right), over the ``synced_at`` index: no row is fetched.
    """
    now = now or datetime.now(UTC)
    today = now.astimezone(tz).date()
    first = today - timedelta(days=days - 1)
    bounds = [datetime.combine(first + timedelta(days=i), time.min, tz).astimezone(UTC)
              for i in range(days + 1)]
    counts = [func.count(case((and_(jobs.c.synced_at >= lo, jobs.c.synced_at < hi), 1)))
              for lo, hi in itertools.pairwise(bounds)]
    with store.engine.connect() as conn:
        row = conn.execute(select(*counts).where(jobs.c.synced_at >= bounds[0],
                                                 jobs.c.synced_at < bounds[-1])).one()
    return [(first + timedelta(days=i), int(row[i] or 0)) for i in range(days)]
