"""The pipelined sync (issue 9): while one claim's requests are in flight the next claim is
taken, resolved and planned; its look-ups go side by side; and a worker never has more
than ``[ehr] max_in_flight`` requests in flight, whatever it is doing.

A mocked EHR (``responses`` callbacks on a real FhirClient and a real SQLite store)
answers after a short pause and logs each request's start and end on one sequence;
nothing is asserted about durations.
"""

from __future__ import annotations

import itertools
import re
import threading
import time
from pathlib import Path
from typing import Any

import responses

from connector.config import parse_config
from connector.fhir_client import FhirClient
from connector.records import EncounterRecord
from connector.states import JobState
from connector.store import Store
from connector.sync import SyncEngine
from tests.conftest import example_dict

BASE = "http://127.0.0.1:9/fhir"


class SlowEhr:
    """Answers every request after ``pause_s``; counts what is in flight at once."""

    def __init__(self, pause_s: float = 0.02) -> None:
        self.pause_s = pause_s
        self.lock = threading.Lock()
        self.seq = itertools.count()
        self.in_flight = 0
        self.max_in_flight = 0
        self.ids = itertools.count(1)
        # (method, resource type, record id or "", started, ended)
        self.log: list[tuple[str, str, str, int, int]] = []

    def _begin(self) -> int:
        with self.lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            return next(self.seq)

    def _end(self, method: str, rtype: str, record: str, started: int) -> None:
        with self.lock:
            self.in_flight -= 1
            self.log.append((method, rtype, record, started, next(self.seq)))

    def search(self, request: Any) -> tuple[int, dict[str, str], str]:
        rtype = request.path_url.split("?")[0].rsplit("/", 1)[-1]
        started = self._begin()
        time.sleep(self.pause_s)
        self._end("GET", rtype, "", started)
        body = ('{"resourceType":"Bundle","type":"searchset","entry":[{"search":{"mode":'
                f'"match"}},"resource":{{"resourceType":"{rtype}","id":"{rtype.lower()}-'
                f'{next(self.ids)}"}}}}]}}')
        return 200, {"Content-Type": "application/fhir+json"}, body

    def create(self, request: Any) -> tuple[int, dict[str, str], str]:
        rtype = request.path_url.rsplit("/", 1)[-1]
        record = ""
        match = re.search(rb'"value":"(?:N-)?(pipe-\d+)', request.body or b"")
        if match:
            record = match.group(1).decode()
        started = self._begin()
        time.sleep(self.pause_s)
        self._end("POST", rtype, record, started)
        new_id = f"{rtype.lower()}-{next(self.ids)}"
        return 201, {"Location": f"{BASE}/{rtype}/{new_id}/_history/1",
                     "Content-Type": "application/fhir+json"}, ""


def _records(n: int) -> list[EncounterRecord]:
    """``n`` records, each of its own participant (so every claim has look-ups to make)."""
    records = []
    for i in range(n):
        data = example_dict("in-person-session.json")
        data["id"] = f"pipe-{i:03d}"
        data["participant"].update(id=f"P-{i:03d}", mrn=f"MRN-9{i:05d}")
        data["note"]["id"] = f"N-pipe-{i:03d}"
        records.append(EncounterRecord.from_dict("peer-tool", data))
    return records


def _sync(store: Store, profile: Any, tmp_path: Path, ehr: SlowEhr, n: int, in_flight: int
          ) -> SyncEngine:
    config = parse_config({"ehr": {"base_url": BASE, "mode": "single", "conditional": False,
                                   "max_in_flight": in_flight}},
                          path=tmp_path / "peersync.toml", environ={})
    store.add_records(_records(n), actor="t")
    client = FhirClient(base_url=BASE, timeout_s=5, pool_maxsize=in_flight)
    engine = SyncEngine(store=store, client=client, profile=profile, config=config,
                        worker="test")
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        rsps.add_callback(responses.GET, re.compile(rf"{BASE}/\w+\?.*"), callback=ehr.search)
        rsps.add_callback(responses.POST, re.compile(rf"{BASE}/\w+$"), callback=ehr.create)
        engine.run(max_wait_s=0)
    client.close()
    return engine


