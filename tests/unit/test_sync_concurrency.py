"""`[ehr] max_in_flight`: a stage's requests go concurrently, each record's writes in order.

A fake EHR client counts the requests in flight (a short sleep keeps them
overlapping) and logs when each one started and ended on one shared sequence;
nothing is asserted about durations.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
import time
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from connector.config import parse_config
from connector.errors import ConfigError
from connector.fhir_client import WriteResult
from connector.sync.model import Plan, SyncContext, SyncSummary, Write
from connector.sync.senders import StagedSender

BASE = "http://127.0.0.1:9/fhir"
MAIN = threading.get_ident()


class FakeClient:
    """Creates everything; logs (record, resource, started, ended) per request."""

    base_url = BASE

    def __init__(self, pause_s: float = 0.01) -> None:
        self.pause_s = pause_s
        self.lock = threading.Lock()
        self.seq = itertools.count()
        self.in_flight = 0
        self.max_in_flight = 0
        self.log: list[tuple[str, str, int, int]] = []  # (record, name, started, ended)
        self.threads: set[int] = set()

    def _request(self, names: list[tuple[str, str]]) -> None:
        with self.lock:
            started = next(self.seq)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            self.threads.add(threading.get_ident())
        time.sleep(self.pause_s)
        with self.lock:
            self.in_flight -= 1
            ended = next(self.seq)
            self.log.extend((record, name, started, ended) for record, name in names)

    def create(self, resource: dict[str, Any], **_: Any) -> WriteResult:
        self._request([(resource["record"], resource["name"])])
        return _result(resource)

    def update(self, resource: dict[str, Any], **_: Any) -> WriteResult:
        return self.create(resource)

    def batch(self, bundle: dict[str, Any]) -> dict[str, Any]:
        resources = [entry["resource"] for entry in bundle["entry"]]
        self._request([(r["record"], r["name"]) for r in resources])
        return {"resourceType": "Bundle", "type": "batch-response", "entry": [
            {"response": {"status": "201 Created",
                          "location": f"{r['resourceType']}/{r['name']}/_history/1"}}
            for r in resources]}


def _result(resource: dict[str, Any]) -> WriteResult:
    return WriteResult(resource_type=resource["resourceType"], id=resource["name"],
                       version_id="1", status=201, created=True, location=None, resource=None)


class FakeStore:
    def ledger_latest_many(self, keys: list[Any]) -> dict[Any, None]:
        assert threading.get_ident() == MAIN, "the store is used from the main thread only"
        return dict.fromkeys(keys)

    @contextmanager
    def begin(self) -> Any:
        assert threading.get_ident() == MAIN, "the store is used from the main thread only"
        yield None

    @contextmanager
    def audit_batch(self, conn: Any) -> Any:
        yield


class FakeOutcomes:
    def __init__(self) -> None:
        self.confirmed: list[tuple[str, str, str]] = []  # (record, name, state)
        self.done: list[str] = []

    def confirm(self, conn: Any, plan: Plan, write: Write, ehr_id: str | None,
                version: str | None, *, state: str = "confirmed") -> None:
        assert threading.get_ident() == MAIN
        self.confirmed.append((plan.job.record_id, write.resource["name"], state))

    def confirm_many(self, conn: Any, items: list[tuple[Plan, Write, str | None, str | None]],
                     *, state: str = "confirmed") -> None:
        for plan, write, ehr_id, version in items:
            self.confirm(conn, plan, write, ehr_id, version, state=state)

    def synced(self, conn: Any, plan: Plan, resources: list[str], summary: SyncSummary) -> None:
        self.done.append(plan.job.record_id)

    def fail(self, job: Any, error: Exception, summary: SyncSummary) -> None:
        raise AssertionError(f"{job.record_id} failed: {error}")


def _plans(n: int) -> list[Plan]:
    """n records: an Encounter, two notes (a new one and the one it supersedes), Provenance."""
    plans = []
    for i in range(n):
        key = f"r{i:02d}"
        writes = [
            Write(rtype, {"resourceType": rtype, "record": key, "name": f"{key}-{name}"},
                  full_url=f"urn:uuid:{key}-{name}", action="create", system="s",
                  value=f"{key}-{name}")
            for rtype, name in (("Encounter", "enc"), ("DocumentReference", "note"),
                                ("DocumentReference", "old-note"), ("Provenance", "prov"))]
        job = SimpleNamespace(id=i + 1, record_id=key)
        plans.append(Plan(job=job, record=SimpleNamespace(), writes=writes))  # type: ignore[arg-type]
    return plans


def _send(tmp_path: Path, mode: str, in_flight: int, n: int, bundle_entries: int = 50
          ) -> tuple[FakeClient, FakeOutcomes, SyncSummary, list[Plan]]:
    config = parse_config({"ehr": {"base_url": BASE, "mode": mode,
                                   "max_in_flight": in_flight,
                                   "max_bundle_entries": bundle_entries}},
                          path=tmp_path / "peersync.toml", environ={})
    client, outcomes = FakeClient(), FakeOutcomes()
    write_plan = SimpleNamespace(mode=mode, staged=True, conditional_update=False,
                                 conditional_create=False)
    ctx = SyncContext(store=FakeStore(), client=client, profile=None, config=config,  # type: ignore[arg-type]
                      plan=write_plan, worker="test",  # type: ignore[arg-type]
                      clock=lambda: datetime.now(UTC), marker_key=b"k")
    plans = _plans(n)
    summary = SyncSummary()
    StagedSender(ctx, outcomes).send(plans, summary)  # type: ignore[arg-type]
    return client, outcomes, summary, plans


def _order_kept(client: FakeClient, plans: list[Plan]) -> None:
    """Each record's writes went in plan order, each after the previous one had ended."""
    for plan in plans:
        mine = sorted(((started, ended, name) for record, name, started, ended in client.log
                       if record == plan.job.record_id), key=lambda m: m[0])  # stable
        assert [name for _, _, name in mine] == [w.resource["name"] for w in plan.writes]
        requests = sorted({(started, ended) for started, ended, _ in mine})
        for (_, ended), (started, _) in itertools.pairwise(requests):
            assert started > ended  # one request of the record ends before its next starts


