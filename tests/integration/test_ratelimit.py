"""``[ehr] max_requests_per_minute`` against a real sekmet (issue 9): two workers (two engines,
two Store objects, two clients) sync 20 records together, and the requests that reach the EHR
(counted at the clients' exchange hook) never exceed the limit in any rolling minute.

A minute of the limiter's clock passes in three real seconds (the limiters' clock and sleep
are scaled by ``SPEED``), so a limit of 20 a minute holds the workers back and the test still
takes a few seconds. Figures on one ``RATELIMIT`` line (pytest ``-s`` or ``-rP``).
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from connector.config import parse_config
from connector.fhir_client import Exchange, FhirClient
from connector.records import EncounterRecord
from connector.store import Store
from connector.sync import SyncEngine
from tests.integration.conftest import SOURCE
from tests.integration.test_durability import seed, write_records

pytestmark = pytest.mark.integration

SPEED = 20.0  # limiter seconds per real second
PER_MINUTE = 20


class ScaledClock:
    def __init__(self) -> None:
        self.real0 = time.monotonic()
        self.fake0 = 1_800_000_000.0

    def __call__(self) -> float:
        return self.fake0 + (time.monotonic() - self.real0) * SPEED

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds / SPEED)


def _max_in_window(times: list[float], window: float = 60.0) -> int:
    times = sorted(times)
    best, start = 0, 0
    for end, at in enumerate(times):
        while times[start] <= at - window:
            start += 1
        best = max(best, end - start + 1)
    return best


def test_two_workers_together_keep_to_the_limit(
    tmp_path: Path, sekmet: Any, database_url: str, profile: Any,
) -> None:
    seed(sekmet.base_url)
    config = parse_config(
        {"ehr": {"base_url": sekmet.base_url, "max_requests_per_minute": PER_MINUTE,
                 "max_bundle_entries": 3}},  # a record per bundle: a request or more each
        path=tmp_path / "peersync.toml", environ={})
    first = Store.from_url(database_url)
    first.migrate()
    path = tmp_path / "records.jsonl"
    write_records(path, 20, prefix="rate")
    first.add_records([EncounterRecord.from_dict(SOURCE, json.loads(line))
                       for line in path.read_text("utf-8").splitlines()], actor="test")
    clock = ScaledClock()
    sent: list[float] = []  # when each request left (limiter time), from the exchange hook
    lock = threading.Lock()

    def heard(exchange: Exchange) -> None:
        with lock:
            sent.append(clock() - exchange.duration_ms / 1000.0 * SPEED)

    stores = [first, Store.from_url(database_url)]
    clients = [FhirClient(base_url=sekmet.base_url, timeout_s=10, on_exchange=heard)
               for _ in stores]
    engines = [SyncEngine(store=s, client=c, profile=profile, config=config, worker=f"w{i}")
               for i, (s, c) in enumerate(zip(stores, clients, strict=True))]
    for engine in engines:
        assert engine.limiter is not None
        engine.limiter.clock, engine.limiter.sleep = clock, clock.sleep
    summaries: list[Any] = []
    started = time.monotonic()
    threads = [threading.Thread(target=lambda e=e: summaries.append(e.run(max_wait_s=5)))
               for e in engines]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        assert not any(thread.is_alive() for thread in threads)
        elapsed = time.monotonic() - started
        counts = first.counts_by_state()
    finally:
        for client in clients:
            client.close()
        for store in stores:
            store.close()
    synced = counts.get("synced", 0)
    waited = sum(e.limiter.waited_s for e in engines if e.limiter is not None)
    peak = _max_in_window(sent)
    print(f"RATELIMIT requests={len(sent)} peak_per_minute={peak} limit={PER_MINUTE} "
          f"synced={synced} waited_s={waited:.0f} (limiter time) real_s={elapsed:.1f} "
          f"counts={counts}")
    assert synced == 20, (counts, [s.errors for s in summaries])
    assert len(sent) > PER_MINUTE  # the limit held the workers back ...
    assert waited > 0
    assert peak <= PER_MINUTE  # ... and no rolling minute saw more than it allows
    assert all(e.limiter is not None and e.limiter.round_trips > 0 for e in engines)
