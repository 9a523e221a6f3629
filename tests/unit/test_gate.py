"""The EHR gate (connector.gate): one row every worker checks before claiming, on SQLite and
PostgreSQL; and the engine waiting an outage out (a mocked EHR; the real one: integration/)."""

from __future__ import annotations

import re
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
import responses
from sqlalchemy import select, update

from connector import gate
from connector.config import SyncConfig, parse_config
from connector.errors import EhrConflict, EhrOutcomeUnknown, EhrTransient, EhrUnavailable
from connector.fhir_client import FhirClient
from connector.records import EncounterRecord
from connector.schema import jobs
from connector.states import JobState
from connector.store import Store
from connector.sync import SyncEngine
from tests.conftest import example_dict, load_example

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
CFG = SyncConfig(probe_every_s=5, probe_max_s=40, outage_after_failures=3)
URL = "http://127.0.0.1:9/fhir"
DOWN = EhrUnavailable("EHR unreachable: POST http://127.0.0.1:9/fhir (connection refused)",
                      method="POST", url=URL)


def _fail(store: Store, error: Any, now: datetime = NOW) -> bool:
    with store.begin() as conn:
        return gate.record_failure(store, conn, error, actor="w1", now=now, cfg=CFG)


def _http(status: int, retry_after: float | None = None) -> EhrTransient:
    return EhrTransient(f"HTTP {status}", status=status, url=URL, retry_after=retry_after)


def _records(n: int) -> list[EncounterRecord]:
    base = example_dict("in-person-session.json")
    return [EncounterRecord.from_dict("peer-tool", {
        **base, "id": f"{base['id']}-{i}", "note": {**base["note"], "id": f"N-{i}"}})
        for i in range(n)]


def _schedule(store: Store, n: int, *, at: datetime) -> list[int]:
    """``n`` records waiting on a retry scheduled at ``at``."""
    store.add_records(_records(n), actor="t")
    with store.begin(audited=False) as conn:
        conn.execute(update(jobs).values(state=JobState.RETRY_SCHEDULED.value,
                                         next_attempt_at=at))
        return list(conn.execute(select(jobs.c.id).order_by(jobs.c.id)).scalars())


def _due(store: Store) -> dict[int, datetime]:
    with store.engine.connect() as conn:
        return {row.id: gate._aware(row.next_attempt_at)  # type: ignore[misc]
                for row in conn.execute(select(jobs.c.id, jobs.c.next_attempt_at))}


def test_a_new_store_has_one_open_gate(store: Store) -> None:
    assert gate.read(store) == gate.Gate()
    assert gate.admit(store, worker="w1", now=NOW, cfg=CFG) == gate.Admission("open")
    assert gate.outage_line(store) is None


def test_an_unreachable_ehr_closes_the_gate_at_once(store: Store) -> None:
    assert _fail(store, DOWN) is True

    state = gate.read(store)
    assert not state.is_open and state.since == NOW
    assert state.closed_until == NOW + timedelta(seconds=5)
    assert state.reason == "EhrUnavailable"  # the class, never the URL or a value
    for worker in ("w1", "w2"):
        assert gate.admit(store, worker=worker, now=NOW + timedelta(seconds=4), cfg=CFG) == \
            gate.Admission("closed", NOW + timedelta(seconds=5))
    actions = [e["action"] for e in store.audit_events()]
    assert actions == ["ehr.unreachable"]


def test_5xx_and_lost_answers_close_it_only_when_they_come_in_a_row(store: Store) -> None:
    assert _fail(store, _http(503)) is False
    assert _fail(store, EhrOutcomeUnknown("read timeout", url=URL)) is False
    assert gate.read(store).is_open
    assert gate.record_success(store, actor="w1", now=NOW) == 0  # an answer: the run resets
    assert gate.read(store).failures == 0

    assert [_fail(store, _http(s)) for s in (500, 502, 504)] == [False, False, True]
    assert not gate.read(store).is_open
    # a refusal is the EHR answering: not an outage
    assert _fail(store, EhrConflict("HTTP 412", status=412, url=URL)) is False


def test_a_429_with_retry_after_pauses_every_worker_until_then(store: Store) -> None:
    assert _fail(store, _http(429, retry_after=90)) is True
    assert gate.read(store).closed_until == NOW + timedelta(seconds=90)
    assert gate.admit(store, worker="w2", now=NOW + timedelta(seconds=89), cfg=CFG).closed
    assert gate.admit(store, worker="w2", now=NOW + timedelta(seconds=90), cfg=CFG).kind == \
        "probe"


