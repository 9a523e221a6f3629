"""The admin pages' queries on a large store (issue 9), on SQLite and PostgreSQL alike.

Migration 0007's indexes; the records listing's cursor pages (every match once,
newest first, back and forth, as the old page numbers gave them); the counts
read from indexes; the dashboard's per-day syncs counted in the database; and a
smoke run of the benchmark's bulk seeder (scripts/benchlib/seed.py).
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import func, inspect, select, update

from connector.dashboard_figures import dashboard, state_counts, synced_per_day
from connector.record_listing import (
    RecordQuery,
    count_records,
    filter_choices,
    list_records,
    records_page,
)
from connector.records import EncounterRecord
from connector.schema import jobs, record_versions
from tests.conftest import example_dict

NY = ZoneInfo("America/New_York")
DAY0 = datetime(2026, 3, 1, 15, 0, tzinfo=UTC)
REASONS = {2: "mrn-no-match", 5: "412 multiple-matches: Encounter", 8: "mrn-matches-2-patients"}
STATES = {2: "waiting_patient", 5: "needs_attention", 6: "synced", 7: "synced",
          8: "waiting_patient", 9: "waiting_staff"}


def _record(i: int) -> EncounterRecord:
    data = example_dict("in-person-session.json")
    start = (DAY0 + timedelta(days=i)).isoformat()
    data.update(id=f"rec-{i:02d}", start=start, end=start,
                specialist={"id": "S-22" if i % 3 == 0 else "S-17"})
    data["note"] = dict(data["note"], id=f"N-{i:02d}")
    return EncounterRecord.from_dict("peer-tool" if i % 4 else "web-form", data)


@pytest.fixture
def filled(store: Any) -> Any:
    """13 records, one a day, in several states; some with a reason or an EHR answer."""
    store.add_records([_record(i) for i in range(13)], actor="t")
    with store.begin(audited=False) as conn:
        for i, state in STATES.items():
            conn.execute(update(jobs).where(jobs.c.record_id == f"rec-{i:02d}").values(
                state=state, reason=REASONS.get(i),
                outcome_text="Multiple resources match" if i == 5 else None,
                synced_at=DAY0 + timedelta(days=i) if state == "synced" else None))
        conn.execute(update(jobs).where(jobs.c.record_id == "rec-11").values(
            outcome_text="the EHR said: mrn invalid"))
    return store


def _all(store: Any) -> list[dict[str, Any]]:
    """Every job with what the filters look at, newest first (the oracle)."""
    with store.engine.connect() as conn:
        rows = conn.execute(
            select(jobs.c.id, jobs.c.source, jobs.c.state, jobs.c.reason, jobs.c.outcome_text,
                   record_versions.c.specialist_id, record_versions.c.start_at)
            .join(record_versions, record_versions.c.id == jobs.c.record_version_id)
            .order_by(jobs.c.id.desc())).all()
    return [dict(row._mapping) for row in rows]


def _matches(row: dict[str, Any], q: RecordQuery) -> bool:
    start = row["start_at"] if row["start_at"].tzinfo else row["start_at"].replace(tzinfo=UTC)
    text = (q.text or "").lower()
    found = [row["reason"]] + ([row["outcome_text"]] if q.search_outcome_text else [])
    return ((not q.state or row["state"] == q.state)
            and (not q.source or row["source"] == q.source)
            and (not q.specialist_id or row["specialist_id"] == q.specialist_id)
            and (not q.since or start >= q.since) and (not q.until or start < q.until)
            and (not text or any(text in (t or "").lower() for t in found)))


QUERIES = [
    RecordQuery(),
    RecordQuery(state="waiting_patient"),
    RecordQuery(state="pending"),
    RecordQuery(source="peer-tool"),
    RecordQuery(specialist_id="S-22"),
    RecordQuery(since=DAY0 + timedelta(days=3), until=DAY0 + timedelta(days=10)),
    RecordQuery(state="pending", since=DAY0 + timedelta(days=1)),
    RecordQuery(text="MRN"),
    RecordQuery(text="mrn", search_outcome_text=False),
    RecordQuery(text="no such text"),
]


@pytest.mark.parametrize("q", QUERIES)
def test_cursor_pages_list_every_match_once_newest_first(filled: Any, q: RecordQuery) -> None:
    expected = [row["id"] for row in _all(filled) if _matches(row, q)]
    pages = [records_page(filled, q, size=3)]
    while pages[-1].older:
        pages.append(records_page(filled, q, size=3, before=pages[-1].older["before"]))
    assert [r["id"] for page in pages for r in page.rows] == expected
    assert pages[0].newer is None and all(p.newer for p in pages[1:])
    # back again through the newer links: the same pages
    back = pages[-1]
    for page in reversed(pages[:-1]):
        assert back.newer is not None
        back = records_page(filled, q, size=3, after=back.newer["after"])
        assert [r["id"] for r in back.rows] == [r["id"] for r in page.rows]
    assert back.newer is None
    # old links (?page=N) give the same pages
    for number, page in enumerate(pages, start=1):
        by_number = records_page(filled, q, size=3, page=number)
        assert [r["id"] for r in by_number.rows] == [r["id"] for r in page.rows]
    assert count_records(filled, q) == len(expected)
    assert count_records(filled, q, state_counts(filled)) == len(expected)
    # a search's first page brings its total (one pass for both); other pages do not
    searched = bool(q.text or q.specialist_id or q.since or q.until)
    assert pages[0].total == (len(expected) if searched else None)
    assert all(page.total is None for page in pages[1:])


def test_cursors_past_either_end(filled: Any) -> None:
    newest = _all(filled)[0]["id"]
    past = records_page(filled, RecordQuery(), size=3, after=newest)
    assert past.rows == [] and past.newer is None and past.older == {"before": newest + 1}
    assert records_page(filled, RecordQuery(), size=3, before=1).rows == []
    assert records_page(filled, RecordQuery(), size=3, page=99).newer == {"page": 98}
    assert list_records(filled, RecordQuery(), limit=2, offset=1) == list_records(
        filled, RecordQuery(), limit=3)[1:]


def test_counts_by_state_from_the_indexes_are_the_stores(filled: Any) -> None:
    assert state_counts(filled) == filled.counts_by_state()
    assert state_counts(filled)["synced"] == 2 and sum(state_counts(filled).values()) == 13


def test_filter_choices_are_the_distinct_values_in_order(filled: Any) -> None:
    with filled.engine.connect() as conn:
        sources = list(conn.execute(select(record_versions.c.source).distinct()
                                    .order_by(record_versions.c.source)).scalars())
    assert filter_choices(filled) == (sources, ["S-17", "S-22"])
    assert sources == ["peer-tool", "web-form"]


def test_oldest_waiting_record_across_the_waiting_states(filled: Any) -> None:
    with filled.begin(audited=False) as conn:  # the same moment for two states: lower id first
        conn.execute(update(jobs).where(jobs.c.state.in_(["waiting_patient", "waiting_staff"]))
                     .values(created_at=DAY0))
    oldest = dashboard(filled, tz=NY).oldest_waiting
    assert oldest is not None and oldest["record_id"] == "rec-02"
    with filled.begin(audited=False) as conn:
        conn.execute(update(jobs).where(jobs.c.record_id == "rec-09")
                     .values(created_at=DAY0 - timedelta(seconds=1)))
    oldest = dashboard(filled, tz=NY).oldest_waiting
    assert oldest is not None and oldest["record_id"] == "rec-09"


def test_synced_per_day_counts_local_days_across_a_clock_change(filled: Any) -> None:
    # New York leaves daylight time on 2026-11-01: that day has 25 hours
    moments = {"rec-00": "2026-11-01T03:59:59+00:00",  # 31 Oct 23:59:59 EDT
               "rec-01": "2026-11-01T04:00:00+00:00",  # 1 Nov 00:00 EDT
               "rec-03": "2026-11-02T04:59:59+00:00",  # 1 Nov 23:59:59 EST
               "rec-04": "2026-11-02T05:00:00+00:00",  # 2 Nov 00:00 EST
               "rec-06": "2026-10-30T03:59:59+00:00"}  # 29 Oct: before the first day
    with filled.begin(audited=False) as conn:
        conn.execute(update(jobs).values(synced_at=None))
        for record_id, moment in moments.items():
            conn.execute(update(jobs).where(jobs.c.record_id == record_id)
                         .values(synced_at=datetime.fromisoformat(moment)))
    days = synced_per_day(filled, tz=NY, days=4, now=datetime(2026, 11, 3, 17, tzinfo=UTC))
    assert days == [(date(2026, 10, 31), 1), (date(2026, 11, 1), 2), (date(2026, 11, 2), 1),
                    (date(2026, 11, 3), 0)]


def test_the_migration_makes_the_page_indexes_and_undoes_them(store: Any) -> None:
    from alembic import command
    from alembic.config import Config

    from connector.store import MIGRATIONS

    def indexes() -> dict[str, list[str]]:
        with store.engine.connect() as conn:
            found = inspect(conn)
            return {ix["name"]: list(ix["column_names"]) for table in ("jobs", "record_versions")
                    for ix in found.get_indexes(table)}

    made = indexes()
    assert {name: made.get(name) for name in (
        "ix_jobs_state_id", "ix_jobs_state_created", "ix_jobs_synced_at", "ix_jobs_reason_set",
        "ix_jobs_outcome_set", "ix_record_versions_start", "ix_record_versions_specialist_id",
    )} == {
        "ix_jobs_state_id": ["state", "id"], "ix_jobs_state_created": ["state", "created_at", "id"],
        "ix_jobs_synced_at": ["synced_at"], "ix_jobs_reason_set": ["reason", "id"],
        "ix_jobs_outcome_set": ["id"], "ix_record_versions_start": ["start_at", "id"],
        "ix_record_versions_specialist_id": ["specialist_id", "id"],
    }
    assert "ix_record_versions_specialist" not in made
    pg = store.dialect == "postgresql"
    assert made.get("ix_jobs_version_job") == (["record_version_id", "id"] if pg else None)
    # what connector.schema declares for this database is what the migrations made
    for table in (jobs, record_versions):
        for index in table.indexes:
            ddl_if = index._ddl_if  # set by .ddl_if(dialect=...)
            if ddl_if is None or ddl_if.dialect == store.dialect:
                assert made[str(index.name)] == [c.name for c in index.columns], index.name
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with store.engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0006")
    undone = indexes()
    assert "ix_jobs_state_id" not in undone and "ix_jobs_version_job" not in undone
    assert undone["ix_record_versions_specialist"] == ["specialist_id"]
    store.migrate()
    assert indexes() == made


def test_the_partial_indexes_hold_only_the_jobs_with_a_reason_or_an_answer(store: Any) -> None:
    """The partial indexes hold exactly the jobs that have a reason (or an answer)."""
    if store.dialect != "sqlite":
        pytest.skip("the index's entries are counted through SQLite's INDEXED BY")
    store.add_records([_record(i) for i in range(4)], actor="t")
    with store.begin(audited=False) as conn:
        conn.execute(update(jobs).where(jobs.c.record_id == "rec-01").values(reason="x"))
        conn.execute(update(jobs).where(jobs.c.record_id == "rec-02").values(outcome_text="y"))
        reasons = conn.exec_driver_sql(
            "SELECT count(*) FROM jobs INDEXED BY ix_jobs_reason_set WHERE reason IS NOT NULL"
        ).scalar()
        answers = conn.exec_driver_sql(
            "SELECT count(*) FROM jobs INDEXED BY ix_jobs_outcome_set "
            "WHERE outcome_text IS NOT NULL").scalar()
    assert (reasons, answers) == (1, 1)


def test_the_benchmark_seeder_fills_a_store_the_pages_read(store: Any) -> None:
    from scripts.benchlib.seed import seed_store

    url = store.engine.url.render_as_string(hide_password=False)
    report = seed_store(url, records=300, audit=1500)
    assert report["rows"]["record_versions"] == report["rows"]["jobs"] == 300
    assert report["rows"]["audit_events"] == 1500 and report["audit_chain_verifies"] is False
    counts = state_counts(store)
    assert counts == store.counts_by_state() and sum(counts.values()) == 300
    assert counts == {k: report["states"].get(k, 0) for k in counts}
    assert count_records(store, RecordQuery(state="needs_attention")) == counts["needs_attention"]
    assert len(records_page(store, RecordQuery(), size=50).rows) == 50
    with store.begin() as conn:  # the head row follows the seeded rows: appends chain on
        store.audit(conn, actor="t", action="test.after-seed")
    with store.engine.connect() as conn:
        assert conn.execute(select(func.max(jobs.c.id))).scalar() == 300
    assert store.audit_events(after_seq=1500)[0]["seq"] == 1501
    store.add_records([_record(99)], actor="t")  # the sequences follow the seeded ids too
    assert state_counts(store)["pending"] == counts["pending"] + 1


def test_the_records_pages_links_walk_every_record_once(app: Any, home: Any) -> None:
    import re

    from tests.webapp_support import logged_in

    store = home.store()
    try:
        store.add_records([_record(i) for i in range(120)], actor="t")
    finally:
        store.close()
    admin = logged_in(app, "admin")
    older = re.compile(r'<a href="([^"]+)">older &rarr;</a>')
    newer = re.compile(r'<a href="([^"]+)">&larr; newer</a>')
    shown: list[str] = []
    url: str | None = "/records/?source=peer-tool"
    pages = []
    while url:
        html = admin.get(url).get_data(as_text=True)
        assert "90 record version(s) match" in html  # 120 less every 4th (web-form)
        pages.append(html)
        shown += re.findall(r'href="/records/\d+">(rec-\d+)</a>', html)
        link = older.search(html)
        url = link.group(1).replace("&amp;", "&") if link else None
        assert url is None or ("before=" in url and "source=peer-tool" in url)
    assert shown == [f"rec-{i:02d}" for i in range(119, -1, -1) if i % 4]
    assert len(pages) == 2 and newer.search(pages[0]) is None
    back = newer.search(pages[1])
    assert back is not None and "after=" in back.group(1)
    first = admin.get(back.group(1).replace("&amp;", "&")).get_data(as_text=True)
    assert re.findall(r'>(rec-\d+)</a>', first) == re.findall(r'>(rec-\d+)</a>', pages[0])


def test_status_imports_neither_the_other_commands_nor_web_fhir_or_postgresql(home: Any) -> None:
    """`peersync status` (on SQLite) loads what it reads with, nothing more (issue 9: < 0.5 s)."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    from connector.states import ALL_STATES

    code = ("import json, sys\nfrom connector.cli import main\ntry:\n    main(['status'])\n"
            "except SystemExit:\n    pass\nprint(json.dumps(sorted(sys.modules)))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          env=dict(os.environ, PEERSYNC_HOME=str(home.path)),
                          cwd=Path(__file__).parents[2])
    *counts, modules = done.stdout.strip().splitlines()
    assert [line.split() for line in counts] == [[state, "0"] for state in ALL_STATES]
    loaded = set(json.loads(modules))
    unwanted = {"flask", "werkzeug", "jinja2", "fhir", "pydantic", "requests", "urllib3",
                "alembic", "psycopg", "sqlalchemy.dialects.postgresql", "connector.accounts",
                "connector.accounts_cli", "connector.audit_cli", "connector.audit_verify",
                "connector.cli_setup", "connector.cli_sync", "connector.sync", "connector.intake",
                "connector.fhir_client", "connector.progress", "mappings.resources"}
    assert not {m for m in loaded if m in unwanted or m.split(".")[0] in unwanted}


def test_every_lazy_command_is_the_command_of_its_name() -> None:
    import click

    from connector.cli import LAZY_COMMANDS, main

    ctx = click.Context(main)
    for name in LAZY_COMMANDS:
        command = main.get_command(ctx, name)
        assert command is not None and command.name == name
    assert main.get_command(ctx, "no-such-command") is None
    assert set(main.list_commands(ctx)) == set(LAZY_COMMANDS) | {
        "import", "map", "status", "serve", "demo"}


def test_the_web_apps_postgresql_sessions_run_no_parallel_workers(store: Any) -> None:
    from webapp import _serial_queries

    if store.dialect != "postgresql":
        pytest.skip("a PostgreSQL setting")
    store.engine.dispose()  # the setting is made on each new connection
    _serial_queries(store.engine)
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("SHOW max_parallel_workers_per_gather").scalar() == "0"
