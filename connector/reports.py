"""Read-only views of the store for the web app, the JSON API and ``/metrics``.

Listings, a record's history, the waiting lists, the dashboard's figures,
documentation time per specialist and week, audit-log pages and metrics. Each
function reads the store's tables and returns plain dicts and dataclasses;
none writes. Every change still goes through :class:`connector.store.Store`.

Times come back timezone-aware in UTC (SQLite hands back naive ones);
grouping by day or week happens here, in the agency's time zone, the same way
on SQLite and PostgreSQL.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from sqlalchemy import Select, and_, case, func, literal, or_, select

# the dashboard and the records listing live in modules of their own; imported from here too
from connector.dashboard_figures import FAILED_STATES as FAILED_STATES
from connector.dashboard_figures import QUEUED_STATES as QUEUED_STATES
from connector.dashboard_figures import Dashboard as Dashboard
from connector.dashboard_figures import dashboard as dashboard
from connector.dashboard_figures import state_counts as state_counts
from connector.dashboard_figures import synced_per_day as synced_per_day
from connector.record_listing import RecordQuery as RecordQuery
from connector.record_listing import RecordsPage as RecordsPage
from connector.record_listing import count_records as count_records
from connector.record_listing import filter_choices as filter_choices
from connector.record_listing import list_records as list_records
from connector.record_listing import records_page as records_page
from connector.report_rows import aware, like_pattern, row_dict, utc
from connector.schema import audit_events, consents, jobs, record_versions, specialists
from connector.states import ALL_STATES, JobState

if TYPE_CHECKING:
    from connector.store import Store

rv = record_versions

# Seconds from a record version's acceptance to its arrival in the EHR.
LATENCY_BUCKETS = (1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0, 21600.0, 86400.0)


# -- records (the listing: connector.record_listing) ----------------------------------


@dataclass
class RecordDetail:
    job: dict[str, Any]  # the job and its record version (payload: PHI, for who may see it)
    outcome_text: str | None  # the EHR's OperationOutcome text of the last attempt (admins)
    versions: list[dict[str, Any]]  # every version of this record, oldest first
    events: list[dict[str, Any]]  # this job's audit events, oldest first

    @property
    def attempts(self) -> list[dict[str, Any]]:
        """The job's attempts: each claim and the state it ended in."""
        out: list[dict[str, Any]] = []
        claimed: dict[str, Any] | None = None
        for event in self.events:
            if event["action"] == "job.claimed":
                claimed = event
            elif event["action"] == "job.state":
                detail = event.get("detail") or {}
                out.append({
                    "at": event["at"],
                    "claimed_at": claimed["at"] if claimed else None,
                    "worker": event["actor"],
                    "state": event["state_to"],
                    "mode": detail.get("mode"),
                    "status": detail.get("status"),
                    "error": detail.get("error"),
                    "reason": detail.get("reason"),
                    "outcome_codes": detail.get("outcome_codes") or [],
                    "resources": detail.get("resources") or [],
                    "next_attempt_at": detail.get("next_attempt_at"),
                    # what this EHR could not carry (not a failure), and how Part 2 travelled
                    "omitted": detail.get("omitted") or [],
                    "part2_form": detail.get("part2_form"),
                    "preset": detail.get("preset"),
                })
                claimed = None
        return out


