"""The three scenarios of the reliability matrix, on one cell's stack (harness.stack):

- :func:`run_faults`: 20 % of all requests (reads and writes) fail: 5xx, 429 with
  Retry-After, resets before and after the EHR applied the write, timeouts, 504
  after applying; ``peersync sync`` runs in-process until nothing is left to send;
- :func:`run_kills`: a ``peersync worker`` SIGKILLed at each step of a send (held at
  the proxy before or after the EHR applied it), then a last worker drains the queue;
- :func:`run_outage`: workers running, the proxy refuses every connection for a
  while mid-sync (sekmet keeps running: it is in memory), then answers again.

Each returns the checker's figures (harness.check) with the scenario's own. Each uses
the process's environment (PEERSYNC_HOME through ``monkeypatch``): run one at a time
in a process; tests/reliability/runner.py runs cells side by side in processes of
their own.
"""

from __future__ import annotations

import contextlib
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_durability import UNSETTLED, Workers, store_counts
from tests.reliability.harness import FAULT_RATES, Cell, Stack, check, make_records, stack


@contextlib.contextmanager
def worker_pool(st: Stack) -> Iterator[Workers]:
    assert st.env is not None
    pool = Workers(st.env.home, st.workdir / "logs")
    try:
        yield pool
    finally:
        pool.close()


def wait_settled(st: Stack, timeout_s: float, pool: Workers | None = None) -> dict[str, int]:
    """Poll the store until nothing is left to send (bounded); dead workers fail fast."""
    assert st.env is not None
    deadline = time.monotonic() + timeout_s
    counts = store_counts(st.env)
    while time.monotonic() < deadline:
        counts = store_counts(st.env)
        if not any(counts[s] for s in UNSETTLED):
            return counts
        if pool is not None:
            dead = [p.returncode for p in pool.procs if p.poll() is not None
                    and p.returncode not in (0, -signal.SIGKILL, -signal.SIGTERM)]
            assert not dead, (dead, pool.output())
        time.sleep(0.25)
    return counts


def settle_bound(n: int) -> float:
    """How long a cell may take to drain ``n`` records once nothing stops it (generous:
    cells run side by side on a small machine)."""
    return 120 + 0.3 * n


def run_faults(cell: Cell, n: int, workdir: Path, monkeypatch: pytest.MonkeyPatch,
               *, timeout_s: float = 1.0, rate_scale: float = 1.0) -> dict[str, Any]:
    """``n`` records, 20 % of requests faulted, ``peersync sync`` (in-process) until settled.

    ``timeout_s``: the connector's read timeout; an injected timeout holds the answer
    half a second longer. ``slow_answers`` counts the requests the EHR itself (sekmet,
    the emulator: a loaded machine) took ``timeout_s`` or longer to answer, timeouts
    nobody injected."""
    records = make_records(n, f"f-{cell.name[:6]}")
    with stack(cell, workdir, monkeypatch, records, ehr={"timeout_s": timeout_s},
               hold_s=max(1.5, timeout_s + 0.5), slow_after_s=timeout_s) as st:
        assert st.proxy is not None and st.env is not None
        st.proxy.set_faults(rates={k: v * rate_scale for k, v in FAULT_RATES.items()},
                            max_faults=10 * n)
        started = time.monotonic()
        runs = 0
        counts = store_counts(st.env)
        while runs < 8 and (runs == 0 or any(counts[s] for s in UNSETTLED)):
            st.cli("sync", "--max-wait", "60", expect=None)  # exit 1 while records wait
            runs += 1
            counts = store_counts(st.env)
        elapsed = time.monotonic() - started
        st.proxy.set_faults(max_faults=0)
        result = check(st)
        result.update(scenario="faults", cell=cell.name, faults=st.proxy.faults,
                      requests=st.proxy.counts["requests"], sync_runs=runs, kills=0,
                      outage_s=0, timeout_s=timeout_s,
                      slow_answers=st.proxy.counts["slow_answers"],
                      slowest_s=round(st.proxy.slowest_s, 2), seconds=round(elapsed, 1))
    return result


def run_kills(cell: Cell, n: int, workdir: Path, monkeypatch: pytest.MonkeyPatch
              ) -> dict[str, Any]:
    """A worker SIGKILLed at each of the cell's kill points, then one drains the queue."""
    records = make_records(n, f"k-{cell.name[:6]}")
    kills: list[str] = []
    with stack(cell, workdir, monkeypatch, records, ehr={"timeout_s": 10},
               sync={"lease_s": 2, "renew_every_s": 0.5}) as st:
        assert st.proxy is not None and st.env is not None
        proxy = st.proxy
        proxy.delay_s = 0.01  # a slower EHR, so that a timed kill lands mid-send
        started = time.monotonic()
        with worker_pool(st) as pool:
            for phase, nth, paths in cell.kills:
                pool.kill_at(proxy, phase, nth, paths)
                kills.append(f"{phase}:{'|'.join(paths) or 'any'}#{nth}")
            synced_at_kills = store_counts(st.env)["synced"]
            assert synced_at_kills < n, "the kills came too late"
            final = pool.start()
            wait_settled(st, settle_bound(n), pool)
            final.send_signal(signal.SIGTERM)
            assert final.wait(timeout=30) == 0, pool.output()
        elapsed = time.monotonic() - started
        result = check(st)
        result.update(scenario="kills", cell=cell.name, faults={}, kills=len(kills),
                      kill_points=kills, synced_at_kills=synced_at_kills, outage_s=0,
                      seconds=round(elapsed, 1))
    return result


def run_outage(cell: Cell, n: int, workdir: Path, monkeypatch: pytest.MonkeyPatch,
               *, outage_s: float, workers: int = 1, database_url: str | None = None,
               delay_s: float = 0.05) -> dict[str, Any]:
    """Workers running; once a tenth of the records went out the EHR is unreachable
    (connections refused at the proxy) for ``outage_s``; then it answers again.
    ``delay_s`` slows every write, so that the outage lands mid-sync."""
    records = make_records(n, f"o-{cell.name[:6]}")
    with stack(cell, workdir, monkeypatch, records, database_url=database_url,
               ehr={"timeout_s": 5}, sync={"lease_s": 5, "renew_every_s": 1}) as st:
        assert st.proxy is not None and st.env is not None
        proxy = st.proxy
        proxy.delay_s = delay_s
        started = time.monotonic()
        with worker_pool(st) as pool:
            for _ in range(workers):
                pool.start()
            deadline = time.monotonic() + 60 + 0.15 * n  # epic: the EHR's Encounters paged
            while (at := store_counts(st.env)["synced"]) < max(1, n // 10):
                assert time.monotonic() < deadline, pool.output()
                time.sleep(0.02)
            proxy.outage(outage_s)
            assert proxy.wait_outage_over(outage_s + 30)
            counts = wait_settled(st, settle_bound(n), pool)
            for proc in pool.procs:
                proc.send_signal(signal.SIGTERM)
            codes = [proc.wait(timeout=30) for proc in pool.procs]
        elapsed = time.monotonic() - started
        result = check(st)
        result.update(scenario="outage", cell=cell.name, faults={}, kills=0, outage_s=outage_s,
                      synced_before_outage=at, workers=workers, worker_exits=codes,
                      states_after=dict(counts), seconds=round(elapsed, 1))
    return result
