"""The web app's read-only queries, on SQLite and PostgreSQL alike."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from connector.records import EncounterRecord
from connector.reports import (
    AuditQuery,
    RecordQuery,
    audit_page,
    count_records,
    dashboard,
    documentation_time,
    held_records,
    list_records,
    metrics,
    record_detail,
    waiting_participants,
    waiting_specialists,
    weekly_totals,
)
from connector.states import JobState
from tests.conftest import example_dict

NY = ZoneInfo("America/New_York")


def _record(record_id: str, *, start: str, staff: str = "S-17", minutes: float | None = 6,
            note: bool = True) -> EncounterRecord:
    data = example_dict("in-person-session.json")
    data.update(id=record_id, start=start, end=start, specialist={"id": staff})
    if note:
        data["note"] = {"id": f"N-{record_id}", "text": "x"}
        if minutes is not None:
            data["note"]["documentation_minutes"] = minutes
    else:
        data.pop("note")
    return EncounterRecord.from_dict("peer-tool", data)


def _finish(store: Any, states: dict[str, JobState]) -> None:
    for job in store.claim(worker="t", run_id="r", limit=100):
        with store.begin() as conn:
            store.finish(conn, job, states.get(job.record_id, JobState.PENDING), actor="t",
                         reason="412 multiple-matches" if job.record_id in states
                         and states[job.record_id] is JobState.NEEDS_ATTENTION else None,
                         outcome_text="Multiple 50%_matches" if job.record_id in states
                         else None)


def test_documentation_time_by_specialist_and_local_week(store: Any) -> None:
    store.add_records([
        # Sunday 23:30 in New York is Monday 04:30 UTC: it belongs to the Sunday's week
        _record("a", start="2026-11-22T23:30:00-05:00", minutes=10),
        _record("b", start="2026-11-23T09:00:00-05:00", minutes=5),
        _record("c", start="2026-11-23T10:00:00-05:00", minutes=None),
        _record("d", start="2026-11-24T10:00:00-05:00", staff="S-22", minutes=8),
        _record("e", start="2026-11-24T11:00:00-05:00", note=False),
    ], actor="t")
    _finish(store, {"a": JobState.SYNCED, "b": JobState.SYNCED, "d": JobState.NEEDS_ATTENTION})
    rows = documentation_time(store, tz=NY, reentry_minutes=7.0, since=date(2026, 11, 16),
                              until=date(2026, 11, 29))
    summary = {(r.specialist_id, r.week): (r.notes, r.timed, r.minutes, r.synced, r.saved)
               for r in rows}
    assert summary == {
        ("S-17", "2026-W47"): (1, 1, 10.0, 1, 7.0),
        ("S-17", "2026-W48"): (2, 1, 5.0, 1, 7.0),
        ("S-22", "2026-W48"): (1, 1, 8.0, 0, 0.0),
    }
    assert rows[0].week_start == date(2026, 11, 16)
    [w47, w48] = weekly_totals(rows)
    assert (w48.notes, w48.minutes, w48.saved) == (3, 13.0, 7.0)
    only = documentation_time(store, tz=NY, reentry_minutes=7.0, since=date(2026, 11, 23),
                              until=date(2026, 11, 23), specialist_id="S-17")
    assert [(r.week, r.notes) for r in only] == [("2026-W48", 2)]


def test_record_listing_filters(store: Any) -> None:
    store.add_records([
        _record("a", start="2026-11-22T23:30:00-05:00"),
        _record("b", start="2026-11-23T09:00:00-05:00", staff="S-22"),
    ], actor="t")
    _finish(store, {"a": JobState.NEEDS_ATTENTION})
    day = datetime(2026, 11, 22, tzinfo=NY)
    q = RecordQuery(since=day, until=day + timedelta(days=1))
    assert [r["record_id"] for r in list_records(store, q)] == ["a"]
    assert [r["record_id"] for r in list_records(store, RecordQuery(specialist_id="S-22"))] == [
        "b"]
    assert [r["record_id"] for r in list_records(store, RecordQuery(text="MULTIPLE"))] == ["a"]
    # % and _ are matched literally, and the EHR's text only where allowed
    assert count_records(store, RecordQuery(text="50%_m")) == 1
    assert count_records(store, RecordQuery(text="50%_m", search_outcome_text=False)) == 0
    assert count_records(store, RecordQuery(text="5%")) == 0
    assert count_records(store, RecordQuery(state="needs_attention")) == 1
    row = list_records(store, RecordQuery())[0]
    assert row["start_at"].tzinfo is not None
    detail = record_detail(store, row["id"])
    assert detail is not None and detail.outcome_text is None
    failed = record_detail(store, list_records(store, RecordQuery(state="needs_attention"))[0]
                           ["id"])
    assert failed is not None and failed.outcome_text == "Multiple 50%_matches"
    [attempt] = failed.attempts
    assert attempt["state"] == "needs_attention" and attempt["claimed_at"] is not None
    assert record_detail(store, 999) is None


def test_dashboard_and_metrics(store: Any) -> None:
    store.add_records([_record("a", start="2026-11-22T10:00:00-05:00"),
                       _record("b", start="2026-11-22T11:00:00-05:00"),
                       _record("c", start="2026-11-22T12:00:00-05:00")], actor="t")
    _finish(store, {"a": JobState.SYNCED, "b": JobState.WAITING_CONSENT})
    data = dashboard(store, tz=NY)
    assert data.queue_depth == 1 and data.waiting == 1 and data.needs_attention == 0
    assert data.last_synced_at is not None and data.last_synced_at.tzinfo is not None
    assert data.oldest_waiting is not None and data.oldest_waiting["record_id"] == "b"
    assert data.synced_per_day[-1] == (datetime.now(UTC).astimezone(NY).date(), 1)
    assert len(data.synced_per_day) == 14
    m = metrics(store)
    assert m.records_by_state["synced"] == 1 and m.records_by_state["pending"] == 1
    assert m.attempts_by_outcome["synced"] == 1 and m.attempts_by_outcome["pending"] == 1
    assert m.latency_count == 1 and 0 <= m.latency_sum < 60
    assert dict(m.latency_buckets)[60.0] == 1


@pytest.mark.parametrize(("actor", "expected"), [
    ("web:*", {"web:admin", "web:alex"}), ("web:", {"web:admin", "web:alex"}),
    ("web:admin", {"web:admin"}), ("web_*", set()),
])
def test_audit_actor_filter(store: Any, actor: str, expected: set[str]) -> None:
    for who in ("web:admin", "web:alex", "cli:link", "webXadmin"):
        with store.begin() as conn:
            store.audit(conn, actor=who, action="test.event")
    rows = audit_page(store, AuditQuery(actor=actor))
    assert {r["actor"] for r in rows} == expected


def test_waiting_lists(store: Any) -> None:
    named = _record("a", start="2026-11-22T10:00:00-05:00", staff="S-50")
    data = dict(named.raw, specialist={"id": "S-50", "family": "Abara"})
    store.add_records([EncounterRecord.from_dict("peer-tool", data),
                       _record("b", start="2026-11-22T11:00:00-05:00", staff="S-51"),
                       _record("c", start="2026-11-22T12:00:00-05:00"),
                       _record("d", start="2026-11-22T13:00:00-05:00")], actor="t")
    _finish(store, {"a": JobState.WAITING_STAFF, "b": JobState.WAITING_STAFF,
                    "c": JobState.WAITING_PATIENT, "d": JobState.WAITING_CONSENT})
    staff = {r["specialist_id"]: r for r in waiting_specialists(store)}
    assert staff["S-50"]["known"] == {"family": "Abara"} and staff["S-51"]["known"] == {}
    [participant] = waiting_participants(store)
    assert participant["participant_id"] == "P-1001" and participant["records"] == 1
    [held] = held_records(store, JobState.WAITING_CONSENT)
    assert held["record_id"] == "d" and held["consent_status"] is None
