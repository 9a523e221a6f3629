#!/usr/bin/env python3
"""The reliability matrix as a script (the suite in tests/reliability, with its figures).

    .venv/bin/python scripts/reliability.py            # the suite's sizes
    .venv/bin/python scripts/reliability.py --full     # 1,000 records, a 3-minute outage
    .venv/bin/python scripts/reliability.py --json     # one JSON object instead of a table

For each cell (the generic preset in transaction, batch and single mode without
conditional requests; the us-core-notes, epic and oracle-health presets through their
emulators): 20 % of requests faulted, a worker SIGKILLed at each step of a send, and
the EHR unreachable mid-sync. Everything runs on 127.0.0.1 (sekmet in memory, one per
run) and stops by itself. Exit 1 when any run lost, duplicated or gave up a record.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import pytest  # noqa: E402

from tests.reliability import harness  # noqa: E402
from tests.reliability.test_reliability import (  # noqa: E402
    FAULT_RECORDS,
    KILL_RECORDS,
    OUTAGE_RECORDS,
    OUTAGE_S,
)
from tests.reliability.test_reliability import (  # noqa: E402
    test_ehr_unreachable_for_30_s_mid_sync as _outage_test,
)

COLUMNS = ("scenario", "cell", "records", "faults", "kills", "outage_s", "duplicates", "lost",
           "needs_attention", "refused", "audit_verify", "seconds")


def outage_cells() -> list[str]:
    """The cells the suite runs the outage on (read from its parametrization)."""
    marks = [m for m in getattr(_outage_test, "pytestmark", []) if m.name == "parametrize"]
    return list(marks[0].args[1]) if marks else ["transaction"]


def run(full: bool, cells: list[str], scenarios: list[str], work: Path) -> list[dict[str, Any]]:
    sizes = {"faults": 1000 if full else FAULT_RECORDS,
             "kills": 200 if full else KILL_RECORDS,
             "outage": 1000 if full else OUTAGE_RECORDS}
    outage_s = 180.0 if full else OUTAGE_S
    results = []
    for scenario in scenarios:
        for name in cells if scenario != "outage" or full else [
                c for c in cells if c in outage_cells()]:
            cell = harness.CELLS[name]
            where = work / f"{scenario}-{name}"
            with pytest.MonkeyPatch.context() as mp:
                try:
                    if scenario == "faults":
                        result = harness.run_faults(cell, sizes[scenario], where, mp)
                    elif scenario == "kills":
                        result = harness.run_kills(cell, sizes[scenario], where, mp)
                    else:
                        result = harness.run_outage(cell, sizes[scenario], where, mp,
                                                    outage_s=outage_s, workers=2)
                except AssertionError as exc:  # a run that could not finish is a result too
                    result = {"scenario": scenario, "cell": name, "records": sizes[scenario],
                              "error": str(exc)[:500]}
            results.append(result)
            print(f"{scenario}/{name}: done", file=sys.stderr, flush=True)
    return results


def failed(result: dict[str, Any]) -> bool:
    return bool(result.get("error") or result.get("duplicates") or result.get("lost")
                or result.get("needs_attention") or result.get("refused")
                or result.get("audit_verify"))


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
                        help="1,000 records per cell and a 3-minute outage on every cell")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--cell", action="append", choices=list(harness.CELLS),
                        help="only this cell (repeatable)")
    parser.add_argument("--scenario", action="append", choices=["faults", "kills", "outage"],
                        help="only this scenario (repeatable)")
    args = parser.parse_args(argv)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="peersync-reliability-") as tmp:
        results = run(args.full, args.cell or list(harness.CELLS),
                      args.scenario or ["faults", "kills", "outage"], Path(tmp))
    for result in results:
        result.pop("audit_output", None)
    summary = {"full": args.full, "seconds": round(time.monotonic() - started, 1),
               "duplicates": sum(r.get("duplicates", 0) for r in results),
               "lost": sum(r.get("lost", 0) for r in results),
               "needs_attention": sum(r.get("needs_attention", 0) for r in results),
               "failed_runs": sum(1 for r in results if failed(r)), "runs": results}
    if args.json:
        print(json.dumps(summary, default=str))
    else:
        print(table(results))
        print(f"\n{len(results)} runs in {summary['seconds']} s: duplicates "
              f"{summary['duplicates']}, lost {summary['lost']}, needs_attention "
              f"{summary['needs_attention']}, failed runs {summary['failed_runs']}")
    return 1 if summary["failed_runs"] else 0


if __name__ == "__main__":
    sys.exit(main())