def test_single_mode_overlaps_records_but_never_one_records_writes(tmp_path: Path) -> None:
    client, outcomes, summary, plans = _send(tmp_path, "single", 4, 12)
    assert 1 < client.max_in_flight <= 4
    _order_kept(client, plans)
    # stage barrier: every Encounter was confirmed before any note went
    first_note = min(s for _, name, s, _ in client.log if name.endswith("-note"))
    assert all(e < first_note for _, name, _, e in client.log if name.endswith("-enc"))
    assert summary.requests == 12 * 4
    assert sorted(outcomes.done) == sorted(p.job.record_id for p in plans)
    # intent before confirmation, for every write
    for plan in plans:
        for write in plan.writes:
            states = [s for r, name, s in outcomes.confirmed if name == write.resource["name"]]
            assert states == ["sent", "confirmed"]


def test_batch_mode_has_several_bundles_in_flight_holding_whole_records(tmp_path: Path) -> None:
    # 3 entries a bundle: a record's two notes never span two bundles
    client, _, summary, plans = _send(tmp_path, "batch", 3, 12, bundle_entries=3)
    assert 1 < client.max_in_flight <= 3
    _order_kept(client, plans)
    bundles: dict[tuple[int, int], list[str]] = {}
    for record, _, started, ended in client.log:
        bundles.setdefault((started, ended), []).append(record)
    assert all(len(b) <= 3 for b in bundles.values())
    assert summary.bundles == len(bundles)


