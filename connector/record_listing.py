"""The records listing (web app's /records/): filters, pages by cursor, counts, filter choices.

Built to stay fast on a large store (issue 9: 200,000 record versions and a
million audit rows; ``scripts/bench.py pages`` measures it):

- pages are keyset pages: ``before`` / ``after`` a job id (newest first), an
  index range, never an OFFSET over the rows already shown; a page number
  (an old link) still works, its OFFSET taken over job ids alone;
- a page's 50 job ids are picked from the indexes first, then only their rows
  are read: a filter matching thousands never reads (or sorts) thousands of rows;
- the error-text search reads only the jobs that have a reason or an EHR
  answer (partial indexes, migration 0007), not every job;
- the filter drop-downs' sources and staff ids come from an index skip-scan
  (one index probe per distinct value), not a DISTINCT over every version;
- the total of a page filtered by state alone is the state's count (read
  once for the page's state counts), not a second COUNT(*); other totals count
  job ids from the indexes, joined to the versions only when a filter needs them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import ColumnElement, Select, func, select, union

from connector.report_rows import like_pattern, row_dict, utc
from connector.schema import jobs, record_versions

if TYPE_CHECKING:
    from connector.store import Store

rv = record_versions


@dataclass(frozen=True, slots=True)
class RecordQuery:
    """Filters for the records listing. Times are bounds on the encounter's start."""

    state: str | None = None
    specialist_id: str | None = None
    source: str | None = None
    since: datetime | None = None  # start >= since
    until: datetime | None = None  # start < until
    text: str | None = None  # in the reason (and, if allowed, the EHR's OperationOutcome text)
    search_outcome_text: bool = True

    @property
    def on_versions(self) -> bool:
        """Whether a filter is on the record version (else the job's columns say it all)."""
        return bool(self.specialist_id or self.since or self.until)

    @property
    def by_state_only(self) -> bool:
        return not (self.on_versions or self.source or self.text)


def _listing() -> Select[Any]:
    return select(
        jobs.c.id,
        jobs.c.source,
        jobs.c.record_id,
        jobs.c.state,
        jobs.c.attempts,
        jobs.c.reason,
        jobs.c.created_at,
        jobs.c.updated_at,
        jobs.c.synced_at,
        jobs.c.record_version_id,
        rv.c.participant_id,
        rv.c.specialist_id,
        rv.c.note_id,
        rv.c.note_version,
        rv.c.status,
        rv.c.part2,
        rv.c.start_at,
        rv.c.documentation_minutes,
    ).join(rv, rv.c.id == jobs.c.record_version_id)


def _text_match(q: RecordQuery) -> ColumnElement[bool]:
    """Jobs whose reason (or EHR answer) contains ``q.text``, case-insensitively.

    ``IS NOT NULL`` changes nothing (NULL matches no pattern) but lets each
    branch read its partial index: only the jobs that have a reason or an answer.
    """
    pattern = like_pattern(q.text or "")
    ids: Any = select(jobs.c.id).where(jobs.c.reason.is_not(None),
                                       jobs.c.reason.ilike(pattern, escape="\\"))
    if q.search_outcome_text:
        ids = union(ids, select(jobs.c.id).where(
            jobs.c.outcome_text.is_not(None), jobs.c.outcome_text.ilike(pattern, escape="\\")))
    return jobs.c.id.in_(ids)


def _filtered(query: Select[Any], q: RecordQuery) -> Select[Any]:
    if q.state:
        query = query.where(jobs.c.state == q.state)
    if q.specialist_id:
        query = query.where(rv.c.specialist_id == q.specialist_id)
    if q.source:
        query = query.where(jobs.c.source == q.source)
    if q.since:
        query = query.where(rv.c.start_at >= utc(q.since))
    if q.until:
        query = query.where(rv.c.start_at < utc(q.until))
    if q.text:
        query = query.where(_text_match(q))
    return query


def _job_ids(q: RecordQuery) -> Select[Any]:
    """The matching job ids, joined to the versions only when a filter needs them."""
    query = select(jobs.c.id)
    if q.on_versions:
        query = query.join(rv, rv.c.id == jobs.c.record_version_id)
    return _filtered(query, q)


def _order_key(q: RecordQuery) -> ColumnElement[int]:
    """The job id, as an expression when the encounter's dates are filtered.

    Dates follow ids (records arrive in time), so walking the id index from the
    newest until 50 matches turn up reads every job newer than the range: for a
    month a year ago, most of the table (PostgreSQL's plan without this, as it
    cannot see the correlation). ``id + 0`` takes the range from its index and
    sorts just those, as SQLite already does.
    """
    return jobs.c.id + 0 if q.since or q.until else jobs.c.id


def list_records(store: Store, q: RecordQuery, *, limit: int = 50, offset: int = 0,
                 before: int | None = None, after: int | None = None
                 ) -> list[dict[str, Any]]:
    """One row per record version (its outbox job), newest first: ids, states, reasons.

    ``before``: jobs older than that id; ``after``: the ``limit`` jobs just newer
    than it (still listed newest first); else ``offset`` rows from the newest.
    The page's job ids are picked first from the indexes alone (no version row is
    read, nor sorted), then only their rows are read.
    """
    ids = _job_ids(q)
    if after is not None:
        ids = ids.where(jobs.c.id > after).order_by(_order_key(q).asc())
    else:
        if before is not None:
            ids = ids.where(jobs.c.id < before)
        ids = ids.order_by(_order_key(q).desc()).offset(offset or None)
    query = (_listing().where(jobs.c.id.in_(ids.limit(limit).scalar_subquery()))
             .order_by(jobs.c.id.desc()))
    with store.engine.connect() as conn:
        return [row_dict(row._mapping) for row in conn.execute(query)]