def test_one_probe_per_interval_taken_by_one_worker(store: Store) -> None:
    _schedule(store, 1, at=NOW + timedelta(hours=1))
    _fail(store, DOWN)
    at = NOW + timedelta(seconds=5)
    barrier = threading.Barrier(8)
    kinds: list[str] = []

    def worker(name: str) -> None:
        barrier.wait()
        kinds.append(gate.admit(store, worker=name, now=at, cfg=CFG).kind)

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert sorted(kinds) == ["closed"] * 7 + ["probe"]
    state = gate.read(store)
    # the others wait one interval while the probe is out (a failed one doubles it: below)
    assert state.probes == 1 and state.closed_until == at + timedelta(seconds=5)
    # the probe has a record to send: the first scheduled retry is due now
    assert list(_due(store).values()) == [at]


def test_failed_probes_space_out_up_to_the_cap(store: Store) -> None:
    _fail(store, DOWN)
    now = NOW
    gaps = []
    for _ in range(6):
        now = gate.read(store).closed_until  # type: ignore[assignment]
        assert gate.admit(store, worker="w1", now=now, cfg=CFG).kind == "probe"
        _fail(store, DOWN, now=now)
        gaps.append((gate.read(store).closed_until - now).total_seconds())  # type: ignore[operator]
    assert gaps == [10, 20, 40, 40, 40, 40]
    assert gate.read(store).probes == 6


def test_when_the_ehr_answers_the_waiting_records_go_at_once(store: Store) -> None:
    later = NOW + timedelta(minutes=4)
    ids = _schedule(store, 3, at=later)
    _fail(store, DOWN)
    back = NOW + timedelta(seconds=30)

    assert gate.record_success(store, actor="w1", now=back) == 3

    assert gate.read(store) == gate.Gate(reason="EhrUnavailable")
    assert _due(store) == dict.fromkeys(ids, back)
    reachable = [e for e in store.audit_events() if e["action"] == "ehr.reachable"]
    assert reachable[0]["detail"] == {"released": 3, "probes": 0, "unreachable_s": 30.0}
    assert gate.record_success(store, actor="w1", now=back) == 0  # open: nothing to do


def test_status_line_names_the_outage_and_the_records_waiting(store: Store) -> None:
    _schedule(store, 2, at=NOW + timedelta(minutes=1))
    _fail(store, DOWN)
    line = gate.outage_line(store, now=NOW + timedelta(seconds=2))
    assert line == ("EHR unreachable since 2026-12-01 12:00:00 UTC, 2 records waiting; "
                    "next probe in 3 s (last error: EhrUnavailable)")


# -- the engine waits the outage out -------------------------------------------------

def _bundle(*resources: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "searchset",
            "entry": [{"resource": r, "search": {"mode": "match"}} for r in resources]}


def _mock_lookups(rsps: responses.RequestsMock) -> None:
    for kind, ehr_id in (("Patient", "pat-1"), ("Practitioner", "pr-1"),
                         ("Organization", "org-1"), ("Device", "dev-1")):
        rsps.get(re.compile(rf"{URL}/{kind}\?.*"),
                 json=_bundle({"resourceType": kind, "id": ehr_id}))


class Clock:
    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def engine(tmp_path: Path, profile: Any):  # type: ignore[no-untyped-def]
    store = Store.from_url(f"sqlite:///{tmp_path / 'p.db'}")
    store.migrate()
    config = parse_config({"ehr": {"base_url": URL},
                           "sync": {"give_up_after": 3600, "probe_every_s": 5,
                                    "max_attempts": 2}},
                          path=tmp_path / "peersync.toml", environ={})
    client = FhirClient(base_url=URL, timeout_s=2, connect_retries=0)
    yield SyncEngine(store=store, client=client, profile=profile, config=config, worker="w1",
                     clock=Clock())
    client.close()
    store.close()


def _jobs(store: Store) -> list[dict[str, Any]]:
    return store.jobs_overview()


