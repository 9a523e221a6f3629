"""Runs one ``peersync`` command as a child of the benchmark, timing it without the start-up.

``python scripts/benchlib/child.py <peersync args>``: the same command as
``peersync <args>``; the seconds spent inside the command (after the
interpreter started and ``connector.cli`` was imported, lazy imports included)
and its peak RSS (``VmHWM`` of /proc/self/status: this process's own, where a
child's ``ru_maxrss`` also counts the forking parent's) are written, as JSON,
to the file named by ``PEERSYNC_BENCH_TIMING``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from connector.cli import main  # noqa: E402

if __name__ == "__main__":
    started = time.perf_counter()
    try:
        main.main(args=sys.argv[1:], prog_name="peersync")
    finally:
        took = time.perf_counter() - started
        timing = os.environ.get("PEERSYNC_BENCH_TIMING")
        if timing:
            status = Path("/proc/self/status").read_text()
            hwm = next((int(line.split()[1]) for line in status.splitlines()
                        if line.startswith("VmHWM:")), None)
            Path(timing).write_text(json.dumps({"inner_s": took, "vmhwm_kib": hwm}))
