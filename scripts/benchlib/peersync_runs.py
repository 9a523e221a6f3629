"""PeerSync itself, as a user runs it: ``peersync init/import/sync`` and ``peersync worker``.

Each command is a child process (``procs``), so each has its own peak RSS;
wall times include the interpreter's start, as a user's would. Each run gets a
fresh sekmet (seeded with the dataset's Patients, Practitioners and agency) and
a fresh store: a SQLite file, or a PostgreSQL database of its own, created and
dropped here as ``tests/conftest.py`` does.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from . import procs
from .latency import LatencyProxy
from .records import Dataset, Seeded, seed

UNFINISHED = ("pending", "in_flight", "retry_scheduled", "unknown")


@contextlib.contextmanager
def pg_database(admin_url: str) -> Iterator[str]:
    """A PostgreSQL database of our own on ``admin_url``'s server, dropped afterwards."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    name = f"peersync_bench_{uuid.uuid4().hex[:12]}"
    engine = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        procs.stop_all()  # nothing of ours may still hold a connection to it
        with contextlib.suppress(Exception), engine.connect() as conn:
            conn.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                              "WHERE datname = :n"), {"n": name})
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        engine.dispose()


def pg_version(admin_url: str) -> str | None:
    from sqlalchemy import create_engine, text

    engine = create_engine(admin_url, connect_args={"connect_timeout": 3})
    try:
        with engine.connect() as conn:
            return str(conn.execute(text("SHOW server_version")).scalar())
    except Exception:  # noqa: BLE001 - no server: the PostgreSQL phases are skipped
        return None
    finally:
        engine.dispose()


class Home:
    """A PeerSync deployment folder (PEERSYNC_HOME) and the commands run in it."""

    def __init__(self, folder: Path, *, ehr_url: str, database_url: str, preset: str,
                 timeout_s: float) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.env = dict(os.environ, PEERSYNC_HOME=str(folder), PYTHONUNBUFFERED="1")
        for name in ("PEERSYNC_EHR_URL", "PEERSYNC_DATABASE_URL"):
            self.env.pop(name, None)
        self.database_url = database_url
        self.timeout_s = timeout_s
        self.run("init", "--ehr-url", ehr_url, "--database-url", database_url,
                 "--preset", preset)

    def run(self, *args: str, timeout_s: float | None = None) -> procs.Done:
        return procs.run(list(args), env=self.env, log=self.folder / f"{args[0]}.log",
                         timeout_s=timeout_s or self.timeout_s)

    def status(self) -> tuple[dict[str, int], float]:
        done = self.run("status", "--json")
        return json.loads(done.output.strip().splitlines()[-1]), done.wall_s


def _rate(n: int, seconds: float) -> float:
    return round(n / seconds, 1) if seconds > 0 else 0.0


def _timed(n: int, done: procs.Done) -> dict[str, Any]:
    """Rates inside the command (``records_per_s``) and as a user sees it (start-up included)."""
    inner = done.inner_s or done.wall_s
    return {"seconds": round(inner, 3), "records_per_s": _rate(n, inner),
            "wall_s": round(done.wall_s, 3), "records_per_s_wall": _rate(n, done.wall_s),
            "peak_rss_mib": round(done.peak_rss_mib, 1)}


@contextlib.contextmanager
def ehr(tmp: Path, data: Dataset, profile: Any, *, preset: str = "generic",
        delay_s: float | None = None, cpu: dict[str, Any] | None = None,
        ) -> Iterator[tuple[str, LatencyProxy | None, Seeded]]:
    """A fresh seeded sekmet; for a preset, its emulator; with ``delay_s``, the latency proxy.
    ``cpu``: a dict its ``ehr_pid`` is put in (sekmet's process, for its CPU time)."""
    from connector.ehr_sandbox import SekmetServer

    with ExitStack() as stack:
        sekmet = stack.enter_context(SekmetServer(tmp / f"ehr-{uuid.uuid4().hex[:6]}"))
        if cpu is not None and sekmet._proc is not None:
            cpu["ehr_pid"] = sekmet._proc.pid
        seeded = seed(sekmet.base_url, profile, data, device=preset == "generic")
        url = sekmet.base_url
        if preset != "generic":
            from tests.emulators import EhrEmulator

            url = stack.enter_context(EhrEmulator(url, preset)).base_url
        proxy = None
        if delay_s is not None:
            proxy = stack.enter_context(LatencyProxy(url, delay_s))
            url = proxy.base_url
        yield url, proxy, seeded


def import_sync(tmp: Path, data: Dataset, jsonl: Path, profile: Any, database_url: str,
                label: str, timeout_s: float) -> dict[str, Any]:
    """``peersync import`` then ``peersync sync`` (transaction mode, generic preset)."""
    n = len(data.records)
    with ehr(tmp, data, profile) as (url, _, _):
        home = Home(tmp / f"home-{label}", ehr_url=url, database_url=database_url,
                    preset="generic", timeout_s=timeout_s)
        imported = home.run("import", str(jsonl))
        synced = home.run("sync", "--max-wait", "5")
        counts, status_s = home.status()
    total = imported.wall_s + synced.wall_s
    return {
        "records": n, "synced": counts.get("synced", 0),
        "import": _timed(n, imported), "sync": _timed(n, synced),
        "end_to_end": {"seconds": round(total, 3), "records_per_s": _rate(n, total)},
        "status_wall_s": round(status_s, 3),
        "states": {k: v for k, v in counts.items() if v},
    }