def test_requests_in_flight_never_exceed_max_in_flight_and_every_record_lands(
        sqlite_store: Store, profile: Any, tmp_path: Path) -> None:
    ehr = SlowEhr()
    _sync(sqlite_store, profile, tmp_path, ehr, n=40, in_flight=3)
    assert 1 < ehr.max_in_flight <= 3
    states = {row["record_id"]: row["state"] for row in sqlite_store.jobs_overview()}
    assert len(states) == 40 and set(states.values()) == {JobState.SYNCED}
    notes = [r for m, t, r, _, _ in ehr.log if (m, t) == ("POST", "DocumentReference")]
    assert sorted(notes) == sorted(states)  # each note once


def test_the_next_claims_look_ups_overlap_this_claims_writes(
        sqlite_store: Store, profile: Any, tmp_path: Path) -> None:
    """Without pipelining a claim's Patient searches all end before its first write, and
    the next claim's begin after its last: here some search is in flight during a write."""
    ehr = SlowEhr()
    _sync(sqlite_store, profile, tmp_path, ehr, n=40, in_flight=4)
    searches = [(s, e) for m, t, _, s, e in ehr.log if (m, t) == ("GET", "Patient")]
    writes = [(s, e) for m, _, _, s, e in ehr.log if m == "POST"]
    assert len(searches) == 40  # one per new MRN, none repeated
    overlapping = [1 for (s1, e1), (s2, e2) in itertools.product(searches, writes)
                   if s1 < e2 and s2 < e1]
    assert overlapping


def test_each_records_writes_still_go_one_after_another_in_stage_order(
        sqlite_store: Store, profile: Any, tmp_path: Path) -> None:
    ehr = SlowEhr()
    _sync(sqlite_store, profile, tmp_path, ehr, n=24, in_flight=4)
    order = {"Encounter": 0, "DocumentReference": 1}  # Provenance names no record id
    by_record: dict[str, list[tuple[int, int, str]]] = {}
    for method, rtype, record, started, ended in ehr.log:
        if method == "POST" and rtype in order:
            by_record.setdefault(record, []).append((started, ended, rtype))
    assert len(by_record) == 24
    assert sum(1 for m, t, *_ in ehr.log if (m, t) == ("POST", "Provenance")) == 24
    for record, writes in by_record.items():
        writes.sort()
        assert [order[t] for _, _, t in writes] == sorted(order[t] for _, _, t in writes), record
        for (_, ended, _), (started, _, _) in itertools.pairwise(writes):
            assert started > ended, record  # the next write after the previous answer


def test_a_claim_whose_lease_ran_out_while_in_flight_is_not_taken_again_by_its_worker(
        sqlite_store: Store, profile: Any, tmp_path: Path) -> None:
    """The engine's clock jumps an hour at every reading, so at each claim every earlier
    claim's lease has run out: the jobs still being sent must not be claimed (and sent)
    a second time by the same worker."""
    import itertools as it
    from datetime import timedelta

    from connector.store import utcnow

    hours = it.count()
    ehr = SlowEhr()
    config = parse_config({"ehr": {"base_url": BASE, "mode": "single", "conditional": False,
                                   "max_in_flight": 2}},
                          path=tmp_path / "peersync.toml", environ={})
    sqlite_store.add_records(_records(24), actor="t")
    client = FhirClient(base_url=BASE, timeout_s=5, pool_maxsize=2)
    engine = SyncEngine(store=sqlite_store, client=client, profile=profile, config=config,
                        worker="test", clock=lambda: utcnow() + timedelta(hours=next(hours)))
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        rsps.add_callback(responses.GET, re.compile(rf"{BASE}/\w+\?.*"), callback=ehr.search)
        rsps.add_callback(responses.POST, re.compile(rf"{BASE}/\w+$"), callback=ehr.create)
        engine.run(max_wait_s=0)
    client.close()
    notes = [r for m, t, r, _, _ in ehr.log if (m, t) == ("POST", "DocumentReference")]
    assert len(notes) == 24 and len(set(notes)) == 24  # each note sent once


def test_the_ehr_encounter_look_up_is_bounded_to_the_sessions_days() -> None:
    """Where the EHR owns the Encounters, a note's look-up asks for the patient's
    Encounters from the day before the session to the day after (dates only, as Epic
    takes them), not every later one (a long history was paged through for every note)."""
    from connector.sync.resolve import _encounter_params

    record = _records(1)[0]
    params = _encounter_params(record, "Patient/p-1")
    start, end = record.start.date(), record.end.date()
    assert ("subject", "Patient/p-1") in params
    dates = sorted(v for k, v in params if k == "date")
    assert dates == [f"ge{start.fromordinal(start.toordinal() - 1).isoformat()}",
                     f"le{end.fromordinal(end.toordinal() + 1).isoformat()}"]