def record_detail(store: Store, job_id: int) -> RecordDetail | None:
    query = select(jobs, rv.c.participant_id, rv.c.specialist_id, rv.c.note_id,
                   rv.c.note_version, rv.c.status, rv.c.part2, rv.c.start_at,
                   rv.c.documentation_minutes, rv.c.payload, rv.c.received_at,
                   rv.c.received_by, rv.c.content_hash).join(
        rv, rv.c.id == jobs.c.record_version_id).where(jobs.c.id == job_id)
    with store.engine.connect() as conn:
        row = conn.execute(query).first()
        if row is None:
            return None
        job = row_dict(row._mapping)
        versions = [row_dict(r._mapping) for r in conn.execute(
            select(jobs.c.id, jobs.c.state, jobs.c.created_at, jobs.c.synced_at,
                   rv.c.note_version, rv.c.status, rv.c.content_hash)
            .join(rv, rv.c.id == jobs.c.record_version_id)
            .where(jobs.c.source == job["source"], jobs.c.record_id == job["record_id"])
            .order_by(jobs.c.id))]
        # every event of a job carries its source and record id (Store.audit): the
        # (source, record_id) index finds them among a large log; job_id picks this version's
        events = [row_dict(r._mapping) for r in conn.execute(
            select(audit_events).where(audit_events.c.source == job["source"],
                                       audit_events.c.record_id == job["record_id"],
                                       audit_events.c.job_id == job_id)
            .order_by(audit_events.c.seq))]
    outcome_text = job.pop("outcome_text", None)
    return RecordDetail(job=job, outcome_text=outcome_text, versions=versions, events=events)


def record_states(store: Store, source: str, record_ids: Sequence[str]
                  ) -> dict[str, list[dict[str, Any]]]:
    """Every version's job of these records of one source, oldest first (the JSON API)."""
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    if not record_ids:
        return out
    query = (select(jobs.c.id, jobs.c.record_id, jobs.c.state, jobs.c.reason, jobs.c.attempts,
                    jobs.c.created_at, jobs.c.updated_at, jobs.c.synced_at,
                    rv.c.note_version, rv.c.content_hash)
             .join(rv, rv.c.id == jobs.c.record_version_id)
             .where(jobs.c.source == source, jobs.c.record_id.in_(list(set(record_ids))))
             .order_by(jobs.c.id))
    with store.engine.connect() as conn:
        for row in conn.execute(query):
            out[row.record_id].append(row_dict(row._mapping))
    return out


# -- waiting and held records ---------------------------------------------------------


def waiting_participants(store: Store) -> list[dict[str, Any]]:
    """Participants whose records wait for an EHR Patient, with their latest record."""
    query = (
        select(rv.c.source, rv.c.participant_id, func.count().label("records"),
               func.min(rv.c.start_at).label("first_start"),
               func.max(rv.c.id).label("latest_version"),
               func.max(jobs.c.reason).label("reason"))
        .join(rv, rv.c.id == jobs.c.record_version_id)
        .where(jobs.c.state == JobState.WAITING_PATIENT.value)
        .group_by(rv.c.source, rv.c.participant_id)
        .order_by(func.min(rv.c.start_at))
    )
    with store.engine.connect() as conn:
        return [row_dict(row._mapping) for row in conn.execute(query)]


def waiting_specialists(store: Store) -> list[dict[str, Any]]:
    """Staff ids whose records wait for an EHR Practitioner, with the name known for them."""
    query = (
        select(rv.c.specialist_id, func.count().label("records"),
               func.min(rv.c.start_at).label("first_start"),
               func.max(jobs.c.reason).label("reason"))
        .join(rv, rv.c.id == jobs.c.record_version_id)
        .where(jobs.c.state == JobState.WAITING_STAFF.value)
        .group_by(rv.c.specialist_id)
        .order_by(func.min(rv.c.start_at))
    )
    with store.engine.connect() as conn:
        rows = [row_dict(row._mapping) for row in conn.execute(query)]
        if rows:
            known = dict(conn.execute(
                select(specialists.c.specialist_id, specialists.c.payload).where(
                    specialists.c.specialist_id.in_([r["specialist_id"] for r in rows]))
            ).all())
        else:
            known = {}
    for row in rows:
        payload = known.get(row["specialist_id"])
        row["known"] = json.loads(payload) if isinstance(payload, str) else dict(payload or {})
    return rows


