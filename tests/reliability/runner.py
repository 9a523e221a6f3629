"""Cells side by side: every run of the reliability matrix in a process of its own.

A run (one scenario on one cell) needs its own environment (``PEERSYNC_HOME`` set
through monkeypatch, the in-process CLI runner), so runs never share a process: the
:class:`Matrix` starts each as ``python -m tests.reliability.runner JOB WORKDIR OUT``
(each with its own sekmet, emulator, fault proxy and PeerSync home), at most
``concurrency`` at a time, the longest first, and collects the figures each child writes
as JSON. A child over its time limit, or still running at the matrix's deadline, is
stopped (SIGTERM: its stack shuts down, sekmet and workers included; 30 s later SIGKILL to
it and every process under it) and its run reported as an error, so that a run of the
matrix always ends by itself and leaves nothing running.

Sizes: :data:`SIZES` (``suite``: tests/reliability, at most five minutes on the 2-core
machine; ``full``: scripts/reliability.py --full).
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import signal
import subprocess
import sys
import threading
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
SCENARIOS = ("faults", "kills", "outage")
# records per run of each scenario, and the outage's length
SIZES: dict[str, dict[str, float]] = {
    "suite": {"faults": 300, "kills": 300, "outage": 300, "outage_s": 30.0},
    "full": {"faults": 1000, "kills": 1000, "outage": 1000, "outage_s": 180.0},
}
# The longest runs first (the outage waits out its outage; single mode sends every
# resource on its own; epic and oracle look up the EHR's Encounter per session).
_ORDER = ("single-unconditional", "epic", "oracle-health", "us-core-notes", "batch",
          "transaction")


@dataclass(frozen=True)
class Job:
    scenario: str
    cell: str
    records: int
    outage_s: float = 0.0
    workers: int = 2  # worker processes during the outage
    timeout_s: float = 1.0  # the connector's read timeout in the fault runs

    @property
    def key(self) -> str:
        return f"{self.scenario}/{self.cell}"


def jobs(size: str, cells: list[str], scenarios: list[str] | tuple[str, ...] = SCENARIOS,
         *, timeout_s: float = 1.0) -> list[Job]:
    """The runs of the matrix at ``size``, in the order they start: the longest first, each
    outage beside a fault run (which keeps the machine busy while the EHR is away), then
    the kill runs."""
    sizes = SIZES[size]
    ordered = sorted(cells, key=lambda c: _ORDER.index(c) if c in _ORDER else 0)
    return [Job(s, c, int(sizes[s]), outage_s=sizes["outage_s"] if s == "outage" else 0.0,
                timeout_s=timeout_s)
            for group in (("outage", "faults"), ("kills",)) for c in ordered
            for s in group if s in scenarios]


# -- the child -------------------------------------------------------------------------

def run_job(job: Job, workdir: Path) -> dict[str, Any]:
    """One run in this process (the child's body)."""
    import pytest

    from tests.reliability import harness, scenarios

    cell = harness.CELLS[job.cell]
    with pytest.MonkeyPatch.context() as mp:
        if job.scenario == "faults":
            return scenarios.run_faults(cell, job.records, workdir, mp, timeout_s=job.timeout_s)
        if job.scenario == "kills":
            return scenarios.run_kills(cell, job.records, workdir, mp)
        return scenarios.run_outage(cell, job.records, workdir, mp, outage_s=job.outage_s,
                                    workers=job.workers)


def _cpu_s() -> float:
    own, children = (resource.getrusage(w) for w in (resource.RUSAGE_SELF,
                                                     resource.RUSAGE_CHILDREN))
    return round(own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime, 1)


class Stopped(BaseException):
    """SIGTERM in a child: not an Exception, and not SystemExit (which the in-process CLI
    runner would take for the command's exit), so it unwinds the whole run."""


def child(argv: list[str]) -> int:
    job, workdir, out = Job(**json.loads(argv[0])), Path(argv[1]), Path(argv[2])

    def stop(signum: int, frame: object) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # once: let the unwinding finish
        raise Stopped(signum)  # unwinds the stack: workers, proxy, emulator, sekmet stopped

    signal.signal(signal.SIGTERM, stop)
    try:
        result = run_job(job, workdir)
    except Exception as exc:  # an assertion inside a run is a result too
        result = {"error": f"{type(exc).__name__}: {exc}"[:1500],
                  "where": traceback.format_exc(limit=4)[-1500:]}
    result = {"scenario": job.scenario, "cell": job.cell, "records": job.records, **result,
              "cpu_s": _cpu_s()}
    out.write_text(json.dumps(result, default=str), "utf-8")
    return 0


# -- the parent ------------------------------------------------------------------------

class Matrix:
    """Runs ``jobs`` in child processes, ``concurrency`` at a time, within ``deadline_s``."""

    def __init__(self, jobs: list[Job], workdir: Path, *, concurrency: int,
                 deadline_s: float, job_limit_s: float | None = None,
                 progress: Any = None) -> None:
        self.jobs = list(jobs)
        self.workdir = workdir
        self.concurrency = max(1, concurrency)
        self.deadline_s = deadline_s
        self.job_limit_s = job_limit_s or deadline_s
        self.progress = progress  # called with each result as it comes in
        self.results: dict[str, dict[str, Any]] = {}
        self._done = threading.Condition()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._running: dict[str, tuple[Job, subprocess.Popen[bytes], float]] = {}
        self.started = 0.0

    def start(self) -> Matrix:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.started = time.monotonic()
        self._thread = threading.Thread(target=self._schedule, name="reliability-matrix",
                                        daemon=True)
        self._thread.start()
        return self

    def result(self, key: str) -> dict[str, Any]:
        """The figures of one run, once it is over (waits at most until the deadline)."""
        if key not in {j.key for j in self.jobs}:
            raise KeyError(key)
        with self._done:
            self._done.wait_for(lambda: key in self.results or self._thread is None
                                or not self._thread.is_alive(),
                                self.deadline_s + 90 - (time.monotonic() - self.started))
            return self.results.get(key) or {"error": "no result (the matrix stopped)"}

    def run_all(self) -> list[dict[str, Any]]:
        self.start()
        try:
            return [self.result(j.key) for j in self.jobs]
        finally:
            self.close()

    def close(self) -> None:
        """Stop every child still running, and the scheduler."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=120)

    # -- the scheduler thread --------------------------------------------------------

    def _schedule(self) -> None:
        pending = list(self.jobs)
        try:
            while (pending or self._running) and not self._stopping.is_set():
                elapsed = time.monotonic() - self.started
                while pending and len(self._running) < self.concurrency \
                        and elapsed < self.deadline_s:
                    self._launch(pending.pop(0))
                for job, proc, began in list(self._running.values()):
                    if proc.poll() is not None:
                        self._finish(job, proc, began, None)
                    elif time.monotonic() - began > self.job_limit_s:
                        self._finish(job, proc, began, f"over its {self.job_limit_s:.0f} s limit")
                    elif elapsed > self.deadline_s:
                        self._finish(job, proc, began,
                                     f"still running at the matrix's {self.deadline_s:.0f} s "
                                     "deadline")
                if pending and elapsed > self.deadline_s:
                    for job in pending:
                        self._record(job, {"error": "not started before the deadline"})
                    pending.clear()
                time.sleep(0.2)
        finally:
            for _job, proc, _began in self._running.values():
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
            for job, proc, began in list(self._running.values()):
                self._finish(job, proc, began, "stopped (the matrix was closed)")
            with self._done:
                self._done.notify_all()

    def _launch(self, job: Job) -> None:
        where = self.workdir / job.key.replace("/", "-")
        where.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items()
               if k not in ("PEERSYNC_HOME", "PEERSYNC_EHR_URL", "PEERSYNC_DATABASE_URL")}
        with open(where / "child.log", "wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "tests.reliability.runner", json.dumps(asdict(job)),
                 str(where / "run"), str(where / "result.json")],
                cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)
        self._running[job.key] = (job, proc, time.monotonic())

    def _finish(self, job: Job, proc: subprocess.Popen[bytes], began: float,
                why: str | None) -> None:
        del self._running[job.key]
        if why is not None:
            _stop(proc)
        where = self.workdir / job.key.replace("/", "-")
        try:
            result: dict[str, Any] = json.loads((where / "result.json").read_text("utf-8"))
        except (OSError, ValueError):
            tail = (where / "child.log").read_text("utf-8", "replace")[-1500:] \
                if (where / "child.log").exists() else ""
            result = {"error": f"{why or f'exit {proc.returncode}'}, no figures; log: {tail}"}
        if why is not None and "error" not in result:
            result["error"] = why
        result.update(began_s=round(began - self.started, 1),
                      wall_s=round(time.monotonic() - began, 1))
        self._record(job, result)

    def _record(self, job: Job, result: dict[str, Any]) -> None:
        result = {"scenario": job.scenario, "cell": job.cell, "records": job.records,
                  **result}
        with self._done:
            self.results[job.key] = result
            self._done.notify_all()
        if self.progress is not None:
            self.progress(result)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM (the child stops its own stack); after 30 s SIGKILL to it and to every
    process under it (sekmet and the workers run in sessions of their own)."""
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        for pid in [*_descendants(proc.pid), proc.pid]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        proc.wait(timeout=10)


def _descendants(pid: int) -> list[int]:
    """The processes under ``pid`` (Linux /proc), deepest last."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out: list[int] = []
    todo = [pid]
    while todo:
        kids = children.get(todo.pop(), [])
        out.extend(kids)
        todo.extend(kids)
    return out


if __name__ == "__main__":
    sys.exit(child(sys.argv[1:]))
