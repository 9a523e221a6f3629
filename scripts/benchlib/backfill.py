"""``scripts/bench.py backfill``: issue 9's benchmark, every figure from one run.

Phases (each on a fresh sekmet started here on 127.0.0.1, seeded first):

1. raw floor: PeerSync's own transaction bundles, pre-built, POSTed back to back
   on one keep-alive ``requests.Session``;
2. naive: a patient search per record, one POST/PUT per resource, no session;
3. ``peersync import`` + ``peersync sync`` (generic preset, transaction mode) on
   SQLite and on PostgreSQL;
4. mapping alone: records -> serialised bundles, one process (= one core);
5. ``us-core-notes`` single mode through its emulator behind a latency proxy
   (50, 100, 200 ms per request);
6. 1 vs 2 ``peersync worker`` processes on PostgreSQL through the 200 ms proxy: the
   workers started on an empty queue, the records imported once they are ready (as a
   back-fill reaches a running deployment), the rate from the first record stored to
   the last synced (and, beside it, from the workers' launch).

Progress goes to stderr; stdout gets the report, or with ``--json`` exactly one
JSON object.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import signal
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from . import procs
from .records import generate

DEFAULT_PG = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
# (throughput records, single-mode records per latency, records per worker run);
# --n N gives (N, N, N), at least (-, 8, 64). Enough records that a run is steady state
# (many claims of 4 x max_in_flight; the command's own start, ~0.5 s of imports, a small
# share), as a back-fill is, not its first and last claim.
SIZES = {"default": (1000, 1000, 1000), "quick": (40, 16, 64)}
LATENCIES = (0.05, 0.1, 0.2)
WORKER_DELAY = 0.2
# --quick: a smoke run of every phase; one latency, and the workers through 50 ms
QUICK_LATENCIES, QUICK_WORKER_DELAY = (0.05,), 0.05


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def environment(pg: str | None) -> dict[str, Any]:
    req = procs.ROOT / "ehr" / "sekmet-requirements.txt"
    sekmet = next((line.strip() for line in req.read_text().splitlines()
                   if line.lower().startswith("sekmet")), None) if req.exists() else None
    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "cpu_count": os.cpu_count(), "cpus_usable": len(os.sched_getaffinity(0)),
        "machine": f"{platform.system()} {platform.release()} {platform.machine()}",
        "python": platform.python_version(), "sqlite": sqlite3.sqlite_version,
        "postgresql": pg, "sekmet": sekmet,
        "load_average_start": [round(x, 2) for x in os.getloadavg()],
    }


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a and b else None


def _step(name: str, out: dict[str, Any], fn: Any, *args: Any) -> None:
    log(f"{name} ...")
    started = time.perf_counter()
    try:
        out[name] = fn(*args)
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as exc:  # noqa: BLE001 - one phase failing keeps the others' figures
        out[name] = {"error": f"{type(exc).__name__}: {exc}"}
    log(f"{name}: {time.perf_counter() - started:.1f} s: {json.dumps(out[name])[:300]}")


PHASES = ("floor", "naive", "sqlite", "postgresql", "latency", "workers")


def run(n: int | None, quick: bool, pg_url: str, as_json: bool, keep: bool,
        only: frozenset[str] = frozenset(PHASES)) -> int:
    from mappings.profile import default_profile_path, load_profile

    from . import floor
    from . import peersync_runs as ps

    sizes = SIZES["quick" if quick else "default"]
    n_main = n or sizes[0]
    n_lat, n_workers = sizes[1], sizes[2]
    if n is not None:
        n_lat, n_workers = max(8, n), max(64, n)
    latencies = QUICK_LATENCIES if quick else LATENCIES
    worker_delay = QUICK_WORKER_DELAY if quick else WORKER_DELAY
    pg_version = ps.pg_version(pg_url)
    report: dict[str, Any] = {"environment": environment(pg_version), "measured_under_load": None,
                              "sizes": {}, "phases": {}}
    phases: dict[str, Any] = report["phases"]
    profile = load_profile(default_profile_path())
    timeout = 600.0
    wall0 = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="peersync-bench-"))
    try:
        data = generate(n_main)
        jsonl = data.write_jsonl(tmp / "records.jsonl")
        lat_data, w_data = generate(n_lat, seed=10), generate(n_workers, seed=11)
        lat_jsonl = lat_data.write_jsonl(tmp / "latency.jsonl")
        w_jsonl = w_data.write_jsonl(tmp / "workers.jsonl")
        report["sizes"] = {"throughput": data.stats, "single_mode_per_latency": n_lat,
                           "workers_phase": n_workers,
                           "latencies_ms": [round(d * 1000) for d in latencies],
                           "workers_latency_ms": round(worker_delay * 1000),
                           "jsonl_mib": round(jsonl.stat().st_size / 2**20, 2)}
        log(f"{n_main} record versions ({report['sizes']['jsonl_mib']} MiB JSONL) in {tmp}")

        def floor_phases() -> dict[str, Any]:
            with ps.ehr(tmp, data, profile) as (url, _, seeded):
                planner = floor.Planner(data, seeded, profile, url)
                return floor.raw_floor(planner, url)

        def naive_phase() -> dict[str, Any]:
            with ps.ehr(tmp, data, profile) as (url, _, seeded):
                planner = floor.Planner(data, seeded, profile, url)
                return floor.naive(planner, url)

        if "floor" in only:
            _step("raw_floor", phases, floor_phases)
            if "mapping" in phases["raw_floor"]:
                phases["mapping"] = phases["raw_floor"].pop("mapping")
        if "naive" in only:
            _step("naive", phases, naive_phase)
        if "sqlite" in only:
            _step("peersync_sqlite", phases, ps.import_sync, tmp, data, jsonl, profile,
                  "sqlite:///peersync.db", "sqlite", timeout)
        if "postgresql" not in only:
            pass
        elif pg_version:
            def pg_phase() -> dict[str, Any]:
                with ps.pg_database(pg_url) as url:
                    return ps.import_sync(tmp, data, jsonl, profile, url, "pg", timeout)
            _step("peersync_postgresql", phases, pg_phase)
        else:
            phases["peersync_postgresql"] = {"skipped": f"no PostgreSQL at {pg_url}"}
        for delay in latencies if "latency" in only else ():
            _step(f"single_us_core_{round(delay * 1000)}ms", phases, ps.single_latency, tmp,
                  lat_data, lat_jsonl, profile, delay, timeout)
        for count in (1, 2) if "workers" in only else ():
            if pg_version:
                _step(f"workers_{count}", phases, ps.workers, tmp, w_data, w_jsonl, profile,
                      pg_url, count, worker_delay, 300.0)
            else:
                phases[f"workers_{count}"] = {"skipped": f"no PostgreSQL at {pg_url}"}
    finally:
        procs.stop_all()
        if not keep:
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
    env = report["environment"]
    env["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    report["measured_under_load"] = max(env["load_average_start"][0],
                                        env["load_average_end"][0]) >= 0.5 * (env["cpu_count"] or 1)
    report["wall_s"] = round(time.perf_counter() - wall0, 1)
    report["figures"] = figures(phases)
    if as_json:
        sys.stdout.write(json.dumps(report, sort_keys=False) + "\n")
    else:
        print_report(report)
    return 1 if any("error" in v for v in phases.values()) else 0


def _get(phases: dict[str, Any], *path: str) -> Any:
    value: Any = phases
    for step in path:
        value = value.get(step) if isinstance(value, dict) else None
    return value


def figures(phases: dict[str, Any]) -> dict[str, Any]:
    raw = _get(phases, "raw_floor", "records_per_s")
    naive = _get(phases, "naive", "records_per_s")
    sync_sqlite = _get(phases, "peersync_sqlite", "sync", "records_per_s")
    sync_pg = _get(phases, "peersync_postgresql", "sync", "records_per_s")
    w1 = _get(phases, "workers_1", "records_per_s")
    w2 = _get(phases, "workers_2", "records_per_s")
    rss = [_get(phases, p, k, "peak_rss_mib") for p in ("peersync_sqlite", "peersync_postgresql")
           for k in ("import", "sync")]
    rss += [_get(phases, f"single_us_core_{ms}ms", "peak_rss_mib") for ms in (50, 100, 200)]
    for k in ("workers_1", "workers_2"):
        rss += _get(phases, k, "peak_rss_mib") or []
    single = {f"{ms}ms": _get(phases, f"single_us_core_{ms}ms", "records_per_s")
              for ms in (50, 100, 200) if f"single_us_core_{ms}ms" in phases}
    return {
        "raw_floor_records_per_s": raw, "naive_records_per_s": naive,
        "peersync_sync_sqlite_records_per_s": sync_sqlite,
        "peersync_sync_postgresql_records_per_s": sync_pg,
        "peersync_sqlite_over_raw_floor": _ratio(sync_sqlite, raw),
        "peersync_sqlite_over_naive": _ratio(sync_sqlite, naive),
        "peersync_postgresql_over_raw_floor": _ratio(sync_pg, raw),
        "peersync_postgresql_over_naive": _ratio(sync_pg, naive),
        "mapping_records_per_cpu_s": _get(phases, "mapping", "records_per_cpu_s"),
        "single_us_core_records_per_s": single,
        "workers_1_records_per_s": w1, "workers_2_records_per_s": w2,
        "workers_2_over_1": _ratio(w2, w1),
        "workers_2_over_1_launch_to_last_sync": _ratio(
            _per(phases, "workers_2"), _per(phases, "workers_1")),
        "peak_rss_mib_max": max((r for r in rss if r), default=None),
    }


def _per(phases: dict[str, Any], key: str) -> float | None:
    n, span = _get(phases, key, "synced"), _get(phases, key, "launch_to_last_synced_s")
    return n / span if n and span else None


def print_header(title: str, report: dict[str, Any], *, sekmet: bool = True) -> None:
    """A report's first two lines: what ran when, and on what (the :func:`environment`)."""
    env = report["environment"]
    load = " (MEASURED UNDER LOAD)" if report["measured_under_load"] else ""
    ehr = f"{env['sekmet'] or 'sekmet'}, " if sekmet else ""
    print(f"PeerSync {title}, {env['date']}{load}")
    print(f"  {env['cpu_count']} CPUs, {env['machine']}, Python {env['python']}, SQLite "
          f"{env['sqlite']}, PostgreSQL {env['postgresql'] or '-'}, {ehr}"
          f"load {env['load_average_start']} -> {env['load_average_end']}")