def count_records(store: Store, q: RecordQuery,
                  by_state: dict[str, int] | None = None) -> int:
    """How many record versions match ``q``; ``by_state``: counts already read, if any."""
    if by_state is not None and q.by_state_only:
        return by_state.get(q.state, 0) if q.state else sum(by_state.values())
    query = _job_ids(q).with_only_columns(func.count(), maintain_column_froms=True)
    with store.engine.connect() as conn:
        return int(conn.execute(query).scalar_one())


def _distinct(column: Any) -> Select[Any]:
    """The column's distinct values in order, one index probe each (a recursive skip-scan)."""
    seen = select(func.min(column).label("value")).cte("seen", recursive=True)
    seen = seen.union_all(
        select(select(func.min(column)).where(column > seen.c.value).scalar_subquery())
        .where(seen.c.value.is_not(None)))
    return select(seen.c.value).where(seen.c.value.is_not(None)).order_by(seen.c.value)


def filter_choices(store: Store) -> tuple[list[str], list[str]]:
    """The sources and the staff ids that have records (for filter drop-downs)."""
    with store.engine.connect() as conn:
        sources = [str(v) for v in conn.execute(_distinct(rv.c.source)).scalars()]
        staff = [str(v) for v in conn.execute(_distinct(rv.c.specialist_id)).scalars()]
    return sources, staff


@dataclass
class RecordsPage:
    rows: list[dict[str, Any]]  # newest first
    newer: dict[str, int] | None  # the query arguments of the newer page's link, if any
    older: dict[str, int] | None  # ... of the older page's link
    total: int | None = None  # how many match, when it came with the page (first pages)


def _first_page(store: Store, q: RecordQuery, limit: int
                ) -> tuple[list[dict[str, Any]], int]:
    """The newest ``limit`` matches and how many match in all, from one pass over them
    (a window count): a text search or a join is not run twice, for the page and its total."""
    # every match is read for the count: by their filter's index, not along the id index
    # (id + 0, as in _order_key: PostgreSQL's plan would walk it whole, expecting to stop early)
    ids = (_job_ids(q).add_columns(func.count().over().label("total"))
           .order_by((jobs.c.id + 0).desc()).limit(limit))
    with store.engine.connect() as conn:
        found = conn.execute(ids).all()
        if not found:
            return [], 0
        rows = conn.execute(_listing().where(jobs.c.id.in_([row[0] for row in found]))
                            .order_by(jobs.c.id.desc())).all()
    return [row_dict(row._mapping) for row in rows], int(found[0][1])


def _any(store: Store, q: RecordQuery, where: ColumnElement[bool], *, upwards: bool) -> bool:
    """Whether a job matching ``q`` and ``where`` exists: the nearest, along the id index
    from the cursor (usually the cursor's own row), not the first the table holds."""
    order = jobs.c.id.asc() if upwards else jobs.c.id.desc()
    with store.engine.connect() as conn:
        return conn.execute(_job_ids(q).where(where).order_by(order).limit(1)).first() \
            is not None


def records_page(store: Store, q: RecordQuery, *, size: int = 50, before: int | None = None,
                 after: int | None = None, page: int = 1) -> RecordsPage:
    """One page of the listing and its neighbours' links (cursors: job ids).

    The first page of a text search or of a filter on the versions carries its
    total too (:func:`_first_page`); other pages leave it to :func:`count_records`.
    """
    total: int | None = None
    if after is None and before is None and page == 1 and (q.text or q.on_versions):
        rows, total = _first_page(store, q, size + 1)
        older_exists, newer_exists = len(rows) > size, False
        rows = rows[:size]
        top, bottom = (rows[0]["id"], rows[-1]["id"]) if rows else (0, 0)
    elif after is not None:
        rows = list_records(store, q, limit=size + 1, after=after)
        newer_exists = len(rows) > size
        rows = rows[1:] if newer_exists else rows
        older_exists = _any(store, q, jobs.c.id <= after, upwards=False)
        top, bottom = (rows[0]["id"], rows[-1]["id"]) if rows else (after, after + 1)
    else:
        if before is not None:
            rows = list_records(store, q, limit=size + 1, before=before)
        else:
            rows = list_records(store, q, limit=size + 1, offset=(page - 1) * size)
        older_exists = len(rows) > size
        rows = rows[:size]
        newer_exists = (_any(store, q, jobs.c.id >= before, upwards=True) if before is not None
                        else page > 1)
        top, bottom = (rows[0]["id"], rows[-1]["id"]) if rows else (
            (before - 1, before) if before is not None else (0, 0))
    newer: dict[str, int] | None = None
    if newer_exists:
        newer = {"after": top} if rows or before is not None else {"page": page - 1}
    return RecordsPage(rows=rows, newer=newer, older={"before": bottom} if older_exists else None,
                       total=total)