def held_records(store: Store, state: JobState, *, limit: int = 500) -> list[dict[str, Any]]:
    """Records waiting in ``state`` with their participant's consent on file."""
    query = (
        select(jobs.c.id, jobs.c.source, jobs.c.record_id, jobs.c.reason, jobs.c.created_at,
               rv.c.participant_id, rv.c.specialist_id, rv.c.start_at, rv.c.part2,
               consents.c.status.label("consent_status"),
               consents.c.updated_at.label("consent_updated"))
        .join(rv, rv.c.id == jobs.c.record_version_id)
        .outerjoin(consents, and_(consents.c.source == rv.c.source,
                                  consents.c.participant_id == rv.c.participant_id))
        .where(jobs.c.state == state.value)
        .order_by(rv.c.source, rv.c.participant_id, rv.c.start_at)
        .limit(limit)
    )
    with store.engine.connect() as conn:
        return [row_dict(row._mapping) for row in conn.execute(query)]


# -- the dashboard: connector.dashboard_figures ------------------------------------------


# -- documentation time ------------------------------------------------------------------


@dataclass
class WeekRow:
    specialist_id: str
    week: str  # ISO week, e.g. "2026-W47"
    week_start: date  # its Monday
    notes: int = 0  # note versions written
    timed: int = 0  # of those, with a documentation time
    minutes: float = 0.0  # minutes spent documenting (timed notes)
    synced: int = 0  # note versions the EHR holds
    saved: float = 0.0  # synced x the profile's re-entry minutes


def iso_week(day: date) -> tuple[str, date]:
    year, week, weekday = day.isocalendar()
    return f"{year}-W{week:02d}", day - timedelta(days=weekday - 1)


def documentation_time(
    store: Store,
    *,
    tz: ZoneInfo,
    reentry_minutes: float,
    since: date,
    until: date,
    specialist_id: str | None = None,
) -> list[WeekRow]:
    """Per specialist and ISO week (in ``tz``) of the encounter: notes, minutes, minutes saved.

    Every note version counts once (an amendment is written, and would be
    re-entered, again). Minutes saved = the versions that reached the EHR x
    ``reentry_minutes``: the hand re-entry each would otherwise have taken.
    ``since`` and ``until`` are local dates, ``until`` included.
    """
    start = datetime.combine(since, datetime.min.time(), tz).astimezone(UTC)
    end = datetime.combine(until + timedelta(days=1), datetime.min.time(), tz).astimezone(UTC)
    query = (
        select(rv.c.specialist_id, rv.c.start_at, rv.c.documentation_minutes,
               (jobs.c.state == JobState.SYNCED.value).label("synced"))
        .join(jobs, jobs.c.record_version_id == rv.c.id)
        .where(rv.c.note_id.is_not(None), rv.c.start_at >= start, rv.c.start_at < end)
    )
    if specialist_id:
        query = query.where(rv.c.specialist_id == specialist_id)
    rows: dict[tuple[str, str], WeekRow] = {}
    with store.engine.connect() as conn:
        for staff, start_at, minutes, synced in conn.execute(query.execution_options(
                yield_per=5000)):
            moment = aware(start_at)
            assert moment is not None
            week, monday = iso_week(moment.astimezone(tz).date())
            row = rows.get((staff, week))
            if row is None:
                row = rows[(staff, week)] = WeekRow(staff, week, monday)
            row.notes += 1
            if minutes is not None:
                row.timed += 1
                row.minutes += float(minutes)
            if synced:
                row.synced += 1
                row.saved += reentry_minutes
    return sorted(rows.values(), key=lambda r: (r.week_start, r.specialist_id))


def weekly_totals(rows: Iterable[WeekRow]) -> list[WeekRow]:
    """The rows summed over specialists, one per week, oldest first."""
    weeks: dict[str, WeekRow] = {}
    for row in rows:
        total = weeks.setdefault(row.week, WeekRow("all", row.week, row.week_start))
        total.notes += row.notes
        total.timed += row.timed
        total.minutes += row.minutes
        total.synced += row.synced
        total.saved += row.saved
    return sorted(weeks.values(), key=lambda r: r.week_start)


