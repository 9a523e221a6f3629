"""Child processes the benchmark starts (PeerSync commands, workers): bounded, measured, stopped.

Every child runs in a session of its own (a Ctrl-C on the terminal reaches the
benchmark only) and is registered in :data:`CHILDREN` until reaped; the
benchmark's ``finally`` calls :func:`stop_all`. A child is reaped with
``os.wait4``; its peak RSS is the VmHWM it reports itself (``child.py``).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


def peersync_cmd() -> list[str]:
    """``peersync`` through :mod:`.child`, which times the command without the start-up."""
    return [sys.executable, str(Path(__file__).with_name("child.py"))]


@dataclass
class Done:
    argv: list[str]
    code: int
    wall_s: float  # as a user sees it: interpreter start-up included
    peak_rss_mib: float
    output: str
    inner_s: float | None = None  # inside the command (child.py's timing)
    cpu_s: float | None = None  # user + system CPU seconds (wait4's rusage)


class Child:
    """One child process; ``wait()`` reaps it with its own rusage."""

    def __init__(self, argv: list[str], *, env: dict[str, str], log: Path) -> None:
        self.argv = argv
        self.log = log
        self.timing = log.with_suffix(".timing")
        self.timing.unlink(missing_ok=True)
        env = dict(env, PEERSYNC_BENCH_TIMING=str(self.timing))
        self.started = time.perf_counter()
        with log.open("ab") as out:
            self.proc = subprocess.Popen(argv, env=env, cwd=ROOT, stdout=out,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True)
        CHILDREN[self.proc.pid] = self.proc
        self.done: Done | None = None

    def poll(self) -> Done | None:
        return self._reap(os.WNOHANG)

    def wait(self, timeout_s: float) -> Done:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            done = self._reap(os.WNOHANG)
            if done is not None:
                return done
            time.sleep(0.02)
        self.terminate()
        done = self._reap(0)
        assert done is not None
        raise TimeoutError(f"{' '.join(self.argv[1:3])}: still running after {timeout_s:.0f} s "
                           f"(stopped); see {self.log}")

    def terminate(self, sig: int = signal.SIGTERM) -> None:
        if self.done is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)

    def _reap(self, flags: int) -> Done | None:
        if self.done is not None:
            return self.done
        pid, status, usage = os.wait4(self.proc.pid, flags)
        if pid == 0:
            return None
        code = os.waitstatus_to_exitcode(status)
        self.proc.returncode = code
        CHILDREN.pop(self.proc.pid, None)
        wall = time.perf_counter() - self.started
        text = self.log.read_text("utf-8", "replace") if self.log.exists() else ""
        timing = json.loads(self.timing.read_text()) if self.timing.exists() else {}
        # VmHWM from the child itself; wait4's ru_maxrss (fallback) also counts the parent's
        # RSS at fork/exec time, so it is never below this process's
        hwm = timing.get("vmhwm_kib")
        rss = hwm / 1024 if hwm else usage.ru_maxrss / 1024
        self.done = Done(self.argv, code, wall, rss, text, timing.get("inner_s"),
                         round(usage.ru_utime + usage.ru_stime, 2))
        return self.done


def cpu_s(pid: int) -> float | None:
    """A running process's user + system CPU seconds so far (Linux /proc), or None."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run(args: list[str], *, env: dict[str, str], log: Path, timeout_s: float,
        check: bool = True) -> Done:
    """``peersync <args>`` to the end: its wall time and peak RSS."""
    log.write_bytes(b"")
    done = Child(peersync_cmd() + args, env=env, log=log).wait(timeout_s)
    if check and done.code != 0:
        tail = "\n".join(done.output.strip().splitlines()[-15:])
        raise RuntimeError(f"peersync {' '.join(args)} exited with {done.code}:\n{tail}")
    return done


def stop_all(grace_s: float = 5.0) -> None:
    """SIGTERM every child still registered, then SIGKILL what is left after ``grace_s``."""
    for pid in list(CHILDREN):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for pid, proc in list(CHILDREN.items()):
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=2)
        CHILDREN.pop(pid, None)