def print_report(report: dict[str, Any]) -> None:
    f, p = report["figures"], report["phases"]
    print_header("back-fill benchmark", report)
    s = report["sizes"]
    t = s.get("throughput", {})
    print(f"  records: {t.get('record_versions')} versions ({t.get('amendments')} amendments, "
          f"{t.get('part2')} Part 2 with consent, {t.get('patients')} patients, "
          f"{t.get('specialists')} specialists, notes up to {t.get('note_bytes_max')} B, mean "
          f"{t.get('note_bytes_mean')} B); single mode {s.get('single_mode_per_latency')} per "
          f"latency; workers {s.get('workers_phase')}")
    for name, value in p.items():
        print(f"  {name:<24} {_line(value)}")
    print("  ratios: PeerSync/raw floor "
          f"{f['peersync_sqlite_over_raw_floor']} (SQLite), "
          f"{f['peersync_postgresql_over_raw_floor']} (PostgreSQL); PeerSync/naive "
          f"{f['peersync_sqlite_over_naive']} (SQLite), {f['peersync_postgresql_over_naive']} "
          f"(PostgreSQL); 2 workers/1 worker {f['workers_2_over_1']} "
          f"(from the workers' launch, start-up included: "
          f"{f['workers_2_over_1_launch_to_last_sync']})")
    print(f"  peak RSS of any PeerSync process: {f['peak_rss_mib_max']} MiB; "
          f"run took {report['wall_s']} s")


