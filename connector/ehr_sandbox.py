"""A local FHIR R4 server (sekmet) for the demo and the integration tests.

sekmet runs in its own virtualenv (its pins clash with ours; see
``ehr/sekmet-requirements.txt``). This module starts it on a free 127.0.0.1
port from a working folder of its own holding a ``settings.yaml`` (the
simulated hospital is switched off so it writes nothing by itself), waits
until ``GET /fhir/metadata`` answers, and stops it again.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import requests

REPO_ROOT = Path(__file__).resolve().parent.parent


def sekmet_executable() -> Path:
    """Where the sekmet command lives: $PEERSYNC_SEKMET, else the repo's .venv-ehr."""
    configured = os.environ.get("PEERSYNC_SEKMET")
    if configured:
        return Path(configured)
    return REPO_ROOT / ".venv-ehr" / "bin" / "sekmet"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _yaml_value(value: Any) -> str:
    # JSON is valid YAML flow syntax; good enough for the settings we write.
    return json.dumps(value)


class SekmetServer:
    """One sekmet process. Use as a context manager, or call start()/stop()."""

    def __init__(
        self,
        workdir: Path,
        *,
        settings: dict[str, Any] | None = None,
        port: int | None = None,
        db: str = ":memory:",
        log_name: str = "sekmet.log",
    ) -> None:
        self.workdir = Path(workdir)
        self.settings: dict[str, Any] = {"simulator": {"enabled": False}}
        self.settings.update(settings or {})
        self.port = port or free_port()
        self.db = db
        self.log_path = self.workdir / log_name
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/fhir"

    def start(self, *, ready_timeout_s: float = 30.0) -> SekmetServer:
        exe = sekmet_executable()
        if not exe.exists():
            raise RuntimeError(
                f"sekmet not found at {exe}: install it with "
                "`python3 -m venv .venv-ehr && "
                ".venv-ehr/bin/pip install -r ehr/sekmet-requirements.txt`"
                " or set PEERSYNC_SEKMET"
            )
        self.workdir.mkdir(parents=True, exist_ok=True)
        lines = [f"{key}: {_yaml_value(value)}" for key, value in self.settings.items()]
        (self.workdir / "settings.yaml").write_text("\n".join(lines) + "\n", encoding="utf-8")
        env = dict(os.environ)
        env.update(
            SEKMET_DB=self.db,
            SEKMET_PORT=str(self.port),
            SEKMET_BASE_URL=self.base_url,
            SEKMET_CONFIG=str(self.workdir / "settings.yaml"),
        )
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child process
        try:
            self._proc = subprocess.Popen(
                [str(exe), "serve", "--host", "127.0.0.1", "--port", str(self.port)],
                cwd=self.workdir,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            log.close()
        self._wait_ready(ready_timeout_s)
        return self

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self._proc is not None
            if self._proc.poll() is not None:
                code = self._proc.returncode
                raise RuntimeError(f"sekmet exited with {code}; see {self.log_path}")
            try:
                with requests.get(f"{self.base_url}/metadata", timeout=1) as resp:
                    if resp.status_code in (200, 401):
                        return
            except requests.RequestException:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"sekmet did not answer within {timeout_s:.0f} s; see {self.log_path}")

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=10)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def __enter__(self) -> SekmetServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def remove_workdir(self) -> None:
        shutil.rmtree(self.workdir, ignore_errors=True)
