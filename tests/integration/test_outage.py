"""An EHR outage waited out (issue 8, finding 3): connections refused at the fault proxy for a
window with a worker running (sekmet keeps running, in memory), backoff scaled down.

Every record is synced exactly once after, none needs attention, and while the EHR was
unreachable the workers sent it only the gate's probes, not one try per record.
Figures on one ``OUTAGE`` line (pytest ``-s`` or ``-rP``).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from connector.schema import audit_events
from connector.states import ALL_STATES
from connector.sync import SyncEngine
from tests.faultproxy import FaultProxy
from tests.integration.conftest import SOURCE, Env
from tests.integration.test_durability import (
    assert_exactly_once,
    ehr_tally,
    seed,
    store_counts,
    wait_settled,
    workers,
    write_records,
)

pytestmark = pytest.mark.integration

SCALED = {"retry_base_s": 0.2, "retry_max_s": 2, "probe_every_s": 1, "probe_max_s": 2,
          "lookup_grace_s": 0.5}


def _env(tmp_path: Path, proxy: FaultProxy, database_url: str,
         monkeypatch: pytest.MonkeyPatch, **sync: Any) -> Env:
    env = Env(tmp_path / "home", proxy.base_url, database_url, monkeypatch)
    env.set_keys("ehr", timeout_s=2, max_bundle_entries=15)
    env.set_keys("sync", **{**SCALED, **sync})
    return env


def _events(env: Env) -> list[tuple[Any, str, dict[str, Any]]]:
    store = env.store()
    try:
        with store.engine.connect() as conn:
            return [(r.at, r.action, r.detail or {}) for r in conn.execute(
                select(audit_events.c.at, audit_events.c.action, audit_events.c.detail)
                .where(audit_events.c.action.in_(["job.state", "ehr.unreachable",
                                                  "ehr.reachable"]))
                .order_by(audit_events.c.seq))]
    finally:
        store.close()


def _synced(env: Env) -> int:
    return store_counts(env)["synced"]


def test_an_outage_is_waited_out_with_a_worker_running(
    tmp_path: Path, sekmet: Any, monkeypatch: pytest.MonkeyPatch,
) -> None:
    outage_s, n = 15.0, 60
    seed(sekmet.base_url)
    with FaultProxy(sekmet.base_url.removesuffix("/fhir")) as proxy:
        env = _env(tmp_path, proxy, f"sqlite:///{tmp_path / 'peersync.db'}", monkeypatch)
        ids = write_records(tmp_path / "records.jsonl", n, prefix="outage")
        env.run("import", "--source", SOURCE, str(tmp_path / "records.jsonl"))
        started = time.monotonic()
        with workers(env.home, tmp_path / "logs") as pool:
            pool.start(poll=0.2)
            deadline = time.monotonic() + 60
            while _synced(env) < 5 and time.monotonic() < deadline:
                time.sleep(0.05)
            before = _synced(env)
            assert 0 < before < n, before
            requests_before = proxy.counts["requests"]
            proxy.outage(outage_s)
            # the gate closes: `status` says so, and --json keeps its shape (state -> count)
            line = ""
            deadline = time.monotonic() + outage_s - 2
            while "EHR unreachable since" not in line and time.monotonic() < deadline:
                time.sleep(0.2)
                line = env.run("status").stdout
            assert "EHR unreachable since" in line and "records waiting" in line, line
            counts = json.loads(env.run("status", "--json").stdout)
            assert list(counts) == list(ALL_STATES)
            assert proxy.wait_outage_over(outage_s + 30)
            requests_during = proxy.counts["requests"] - requests_before
            back = time.monotonic()
            final = wait_settled(env, n, timeout_s=90, pool=pool)
            caught_up_s = time.monotonic() - back
        elapsed = time.monotonic() - started

    tally = ehr_tally(sekmet.base_url, ids)
    assert_exactly_once(tally, final, n)
    assert final["needs_attention"] == 0
    events = _events(env)
    closed = [e for e in events if e[1] == "ehr.unreachable"]
    opened = [e for e in events if e[1] == "ehr.reachable"]
    failed = [e for e in events if e[1] == "job.state" and e[2].get("error") == "EhrUnavailable"]
    assert closed and opened, [e[1] for e in events if e[1] != "job.state"]
    probes = sum(int(e[2].get("probes") or 0) for e in opened)
    # one probe per interval (1 s, doubling to 2 s): about outage_s / 2, never one per record
    assert probes <= outage_s / 1 + 2, probes
    # the failed tries: the claims in play when the EHR went away (pipelined: up to
    # SyncEngine.SENDING claims in flight and one being planned), then only the probes
    # (each probe claims one record)
    per_batch = 15 // 3
    in_play = SyncEngine.SENDING + 1
    assert len(failed) <= (in_play + 1) * per_batch + probes, (len(failed), probes)
    assert len(failed) < n - before
    assert "EHR unreachable" not in env.run("status").stdout
    print(f"\nOUTAGE records={n}, outage_s={outage_s:.0f}, synced_before={before}, "
          f"gate_closed={len(closed)}, probes={probes}, failed_tries={len(failed)}, "
          f"requests_reaching_proxy_during={requests_during}, caught_up_s={caught_up_s:.1f}, "
          f"duplicates={tally['duplicates']}, lost=0, seconds={elapsed:.1f}", flush=True)


def test_sync_returns_after_max_wait_leaving_records_scheduled(
    tmp_path: Path, sekmet: Any, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Finding 3: `peersync sync` during an outage spends max_wait_s, not the records."""
    seed(sekmet.base_url)
    with FaultProxy(sekmet.base_url.removesuffix("/fhir")) as proxy:
        env = _env(tmp_path, proxy, f"sqlite:///{tmp_path / 'peersync.db'}", monkeypatch,
                   max_wait_s=4, max_attempts=2)
        write_records(tmp_path / "records.jsonl", 8, prefix="down")
        env.run("import", "--source", SOURCE, str(tmp_path / "records.jsonl"))
        proxy.outage(30)  # ended early by the proxy's stop()
        started = time.monotonic()
        result = env.run("sync", expect=None)
        took = time.monotonic() - started
        counts = json.loads(env.run("status", "--json").stdout)
        human = env.run("status").stdout
    assert result.exit_code != 0
    assert 3 <= took < 15, took
    assert counts["retry_scheduled"] + counts["pending"] == 8, counts
    assert counts["retry_scheduled"] >= 1 and counts["needs_attention"] == 0, counts
    assert "EHR unreachable since" in human and "8 records waiting" in human, human