def _line(v: dict[str, Any]) -> str:
    if "error" in v or "skipped" in v:
        return str(v.get("error") or v.get("skipped"))
    if "import" in v:
        i, s = v["import"], v["sync"]
        return (f"import {i['records_per_s']} rec/s ({i['records_per_s_wall']} with start-up; "
                f"{i['peak_rss_mib']} MiB), sync {s['records_per_s']} rec/s "
                f"({s['records_per_s_wall']} with start-up; {s['peak_rss_mib']} MiB), "
                f"end to end {v['end_to_end']['records_per_s']} rec/s; {v['synced']} synced; "
                f"`status` {v['status_wall_s']} s")
    if "records_per_cpu_s" in v:
        return (f"{v['records_per_cpu_s']} records per CPU-second "
                f"({v['records_per_s_wall']} rec/s wall)")
    if "workers" in v:
        return (f"{v['records_per_s']} rec/s ({v['synced']} synced in {v['seconds']} s from "
                f"the first record stored, {v['requests']} requests; ready {v['ready_s']} s "
                f"after launch, {v['records_per_s_from_launch']} rec/s from launch); "
                f"RSS {v['peak_rss_mib']} MiB; CPU s {v['cpu_s']}")
    extra = f", {v['requests_per_record']} requests/record" if "requests_per_record" in v \
        else f", {v.get('requests')} requests"
    rss = f"; RSS {v['peak_rss_mib']} MiB" if "peak_rss_mib" in v else ""
    synced = f", {v['synced']} synced" if "synced" in v else ""
    return f"{v['records_per_s']} rec/s ({v['records']} in {v['seconds']} s{synced}{extra}){rss}"


def main(n: int | None, quick: bool, pg_url: str, as_json: bool, keep: bool,
         phases: str = "all") -> int:
    only = frozenset(PHASES) if phases == "all" else \
        frozenset(p.strip() for p in phases.split(",") if p.strip())
    unknown = only - set(PHASES)
    if unknown:
        print(f"bench: unknown phase(s) {', '.join(sorted(unknown))}; "
              f"choose from {', '.join(PHASES)}", file=sys.stderr)
        return 2

    def on_term(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even where started with it ignored
    try:
        return run(n, quick, pg_url, as_json, keep, only)
    except KeyboardInterrupt:
        log("interrupted: everything started was stopped")
        return 130
    finally:
        procs.stop_all()
