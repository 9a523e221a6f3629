#!/usr/bin/env python3
"""The reliability matrix as a script (the suite in tests/reliability, with its figures).

    .venv/bin/python scripts/reliability.py            # the suite's sizes: 300 records, 30 s
    .venv/bin/python scripts/reliability.py --full     # 1,000 records, a 3-minute outage
    .venv/bin/python scripts/reliability.py --json     # one JSON object instead of a table

For each cell (the generic preset in transaction, batch and single mode without
conditional requests; the us-core-notes, epic and oracle-health presets through their
emulators): 20 % of requests faulted, a worker SIGKILLed at each step of a send, and
the EHR unreachable mid-sync with two workers running. Runs go side by side, each in a
process of its own (tests/reliability/runner.py). Everything runs on 127.0.0.1 (sekmet
in memory, one per run) and stops by itself. Exit 1 when any run lost, duplicated or
gave up a record, or did not finish.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.reliability import harness, runner  # noqa: E402
from tests.reliability.test_reliability import (  # noqa: E402
    CONCURRENCY,
    FAULT_TIMEOUT_S,
    SUITE_DEADLINE_S,
)

COLUMNS = ("scenario", "cell", "records", "faults", "slow_answers", "kills", "outage_s",
           "duplicates", "lost", "needs_attention", "refused", "audit_verify", "seconds",
           "wall_s", "cpu_s")
FULL_DEADLINE_S = 45 * 60


def failed(result: dict[str, Any]) -> bool:
    return bool(result.get("error") or result.get("duplicates") or result.get("lost")
                or result.get("needs_attention") or result.get("refused")
                or result.get("audit_verify")
                or result.get("synced") != result.get("records"))


def table(results: list[dict[str, Any]]) -> str:
    def cell(result: dict[str, Any], key: str) -> str:
        value = result.get(key, "")
        if key == "faults" and isinstance(value, dict):
            return " ".join(f"{k}={v}" for k, v in value.items() if v) or "-"
        return str(value)

    rows = [list(COLUMNS)] + [[cell(r, k) for k in COLUMNS] for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in rows]
    lines.extend(f"{r['scenario']}/{r['cell']}: {r['error']}" for r in results if r.get("error"))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--full", action="store_true",
                        help="1,000 records per run and a 3-minute outage, every cell")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--cell", action="append", choices=list(harness.CELLS),
                        help="only this cell (repeatable)")
    parser.add_argument("--scenario", action="append", choices=list(runner.SCENARIOS),
                        help="only this scenario (repeatable)")
    parser.add_argument("--concurrency", type=int, default=CONCURRENCY,
                        help=f"runs side by side (default {CONCURRENCY}, as the suite)")
    parser.add_argument("--timeout", type=float, default=FAULT_TIMEOUT_S,
                        help="the connector's read timeout in the fault runs "
                             f"(default {FAULT_TIMEOUT_S}, as the suite)")
    args = parser.parse_args(argv)
    size = "full" if args.full else "suite"
    jobs = runner.jobs(size, args.cell or list(harness.CELLS),
                       args.scenario or list(runner.SCENARIOS), timeout_s=args.timeout)

    def progress(result: dict[str, Any]) -> None:
        state = "FAILED" if failed(result) else "ok"
        print(f"{result['scenario']}/{result['cell']}: {state} ({result.get('wall_s')} s)",
              file=sys.stderr, flush=True)

    def stop(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)  # the matrix stops its runs on the way out

    signal.signal(signal.SIGTERM, stop)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="peersync-reliability-") as tmp:
        matrix = runner.Matrix(jobs, Path(tmp), concurrency=args.concurrency,
                               deadline_s=FULL_DEADLINE_S if args.full else SUITE_DEADLINE_S,
                               progress=progress)
        results = matrix.run_all()
    for result in results:
        result.pop("audit_output", None)
    summary = {"full": args.full, "sizes": runner.SIZES[size],
               "concurrency": args.concurrency, "fault_timeout_s": args.timeout,
               "seconds": round(time.monotonic() - started, 1),
               "records": sum(r.get("records", 0) for r in results),
               "faults": sum(sum(r.get("faults", {}).values()) for r in results),
               "kills": sum(r.get("kills", 0) for r in results),
               "duplicates": sum(r.get("duplicates", 0) for r in results),
               "lost": sum(r.get("lost", 0) for r in results),
               "needs_attention": sum(r.get("needs_attention", 0) for r in results),
               "failed_runs": sum(1 for r in results if failed(r)), "runs": results}
    if args.json:
        print(json.dumps(summary, default=str))
    else:
        print(table(results))
        print(f"\n{len(results)} runs in {summary['seconds']} s ({args.concurrency} side by "
              f"side): {summary['records']} records, {summary['faults']} faults, "
              f"{summary['kills']} kills; duplicates {summary['duplicates']}, lost "
              f"{summary['lost']}, needs_attention {summary['needs_attention']}, failed runs "
              f"{summary['failed_runs']}")
    return 1 if summary["failed_runs"] else 0


if __name__ == "__main__":
    sys.exit(main())
