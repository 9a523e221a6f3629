"""Workers share the Patient matches they find (``[sync] match_reuse_s``, issue 9).

Two engines on one store are two workers: the second one's records name the same
MRNs as the first's. A mocked EHR (``responses`` on a real FhirClient and a real
SQLite store) counts the Patient searches each worker makes.
"""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import responses
from sqlalchemy import select, update

from connector.config import parse_config
from connector.fhir_client import FhirClient
from connector.records import EncounterRecord
from connector.schema import ehr_matches
from connector.states import JobState
from connector.store import Store, utcnow
from connector.sync import SyncEngine
from tests.conftest import example_dict
from tests.unit.test_sync_pipeline import BASE, SlowEhr

MRNS = [f"MRN-7{i:05d}" for i in range(6)]


def _records(batch: str) -> list[EncounterRecord]:
    records = []
    for i, mrn in enumerate(MRNS):
        data = example_dict("in-person-session.json")
        data["id"] = f"share-{batch}-{i}"
        data["participant"].update(id=f"P-7{i:03d}", mrn=mrn)
        data["note"]["id"] = f"N-share-{batch}-{i}"
        records.append(EncounterRecord.from_dict("peer-tool", data))
    return records


def _worker_syncs(store: Store, profile: Any, tmp_path: Path, batch: str,
                  **sync: Any) -> int:
    """A new worker (its own engine and client) syncs ``batch``; its Patient searches."""
    config = parse_config({"ehr": {"base_url": BASE, "mode": "single", "conditional": False,
                                   "max_in_flight": 2}, "sync": sync},
                          path=tmp_path / "peersync.toml", environ={})
    store.add_records(_records(batch), actor="t")
    ehr = SlowEhr(pause_s=0.0)
    client = FhirClient(base_url=BASE, timeout_s=5, pool_maxsize=2)
    engine = SyncEngine(store=store, client=client, profile=profile, config=config,
                        worker=f"worker-{batch}")
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        rsps.add_callback(responses.GET, re.compile(rf"{BASE}/\w+\?.*"), callback=ehr.search)
        rsps.add_callback(responses.POST, re.compile(rf"{BASE}/\w+$"), callback=ehr.create)
        engine.run(max_wait_s=0)
    client.close()
    states = {row["record_id"]: row["state"] for row in store.jobs_overview()}
    assert all(states[f"share-{batch}-{i}"] == JobState.SYNCED for i in range(len(MRNS)))
    return sum(1 for m, t, *_ in ehr.log if (m, t) == ("GET", "Patient"))


def test_a_second_worker_reuses_the_patient_matches_the_first_found(
        sqlite_store: Store, profile: Any, tmp_path: Path) -> None:
    assert _worker_syncs(sqlite_store, profile, tmp_path, "a") == len(MRNS)
    assert _worker_syncs(sqlite_store, profile, tmp_path, "b") == 0
    with sqlite_store.engine.connect() as conn:
        rows = conn.execute(select(ehr_matches)).all()
    assert len(rows) == len(MRNS)
    assert not any(mrn in str(tuple(row)) for row in rows for mrn in MRNS)  # digests only


def test_a_match_older_than_match_reuse_s_is_searched_again(
        sqlite_store: Store, profile: Any, tmp_path: Path) -> None:
    assert _worker_syncs(sqlite_store, profile, tmp_path, "a", match_reuse_s=60) == len(MRNS)
    with sqlite_store.begin() as conn:
        conn.execute(update(ehr_matches).values(found_at=utcnow() - timedelta(seconds=61)))
    assert _worker_syncs(sqlite_store, profile, tmp_path, "b", match_reuse_s=60) == len(MRNS)


def test_match_reuse_s_0_shares_nothing(
        sqlite_store: Store, profile: Any, tmp_path: Path) -> None:
    assert _worker_syncs(sqlite_store, profile, tmp_path, "a", match_reuse_s=0) == len(MRNS)
    assert _worker_syncs(sqlite_store, profile, tmp_path, "b", match_reuse_s=0) == len(MRNS)
    with sqlite_store.engine.connect() as conn:
        assert conn.execute(select(ehr_matches)).all() == []


@pytest.mark.parametrize("value", [-1, 86401, "600"])
def test_match_reuse_s_out_of_range_is_refused_by_name(tmp_path: Path, value: Any) -> None:
    from connector.errors import ConfigError

    with pytest.raises(ConfigError, match="sync.match_reuse_s"):
        parse_config({"ehr": {"base_url": BASE}, "sync": {"match_reuse_s": value}},
                     path=tmp_path / "peersync.toml", environ={})


def test_workers_sharing_the_same_matches_at_once_neither_deadlock_nor_collide(
        store: Store) -> None:
    """Four threads (workers) upsert overlapping matches, each in its own order, over and
    over: every upsert commits (no deadlock, no duplicate key) and the table ends with one
    row per search."""
    import random
    import threading

    keys = [f"{i:064x}" for i in range(40)]
    errors: list[BaseException] = []

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        try:
            for _ in range(15):
                chosen = rng.sample(keys, 25)
                store.share_matches("Patient", {k: f"p-{seed}" for k in chosen})
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(seed,)) for seed in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    shared = store.shared_matches("Patient", keys, max_age_s=600)
    assert set(shared) <= set(keys) and len(shared) >= 25
    with store.engine.connect() as conn:
        assert len(conn.execute(select(ehr_matches)).all()) == len(shared)
