"""Benchmarks (figures for the README), not tests: speed and memory are measured here.

    .venv/bin/python scripts/bench.py import 100000          # intake + store, SQLite
    .venv/bin/python scripts/bench.py sync 2000 --mode transaction
    .venv/bin/python scripts/bench.py sync 500 --mode single
    .venv/bin/python scripts/bench.py sync 300 --preset epic   # through the Epic emulator
    .venv/bin/python scripts/bench.py backfill [--n N] [--quick] [--json]   # issue 9
    .venv/bin/python scripts/bench.py pages [--records N] [--audit N] [--db both] [--json]
                                            [--requests N] [--settle S]

`import` generates N records (JSON Lines) and times `peersync import` into a
fresh SQLite store; `sync` starts a local sekmet (in memory), seeds the sample
patients, imports N records and times `peersync sync`; with `--preset` it syncs
through that EHR's strict emulator (tests/emulators.py) with the EHR's own
practitioners and encounters seeded first. Each prints records/s and the
process's peak RSS.

`backfill` is issue 9's side-by-side benchmark in one run (raw floor, naive
script, `peersync import`/`sync` on SQLite and PostgreSQL, mapping alone,
us-core-notes single mode through 50/100/200 ms of latency, 1 vs 2 workers on
PostgreSQL): see scripts/benchlib/backfill.py. Default sizes: 1,000 record
versions for the throughput phases, per latency and for the worker runs
(about 5 minutes; `--n N`: N for each); `--quick` is a ~20-30-second smoke
run (40, 16 at 50 ms only, 64 with the workers at 50 ms); `--json` prints one
JSON object on stdout (progress goes to stderr).

`pages` is issue 9's admin-page benchmark: a fresh migrated store per database
(SQLite; PostgreSQL in a database of its own), bulk-seeded with `--records`
record versions (default 200,000) and `--audit` audit rows (default 1,000,000;
the audit chain does not verify), then p50/p95/max of the dashboard and the
records page (default view and its filters) over `--requests` requests each
(default 30; Flask test client in-process, logged in), and the wall time of
`peersync status [--json]` as a subprocess (median of 5): see
scripts/benchlib/pages.py. Before each view it waits up to `--settle` seconds
(default 60) for a quiet CPU (Linux PSI), recording the pressure with each
figure. Seeding 200k + 1M takes a few minutes per database.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from click.testing import CliRunner  # noqa: E402

from connector.cli import main  # noqa: E402

MRNS = ["MRN-55821", "MRN-60210", "MRN-61877", "MRN-70011", "MRN-70012", "MRN-70013"]


def generate(path: Path, n: int) -> None:
    base = json.loads((ROOT / "connector" / "samples" / "in-person-session.json").read_text())
    with path.open("w", encoding="utf-8") as out:
        for i in range(n):
            base["id"] = f"bench-{i:07d}"
            base["note"]["id"] = f"N-bench-{i:07d}"
            base["participant"]["mrn"] = MRNS[i % len(MRNS)]
            base["participant"]["id"] = f"P-{i % len(MRNS)}"
            out.write(json.dumps(base) + "\n")


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run(*args: str) -> None:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    if result.exit_code != 0:
        raise SystemExit(f"peersync {' '.join(args)} failed:\n{result.output}")
    print("  " + result.stdout.strip().splitlines()[-1])


def bench_import(n: int, home: Path) -> None:
    os.environ["PEERSYNC_HOME"] = str(home)
    run("init")
    data = home / "records.jsonl"
    generate(data, n)
    size = data.stat().st_size / 2**20
    start = time.perf_counter()
    run("import", str(data))
    took = time.perf_counter() - start
    print(f"import: {n} records ({size:.0f} MiB JSONL) in {took:.1f} s = {n / took:,.0f} "
          f"records/s; peak RSS {peak_rss_mib():.0f} MiB")


def bench_sync(n: int, home: Path, mode: str | None, conditional: bool,
               preset: str | None = None) -> None:
    from contextlib import nullcontext

    from connector.demo import sample_paths, seed_patients
    from connector.ehr_sandbox import SekmetServer
    from connector.fhir_client import FhirClient
    from mappings.profile import default_profile_path, load_profile

    os.environ["PEERSYNC_HOME"] = str(home)
    profile = load_profile(default_profile_path())
    with SekmetServer(home / "ehr") as ehr:
        with FhirClient(base_url=ehr.base_url, timeout_s=30) as client:
            seed_patients(client, profile, sample_paths())
            patients = [p["id"] for p in client.search("Patient", {"_count": "100"})]
        emulator: object = nullcontext()
        if preset and preset != "generic":
            from tests.emulators import EhrEmulator, seed_encounters, seed_practitioners

            seed_practitioners(ehr.base_url, profile, [{"id": "S-17", "family": "Kim"}])
            # every generated session is the sample's: one EHR Encounter per patient covers it
            seed_encounters(ehr.base_url, [(pid, "2026-11-20T13:55:00-05:00",
                                            "2026-11-20T15:00:00-05:00") for pid in patients])
            emulator = EhrEmulator(ehr.base_url, preset)
        with emulator as emu:
            url = emu.base_url if emu is not None else ehr.base_url  # type: ignore[attr-defined]
            run("init", "--ehr-url", url, "--preset", preset or "generic")
            config = home / "peersync.toml"
            keys = ([f'mode = "{mode}"'] if mode else []) + \
                ([] if conditional else ["conditional = false"])
            config.write_text(config.read_text().replace("[ehr]\n", "[ehr]\n" + "".join(
                k + "\n" for k in keys), 1))
            data = home / "records.jsonl"
            generate(data, n)
            run("import", str(data))
            start = time.perf_counter()
            run("sync")
            took = time.perf_counter() - start
    what = f"preset {preset or 'generic'}, mode {mode or 'from the preset'}"
    print(f"sync ({what}, conditional={conditional}): {n} records in {took:.1f} s = "
          f"{n / took:,.0f} records/s; peak RSS {peak_rss_mib():.0f} MiB")


def main_() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    sub.add_parser("import", help="intake + store, SQLite").add_argument("n", type=int)
    sync_p = sub.add_parser("sync", help="peersync sync against a local sekmet")
    sync_p.add_argument("n", type=int)
    sync_p.add_argument("--mode", default=None, choices=["transaction", "batch", "single"])
    sync_p.add_argument("--preset", default=None,
                        choices=["generic", "us-core-notes", "epic", "oracle-health"])
    sync_p.add_argument("--no-conditional", action="store_true")
    fill = sub.add_parser("backfill", help="issue 9's benchmark, every figure in one run")
    fill.add_argument("--n", type=int, default=None,
                      help="record versions for the throughput phases (default 1000; the "
                           "latency and worker phases get N/25 and N/10)")
    fill.add_argument("--quick", action="store_true", help="a ~20-second smoke run")
    fill.add_argument("--json", action="store_true", help="one JSON object on stdout")
    fill.add_argument("--pg-url", default=os.environ.get("PEERSYNC_TEST_DATABASE_URL")
                      or "postgresql+psycopg://postgres@127.0.0.1:5432/test",
                      help="a PostgreSQL server where a database of our own is created "
                           "and dropped (skipped when unreachable)")
    fill.add_argument("--keep", action="store_true", help="keep the working folder (logs)")
    fill.add_argument("--phases", default="all",
                      help="a comma list of what to run: floor, naive, sqlite, postgresql, "
                           "latency, workers (default all; the ratios need their phases)")
    pages = sub.add_parser("pages", help="dashboard, records page and status on a large store")
    pages.add_argument("--records", type=int, default=200_000, help="record versions")
    pages.add_argument("--audit", type=int, default=1_000_000, help="audit rows")
    pages.add_argument("--db", choices=["sqlite", "postgresql", "both"], default="both")
    pages.add_argument("--requests", type=int, default=30, help="requests per view")
    pages.add_argument("--json", action="store_true", help="one JSON object on stdout")
    pages.add_argument("--pg-url", default=fill.get_default("pg_url"),
                       help="a PostgreSQL server where a database of our own is created "
                            "and dropped")
    pages.add_argument("--keep", action="store_true", help="keep the working folder")
    pages.add_argument("--settle", type=float, default=60.0,
                       help="seconds to wait, before each view, for a quiet CPU (default 60; "
                            "0: measure at once)")
    args = parser.parse_args()
    if args.what == "pages":
        from scripts.benchlib import pages as pages_bench

        raise SystemExit(pages_bench.main(args.records, args.audit, args.db, args.requests,
                                          args.json, args.pg_url, args.keep, args.settle))
    if args.what == "backfill":
        from scripts.benchlib import backfill

        raise SystemExit(backfill.main(args.n, args.quick, args.pg_url, args.json, args.keep,
                                       args.phases))
    with tempfile.TemporaryDirectory() as tmp:
        if args.what == "import":
            bench_import(args.n, Path(tmp))
        else:
            bench_sync(args.n, Path(tmp), args.mode, not args.no_conditional, args.preset)


if __name__ == "__main__":
    main_()