@pytest.mark.parametrize("mode", ["single", "batch"])
def test_max_in_flight_1_sends_one_request_at_a_time_as_before(tmp_path: Path, mode: str) -> None:
    client, outcomes, summary, plans = _send(tmp_path, mode, 1, 5, bundle_entries=4)
    assert client.max_in_flight == 1
    assert client.threads == {MAIN}  # no thread pool at all
    # the requests in the order of before: stage by stage, items in plan order; in
    # batch mode, bundles cut every max_bundle_entries items (a record may span two)
    items = [w.resource["name"] for stage in ("Encounter", "DocumentReference", "Provenance")
             for p in plans for w in p.writes if w.resource_type == stage]
    log = sorted(client.log, key=lambda row: (row[2], items.index(row[1])))
    assert [name for _, name, _, _ in log] == items
    if mode == "batch":
        per_request = [[n for _, n, s, _ in log if s == start]
                       for start in sorted({s for _, _, s, _ in log})]
        expected = []
        for stage in ("Encounter", "DocumentReference", "Provenance"):
            staged = [w.resource["name"] for p in plans for w in p.writes
                      if w.resource_type == stage]
            expected += [staged[i:i + 4] for i in range(0, len(staged), 4)]
        assert per_request == expected
        assert summary.bundles == len(expected)
    else:
        assert summary.requests == len(items)
    assert [s for _, _, s in outcomes.confirmed].count("confirmed") == len(items)


@pytest.mark.parametrize("value", [0, 65, True, "8"])
def test_max_in_flight_is_validated_with_its_key(tmp_path: Path, value: Any) -> None:
    with pytest.raises(ConfigError, match=r"ehr\.max_in_flight"):
        parse_config({"ehr": {"base_url": BASE, "max_in_flight": value}},
                     path=tmp_path / "peersync.toml", environ={})


def test_max_in_flight_defaults_to_8_and_the_session_pool_holds_that_many(
        tmp_path: Path) -> None:
    from connector.fhir_client import FhirClient

    config = parse_config({"ehr": {"base_url": BASE}}, path=tmp_path / "peersync.toml",
                          environ={})
    assert config.ehr.max_in_flight == 8
    with FhirClient(base_url=BASE, pool_maxsize=32) as client:
        assert client.session.get_adapter(BASE)._pool_maxsize == 32  # type: ignore[attr-defined]


def test_in_flight_bounds_requests_and_lets_urgent_ones_go_first() -> None:
    """connector.sync.concurrency.InFlight: never more than its limit at once; a place
    freed goes to a waiting urgent request (a look-up the planning waits on) before the
    writes queued earlier."""
    from connector.sync.concurrency import InFlight

    slots = InFlight(2)
    order: list[str] = []
    lock = threading.Lock()
    inside = [0, 0]  # now, most

    def request(name: str, urgent: bool, hold: threading.Event) -> None:
        with slots.urgent() if urgent else contextlib.nullcontext(), slots:
            with lock:
                order.append(name)
                inside[0] += 1
                inside[1] = max(inside[1], inside[0])
            hold.wait(5)
            with lock:
                inside[0] -= 1

    first = threading.Event()
    held = [threading.Thread(target=request, args=(f"held-{i}", False, first)) for i in range(2)]
    for thread in held:
        thread.start()
    while len(order) < 2:
        time.sleep(0.005)
    go = threading.Event()
    go.set()
    queued = [threading.Thread(target=request, args=(f"write-{i}", False, go)) for i in range(3)]
    for thread in queued:
        thread.start()
    time.sleep(0.05)  # the writes are waiting for a place
    urgent = threading.Thread(target=request, args=("look-up", True, go))
    urgent.start()
    time.sleep(0.05)
    first.set()  # the two held requests end: the look-up takes the first place freed
    for thread in [*held, *queued, urgent]:
        thread.join(5)
    assert order[:2] == ["held-0", "held-1"] or order[:2] == ["held-1", "held-0"]
    assert order[2] == "look-up", order
    assert sorted(order[3:]) == ["write-0", "write-1", "write-2"]
    assert inside[1] == 2
