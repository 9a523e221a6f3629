"""``scripts/bench.py pages``: the admin pages and ``peersync status`` on a large store (issue 9).

Per database (SQLite file in a temporary folder; PostgreSQL: a database of its
own, created and dropped): ``peersync init`` (the migrations), a bulk seed of
N record versions and M audit rows (:mod:`.seed`; the audit chain does **not**
verify), then

- each page view ``--requests`` times (after 2 warm-up requests) through Flask's
  test client **in this process** (no HTTP server, no network: what is measured
  is the view, its queries and its template), logged in as an admin (or, for
  one view, as a specialist): p50/p95/max in ms;
- ``peersync status`` and ``peersync status --json`` as subprocesses (the venv's
  console script, interpreter start-up included), 1 warm-up then the median and
  max of 5 runs.

The dashboard's "EHR reachable" check points at a closed port on 127.0.0.1 (a
refused connection, cached for 60 s as in production).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .backfill import DEFAULT_PG, environment, log, print_header
from .seed import seed_store

ROOT = Path(__file__).resolve().parents[2]
TARGET_PAGE_MS = 100.0
TARGET_STATUS_S = 0.5
QUIET_PRESSURE = 20.0  # % of the last 10 s with a task waiting for a CPU
ADMIN_PASSWORD = "bench-admin-password-1"  # noqa: S105 - a throw-away local store
SPECIALIST = "S-112"  # one of the busiest staff ids in the seed
_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')
_OLDER = re.compile(r'<a href="([^"]+)">older &rarr;</a>')


def _views(client: Any) -> list[tuple[str, str]]:
    """(name, URL) of every view measured; URLs that depend on the data are read from it."""
    response = client.get("/records/")
    if response.status_code != 200:
        raise RuntimeError(f"/records/: HTTP {response.status_code}")
    first = response.get_data(as_text=True)
    older = _OLDER.search(first)
    if older is None:
        raise RuntimeError("the records page has no 'older' link")
    page2 = older.group(1).replace("&amp;", "&")
    detail = re.search(r'href="(/records/\d+)"', first)
    year_ago = time.gmtime(time.time() - 365 * 86400)
    month = time.strftime("%Y-%m", year_ago)
    return [
        ("dashboard", "/dashboard/"),
        ("records", "/records/"),
        ("records_page_2 (the older link)", page2),
        ("records_page_2000 (?page=, offset 99,950)", "/records/?page=2000"),
        ("records_state_needs_attention", "/records/?state=needs_attention"),
        ("records_state_synced", "/records/?state=synced"),
        ("records_state_waiting_patient", "/records/?state=waiting_patient"),
        ("records_q_error_text", "/records/?q=multiple"),
        ("records_q_record_id (no match)", "/records/?q=ps-2025-0123456"),
        ("records_specialist", f"/records/?specialist={SPECIALIST}"),
        ("records_source", "/records/?source=csv-import"),
        ("records_month_a_year_ago", f"/records/?from={month}-01&to={month}-28"),
        ("records_needs_attention_and_month",
         f"/records/?state=needs_attention&from={month}-01&to={month}-28"),
        ("record_detail (extra: not a target)", detail.group(1) if detail else "/records/1"),
    ]


def _log_in(app: Any, name: str, password: str) -> Any:
    client = app.test_client()
    page = client.get("/login").get_data(as_text=True)
    match = _CSRF.search(page)
    assert match, "no CSRF token on /login"
    response = client.post("/login", data={"name": name, "password": password,
                                           "csrf_token": match.group(1)})
    if response.status_code != 302:
        raise RuntimeError(f"login as {name} failed: {response.status_code}")
    return client


def cpu_pressure() -> float | None:
    """The share of the last 10 s in which a runnable task waited for a CPU (Linux PSI)."""
    try:
        line = Path("/proc/pressure/cpu").read_text().splitlines()[0]
    except (OSError, IndexError):
        return None
    return float(line.split()[1].split("=")[1])


def settle(max_s: float) -> float | None:
    """Wait up to ``max_s`` for a quiet machine (CPU pressure under QUIET_PRESSURE %), so
    that other work on a shared machine shows in the figures as little as it can; the
    pressure at the end is recorded with each figure."""
    deadline = time.monotonic() + max_s
    pressure = cpu_pressure()
    while pressure is not None and pressure >= QUIET_PRESSURE and time.monotonic() < deadline:
        time.sleep(1)
        pressure = cpu_pressure()
    return pressure


def _percentiles(times: list[float]) -> dict[str, float]:
    ordered = sorted(times)
    p95 = ordered[min(len(ordered) - 1, max(0, round(0.95 * len(ordered)) - 1))]
    return {"p50_ms": round(statistics.median(ordered) * 1000, 1),
            "p95_ms": round(p95 * 1000, 1), "max_ms": round(ordered[-1] * 1000, 1)}


def measure_pages(config: Path, requests: int, settle_s: float = 0) -> dict[str, Any]:
    from connector.accounts import add_user
    from connector.config import load_config
    from connector.store import Store
    from webapp import close_app, create_app

    store = Store.from_url(load_config(config).database_url)
    try:
        add_user(store, "bench-admin", role="admin", password=ADMIN_PASSWORD, actor="bench")
        add_user(store, "bench-specialist", role="specialist", specialist_id=SPECIALIST,
                 password=ADMIN_PASSWORD, actor="bench")
    finally:
        store.close()
    app = create_app({"PEERSYNC_CONFIG": str(config), "SECRET_KEY": "bench-secret-key",
                      "SYNC_ON_ACTION": False, "EHR_CHECK_TIMEOUT_S": 1})
    out: dict[str, Any] = {}
    try:
        admin = _log_in(app, "bench-admin", ADMIN_PASSWORD)
        specialist = _log_in(app, "bench-specialist", ADMIN_PASSWORD)
        views = [(name, url, admin) for name, url in _views(admin)]
        views.insert(2, ("records_as_specialist", "/records/", specialist))
        for name, url, client in views:
            pressure = settle(settle_s)
            times: list[float] = []
            cpu: list[float] = []
            for i in range(requests + 2):
                started, cpu0 = time.perf_counter(), time.process_time()
                response = client.get(url)
                took, cpu1 = time.perf_counter() - started, time.process_time() - cpu0
                if response.status_code != 200:
                    raise RuntimeError(f"{url}: HTTP {response.status_code}")
                if i >= 2:
                    times.append(took)
                    cpu.append(cpu1)
            total = re.search(r"(\d+) record version\(s\)", response.get_data(as_text=True))
            out[name] = {"url": url, **_percentiles(times),
                         # this process's CPU (the view, SQLite's work; not PostgreSQL's)
                         "cpu_p50_ms": round(statistics.median(cpu) * 1000, 1),
                         "cpu_pressure_before": pressure, "cpu_pressure_after": cpu_pressure(),
                         "shown_total": int(total.group(1)) if total else None}
            log(f"  {name:<44} p50 {out[name]['p50_ms']:>7} ms  p95 {out[name]['p95_ms']:>7} ms"
                f"  (CPU p50 {out[name]['cpu_p50_ms']} ms; CPU pressure {pressure} -> "
                f"{out[name]['cpu_pressure_after']} %)")
    finally:
        close_app(app)
    return out


def _env(home: Path) -> dict[str, str]:
    """A ``peersync`` child's environment: this home, and this tree's code first (the
    benchmark of another checkout measures that checkout, not the installed one)."""
    env = dict(os.environ, PEERSYNC_HOME=str(home), PYTHONPATH=str(ROOT))
    for name in ("PEERSYNC_EHR_URL", "PEERSYNC_DATABASE_URL", "PEERSYNC_CONFIG"):
        env.pop(name, None)
    return env


def measure_status(home: Path, runs: int = 5, settle_s: float = 0) -> dict[str, Any]:
    exe = Path(sys.executable).with_name("peersync")
    env = _env(home)
    out: dict[str, Any] = {}
    for label, args in (("status", ["status"]), ("status_json", ["status", "--json"])):
        pressure = settle(settle_s)
        walls = []
        for i in range(runs + 1):
            started = time.perf_counter()
            done = subprocess.run([str(exe), *args], env=env, capture_output=True, text=True,
                                  timeout=120, check=False)
            wall = time.perf_counter() - started
            if done.returncode != 0:
                raise RuntimeError(f"peersync {' '.join(args)}: {done.stderr.strip()[-300:]}")
            if i:
                walls.append(wall)
        out[label] = {"median_s": round(statistics.median(walls), 3),
                      "max_s": round(max(walls), 3), "runs": runs,
                      "cpu_pressure_before": pressure, "cpu_pressure_after": cpu_pressure()}
        log(f"  peersync {' '.join(args):<14} median {out[label]['median_s']} s")
    return out


@contextlib.contextmanager
def _database(kind: str, folder: Path, pg_url: str) -> Iterator[str]:
    if kind == "sqlite":
        yield f"sqlite:///{folder / 'peersync.db'}"
        return
    from .peersync_runs import pg_database

    with pg_database(pg_url) as url:
        yield url


def run_one(kind: str, tmp: Path, pg_url: str, records: int, audit: int,
            requests: int, settle_s: float) -> dict[str, Any]:
    from connector.ehr_sandbox import free_port

    home = tmp / f"home-{kind}"
    home.mkdir()
    with _database(kind, home, pg_url) as url:
        subprocess.run([str(Path(sys.executable).with_name("peersync")), "init",
                        "--database-url", url,
                        "--ehr-url", f"http://127.0.0.1:{free_port()}/fhir"],
                       env=_env(home), check=True, capture_output=True, timeout=300)
        log(f"{kind}: seeding {records:,} records and {audit:,} audit rows")
        seeded = seed_store(url, records=records, audit=audit, log=log)
        log(f"{kind}: seeded in {seeded['total_s']} s; pages ({requests} requests each)")
        pages = measure_pages(home / "peersync.toml", requests, settle_s)
        status = measure_status(home, settle_s=settle_s)
    return {"database": kind, "seed": seeded, "pages": pages, "status": status}


def _verdict(result: dict[str, Any]) -> dict[str, Any]:
    worst = max((v["p95_ms"], k) for k, v in result["pages"].items() if "extra" not in k)
    status = max(result["status"]["status"]["median_s"],
                 result["status"]["status_json"]["median_s"])
    return {"worst_page_p95_ms": worst[0], "worst_page": worst[1],
            "pages_under_100ms": worst[0] < TARGET_PAGE_MS,
            "status_median_s": status, "status_under_0_5s": status < TARGET_STATUS_S}


def print_report(report: dict[str, Any]) -> None:
    print_header("pages benchmark", report, sekmet=False)
    s = report["sizes"]
    print(f"  {s['records']:,} record versions, {s['audit']:,} audit rows (chain NOT valid: "
          f"bulk-seeded); {s['requests']} requests per view, Flask test client in-process")
    for kind, result in report["databases"].items():
        if "error" in result or "skipped" in result:
            print(f"  {kind}: {result.get('error') or result.get('skipped')}")
            continue
        seed = result["seed"]
        print(f"\n  {kind}: seeded in {seed['total_s']} s {seed['seconds']}")
        print(f"    {'view':<46} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8} {'CPU p50':>8} "
              f"{'total':>8} {'PSI %':>11}")
        for name, v in result["pages"].items():
            psi = f"{v.get('cpu_pressure_before')}-{v.get('cpu_pressure_after')}"
            print(f"    {name:<46} {v['p50_ms']:>8} {v['p95_ms']:>8} {v['max_ms']:>8} "
                  f"{v.get('cpu_p50_ms', ''):>8} "
                  f"{v['shown_total'] if v['shown_total'] is not None else '':>8} {psi:>11}")
        for name, v in result["status"].items():
            print(f"    peersync {name:<37} {v['median_s']:>8} s median, {v['max_s']} s max")
        verdict = result["verdict"]
        print(f"    worst p95 {verdict['worst_page_p95_ms']} ms ({verdict['worst_page']}): "
              f"{'OK' if verdict['pages_under_100ms'] else 'OVER'} the 100 ms target; status "
              f"{verdict['status_median_s']} s: "
              f"{'OK' if verdict['status_under_0_5s'] else 'OVER'} the 0.5 s target")
    print(f"\n  run took {report['wall_s']} s")


def main(records: int, audit: int, db: str, requests: int, as_json: bool,
         pg_url: str = DEFAULT_PG, keep: bool = False, settle_s: float = 60) -> int:
    from .peersync_runs import pg_version

    kinds = ["sqlite", "postgresql"] if db == "both" else [db]
    version = pg_version(pg_url) if "postgresql" in kinds else None
    report: dict[str, Any] = {
        "environment": environment(version), "measured_under_load": None,
        "sizes": {"records": records, "audit": audit, "requests": requests,
                  "settle_s": settle_s, "quiet_cpu_pressure": QUIET_PRESSURE},
        "notes": ["audit rows are bulk-inserted with random MACs: the chain does not verify",
                  "pages measured in-process with Flask's test client (no HTTP server)",
                  "status: the venv's peersync console script as a subprocess",
                  "before each view and each status series: up to settle_s for CPU pressure "
                  "(Linux PSI avg10) under quiet_cpu_pressure %; recorded with each figure"],
        "databases": {},
    }
    wall0 = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="peersync-pages-"))
    try:
        for kind in kinds:
            if kind == "postgresql" and not version:
                report["databases"][kind] = {"skipped": f"no PostgreSQL at {pg_url}"}
                continue
            try:
                result = run_one(kind, tmp, pg_url, records, audit, requests, settle_s)
                result["verdict"] = _verdict(result)
            except (KeyboardInterrupt, SystemExit):
                raise
            except Exception as exc:  # noqa: BLE001 - one database failing keeps the other's
                result = {"error": f"{type(exc).__name__}: {exc}"}
            report["databases"][kind] = result
    finally:
        if keep:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    env = report["environment"]
    env["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    report["measured_under_load"] = max(env["load_average_start"][0],
                                        env["load_average_end"][0]) >= 0.5 * (env["cpu_count"] or 1)
    report["wall_s"] = round(time.perf_counter() - wall0, 1)
    if as_json:
        sys.stdout.write(json.dumps(report) + "\n")
    else:
        print_report(report)
    return 1 if any("error" in r for r in report["databases"].values()) else 0