def test_an_outage_longer_than_max_attempts_is_waited_out_then_given_up(
    engine: SyncEngine,
) -> None:
    """Finding 3: transient failures outlast max_attempts; the budget, not a count, ends them."""
    clock: Clock = engine.clock  # type: ignore[assignment]
    engine.store.add_records([load_example("in-person-session.json")], actor="t")
    refused = requests.exceptions.ConnectionError(ConnectionRefusedError(111, "refused"))
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        rsps.get(re.compile(rf"{URL}/.*"), body=refused)
        rsps.post(URL, body=refused)
        for minute in range(0, 60, 6):  # ten tries over an hour (max_attempts = 2)
            clock.now += timedelta(minutes=6)
            engine.run(max_wait_s=0)
            [row] = _jobs(engine.store)
            assert row["state"] == JobState.RETRY_SCHEDULED, (minute, row)
        assert row["attempts"] == 10
        clock.now += timedelta(minutes=10)  # past the hour since the first failure (+6 min)
        engine.run(max_wait_s=0)
    [row] = _jobs(engine.store)
    assert row["state"] == JobState.NEEDS_ATTENTION
    assert row["reason"] == "gave-up-after-outage"


def test_no_claims_while_closed_then_the_probe_opens_it_and_releases_the_rest(
    engine: SyncEngine,
) -> None:
    clock: Clock = engine.clock  # type: ignore[assignment]
    store = engine.store
    store.add_records(_records(4), actor="t")
    refused = requests.exceptions.ConnectionError(ConnectionRefusedError(111, "refused"))
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        rsps.get(re.compile(rf"{URL}/.*"), body=refused)
        engine.run(max_wait_s=0)  # the first batch finds the EHR down
        calls = len(rsps.calls)
        assert not gate.read(store).is_open
        for _ in range(3):  # within the probe interval: no claims, no requests
            clock.now += timedelta(seconds=1)
            assert engine.run(max_wait_s=0).claimed == 0
        assert len(rsps.calls) == calls
    assert {r["state"] for r in _jobs(store)} == {JobState.RETRY_SCHEDULED}

    clock.now += timedelta(seconds=3)  # the probe is due; the EHR answers again
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        _mock_lookups(rsps)
        # the probe's record failed before: it is looked up first (not in the EHR), then sent
        rsps.get(re.compile(rf"{URL}/(DocumentReference|Encounter)\?.*"), json=_bundle())
        rsps.post(URL, json={"resourceType": "Bundle", "type": "transaction-response",
                             "entry": [{"response": {"status": "201 Created",
                                                     "location": f"{t}/{t[:3]}-1/_history/1"}}
                                       for t in ("Encounter", "DocumentReference", "Provenance")]})
        summary = SummaryProbe.run(engine)
    assert summary == 1  # the probe: one record
    assert gate.read(store).is_open
    # the other three were due at once, not after their own backoff
    due = [r for r in _due(store).values() if r is not None]
    assert due and all(at <= clock.now for at in due)


class SummaryProbe:
    @staticmethod
    def run(engine: SyncEngine) -> int:
        from connector.sync.model import SyncSummary

        summary = SyncSummary()
        return engine.run_once("probe-run", summary)


# -- the outage on the dashboard and in /metrics -----------------------------------------

@pytest.fixture
def web(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    from connector.api_tokens import add_token
    from tests.webapp_support import import_examples, make_app, make_home
    from webapp import close_app

    home = make_home(tmp_path, monkeypatch)
    import_examples(home, "batch.jsonl")
    store = home.store()
    try:
        _, token = add_token(store, metrics=True, actor="test")
    finally:
        store.close()
    app = make_app(home)
    yield home, app, token
    close_app(app)


def _metric(text: str, name: str) -> float:
    [value] = [line.split()[1] for line in text.splitlines() if line.startswith(name + " ")]
    return float(value)


def test_dashboard_and_metrics_show_the_outage(web: Any) -> None:
    from tests.webapp_support import logged_in

    home, app, token = web
    auth = {"Authorization": f"Bearer {token}"}
    metrics = app.test_client().get("/metrics", headers=auth).get_data(as_text=True)
    assert _metric(metrics, "peersync_ehr_gate_open") == 1
    assert _metric(metrics, "peersync_ehr_unreachable_since_seconds") == 0
    assert "ehr-outage" not in logged_in(app, "admin").get("/dashboard/").get_data(as_text=True)

    store = home.store()
    try:
        _fail(store, DOWN, now=datetime.now(UTC) - timedelta(seconds=90))
    finally:
        store.close()

    metrics = app.test_client().get("/metrics", headers=auth).get_data(as_text=True)
    assert _metric(metrics, "peersync_ehr_gate_open") == 0
    assert 89 <= _metric(metrics, "peersync_ehr_unreachable_since_seconds") < 120
    html = logged_in(app, "admin").get("/dashboard/").get_data(as_text=True)
    assert 'id="ehr-outage"' in html
    assert re.search(r"EHR unreachable since [^,]+,\s*3 records waiting", html), html