# -- the audit log ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AuditQuery:
    since: datetime | None = None
    until: datetime | None = None
    actor: str | None = None  # exact, or a prefix ending in "*" / ":" (e.g. "web:")
    record_id: str | None = None
    outcome: str | None = None  # a state reached (state_to) or an action (login.failed ...)


def _audit_filtered(query: Select[Any], q: AuditQuery) -> Select[Any]:
    if q.since:
        query = query.where(audit_events.c.at >= utc(q.since))
    if q.until:
        query = query.where(audit_events.c.at < utc(q.until))
    if q.actor:
        actor = q.actor.strip()
        if actor.endswith("*"):
            query = query.where(audit_events.c.actor.like(
                like_pattern(actor[:-1])[1:], escape="\\"))
        elif actor.endswith(":"):
            query = query.where(audit_events.c.actor.like(like_pattern(actor)[1:], escape="\\"))
        else:
            query = query.where(audit_events.c.actor == actor)
    if q.record_id:
        query = query.where(audit_events.c.record_id == q.record_id)
    if q.outcome:
        query = query.where(or_(audit_events.c.state_to == q.outcome,
                                audit_events.c.action == q.outcome))
    return query


def audit_page(store: Store, q: AuditQuery, *, limit: int = 100, before_seq: int | None = None
               ) -> list[dict[str, Any]]:
    """Audit events matching ``q``, newest first, older than ``before_seq``."""
    query = _audit_filtered(select(audit_events), q)
    if before_seq is not None:
        query = query.where(audit_events.c.seq < before_seq)
    query = query.order_by(audit_events.c.seq.desc()).limit(limit)
    with store.engine.connect() as conn:
        return [row_dict(row._mapping) for row in conn.execute(query)]


def audit_actions(store: Store) -> list[str]:
    with store.engine.connect() as conn:
        return list(conn.execute(select(audit_events.c.action).distinct()
                                 .order_by(audit_events.c.action)).scalars())


# -- metrics ---------------------------------------------------------------------------


@dataclass
class Metrics:
    records_by_state: dict[str, int]
    attempts_by_outcome: dict[str, int]
    latency_buckets: list[tuple[float, int]]  # (upper bound in s, cumulative count)
    latency_sum: float
    latency_count: int


def _seconds_between(dialect: str, later: Any, earlier: Any) -> Any:
    if dialect == "postgresql":
        return func.extract("epoch", later - earlier)
    if dialect == "sqlite":
        return (func.julianday(later) - func.julianday(earlier)) * 86400.0
    return func.timestampdiff(literal("SECOND"), earlier, later)  # pragma: no cover


def metrics(store: Store) -> Metrics:
    seconds = _seconds_between(store.dialect, jobs.c.synced_at, jobs.c.created_at)
    bucket_columns = [
        func.coalesce(func.sum(case((seconds <= bound, 1), else_=0)), 0).label(f"b{i}")
        for i, bound in enumerate(LATENCY_BUCKETS)
    ]
    with store.engine.connect() as conn:
        attempts = dict.fromkeys(ALL_STATES, 0)
        for state, count in conn.execute(
            select(audit_events.c.state_to, func.count())
            .where(audit_events.c.action == "job.state")
            .group_by(audit_events.c.state_to)
        ):
            if state:
                attempts[state] = int(count)
        latency = conn.execute(
            select(func.count(), func.coalesce(func.sum(seconds), 0.0), *bucket_columns)
            .where(jobs.c.synced_at.is_not(None))
        ).one()
    count, total = int(latency[0]), float(latency[1] or 0.0)
    buckets = [(bound, int(latency[2 + i] or 0)) for i, bound in enumerate(LATENCY_BUCKETS)]
    return Metrics(
        records_by_state=store.counts_by_state(),
        attempts_by_outcome=attempts,
        latency_buckets=buckets,
        latency_sum=max(0.0, total),
        latency_count=count,
    )