def single_latency(tmp: Path, data: Dataset, jsonl: Path, profile: Any, delay_s: float,
                   timeout_s: float) -> dict[str, Any]:
    """``us-core-notes`` (single mode) through the emulator behind a latency proxy."""
    n = len(data.records)
    ms = round(delay_s * 1000)
    with ehr(tmp, data, profile, preset="us-core-notes", delay_s=delay_s) as (url, proxy, _):
        assert proxy is not None
        home = Home(tmp / f"home-single-{ms}", ehr_url=url,
                    database_url="sqlite:///peersync.db", preset="us-core-notes",
                    timeout_s=timeout_s)
        home.run("import", str(jsonl))
        before = proxy.requests
        synced = home.run("sync", "--max-wait", "5")
        sent = proxy.requests - before
        counts, _ = home.status()
    return {"latency_ms": ms, "synced": counts.get("synced", 0), "records": n,
            **_timed(n, synced), "requests": sent,
            "requests_per_record": round(sent / n, 2) if n else 0,
            "states": {k: v for k, v in counts.items() if v}}


def workers(tmp: Path, data: Dataset, jsonl: Path, profile: Any, admin_url: str, count: int,
            delay_s: float, timeout_s: float) -> dict[str, Any]:
    """``count`` ``peersync worker`` processes on PostgreSQL, us-core-notes, through the proxy.

    As a back-fill reaches a running deployment: the workers are started on an empty
    queue and, once each says it is syncing (interpreter, imports and the FHIR models
    loaded), the records are imported; the rate is from the first record stored to the
    last one synced. The launch-to-last figure (start-up included) is reported beside it.
    """
    import resource

    from sqlalchemy import create_engine, text

    n = len(data.records)
    cpu: dict[str, Any] = {}
    with pg_database(admin_url) as db_url, \
            ehr(tmp, data, profile, preset="us-core-notes", delay_s=delay_s,
                cpu=cpu) as (url, proxy, _):
        assert proxy is not None
        home = Home(tmp / f"home-workers-{count}", ehr_url=url, database_url=db_url,
                    preset="us-core-notes", timeout_s=timeout_s)
        engine = create_engine(db_url)
        try:
            launched_at = datetime.now(UTC)
            started = time.perf_counter()
            children = [procs.Child(procs.peersync_cmd() + ["worker", "--poll", "0.2"],
                                    env=home.env, log=home.folder / f"worker-{i}.log")
                        for i in range(count)]
            deadline = time.monotonic() + timeout_s
            while not all(" syncing to " in c.log.read_text("utf-8", "replace")
                          for c in children if c.log.exists()) \
                    or not all(c.log.exists() for c in children):
                if any(c.poll() is not None for c in children):
                    raise RuntimeError(f"a worker exited early; see {home.folder}/worker-*.log")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{count} worker(s): not ready after {timeout_s:.0f} s")
                time.sleep(0.05)
            ready_s = time.perf_counter() - started
            ehr_cpu0 = procs.cpu_s(cpu["ehr_pid"]) if "ehr_pid" in cpu else None
            me0 = resource.getrusage(resource.RUSAGE_SELF)
            workers_cpu0 = [procs.cpu_s(c.proc.pid) or 0.0 for c in children]
            home.run("import", str(jsonl))
            while True:
                with engine.connect() as conn:
                    rows: dict[str, int] = dict(conn.execute(text(
                        "SELECT state, count(*) FROM jobs GROUP BY state")).all())
                if not any(rows.get(s) for s in UNFINISHED):
                    break
                if any(c.poll() is not None for c in children):
                    raise RuntimeError(f"a worker exited early; see {home.folder}/worker-*.log")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{count} worker(s): not done after {timeout_s:.0f} s")
                time.sleep(0.1)
            me1 = resource.getrusage(resource.RUSAGE_SELF)
            ehr_cpu1 = procs.cpu_s(cpu["ehr_pid"]) if "ehr_pid" in cpu else None
            workers_cpu1 = [procs.cpu_s(c.proc.pid) or 0.0 for c in children]
            with engine.connect() as conn:
                first, last = conn.execute(text(
                    "SELECT min(created_at), max(synced_at) FROM jobs")).one()
        finally:
            engine.dispose()
        for child in children:
            child.terminate()
        done = [child.wait(30) for child in children]
    seconds = (last - first).total_seconds()
    to_last = (last - launched_at).total_seconds()
    return {"workers": count, "latency_ms": round(delay_s * 1000), "records": n,
            "synced": rows.get("synced", 0), "seconds": round(seconds, 3),
            "records_per_s": _rate(n, seconds),
            "ready_s": round(ready_s, 2),
            "launch_to_last_synced_s": round(to_last, 3),
            "records_per_s_from_launch": _rate(n, to_last),
            "requests": proxy.requests,
            "peak_rss_mib": [round(d.peak_rss_mib, 1) for d in done],
            # where the 2 cores went while the records were imported and synced: each
            # worker, sekmet, and this process (the emulator and the latency proxy, threads
            # of one interpreter); PostgreSQL and the import command not counted
            "cpu_s": {"workers": [round(b - a, 2) for a, b in zip(workers_cpu0, workers_cpu1,
                                                                    strict=True)],
                      "ehr": round(ehr_cpu1 - ehr_cpu0, 2)
                      if ehr_cpu0 is not None and ehr_cpu1 is not None else None,
                      "emulator_and_proxy": round(me1.ru_utime + me1.ru_stime
                                                  - me0.ru_utime - me0.ru_stime, 2)},
            "states": {k: v for k, v in rows.items() if v}}
