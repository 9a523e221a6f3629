"""`peersync serve` for real: gunicorn in a subprocess on a free 127.0.0.1 port."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests

from connector.ehr_sandbox import free_port
from tests.webapp_support import PASSWORDS, make_home

pytestmark = pytest.mark.integration

PEERSYNC = Path(sys.executable).parent / "peersync"
_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')
PROXIED = {"X-Forwarded-Proto": "https", "X-Forwarded-For": "198.51.100.7",
           "X-Forwarded-Host": "peersync.example.org"}


@contextmanager
def served(tmp_path: Path, *args: str) -> Iterator[tuple[str, Path]]:
    """The server's base URL and its stdout (the access log) while it runs; stopped after."""
    port = free_port()
    log = tmp_path / f"serve-{port}.out"
    with log.open("wb") as out:
        proc = subprocess.Popen([str(PEERSYNC), "serve", "--port", str(port), "--workers", "1",
                                 *args], stdout=out, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 30
            while True:
                assert proc.poll() is None, log.read_text(errors="replace")
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    assert time.monotonic() < deadline, "gunicorn did not start in 30 s"
                    time.sleep(0.1)
            yield f"http://127.0.0.1:{port}", log
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=30) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)


def test_serve_behind_a_tls_proxy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_home(tmp_path, monkeypatch)
    with served(tmp_path, "--behind-proxy") as (url, log):
        page = requests.get(f"{url}/login?q=QUERY-VALUE-7", headers=PROXIED, timeout=10)
        assert page.status_code == 200
        assert page.headers["Server"] == "gunicorn"  # no version, no Werkzeug, no Python
        assert not re.search(r"\d", page.headers["Server"])
        cookie = page.headers["Set-Cookie"]
        assert "; Secure" in cookie and "HttpOnly" in cookie
        assert page.headers["Strict-Transport-Security"].startswith("max-age=")
        # log in through the "proxy" as a browser would under Referrer-Policy: no-referrer
        token = _CSRF.search(page.text)
        assert token
        login = requests.post(f"{url}/login", allow_redirects=False, timeout=10, headers=dict(
            PROXIED, Cookie=cookie.split(";", 1)[0]),
            data={"name": "admin", "password": PASSWORDS["admin"],
                  "csrf_token": token.group(1)})
        assert login.status_code == 302, login.text[:300]
        assert login.headers["Location"].startswith(("/", "https://peersync.example.org/"))
    access_log = log.read_text(errors="replace")
    assert "GET /login HTTP/1.1" in access_log and "POST /login HTTP/1.1" in access_log
    assert "QUERY-VALUE-7" not in access_log and "q=" not in access_log


def test_serve_without_a_proxy_ignores_forwarded_headers(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    make_home(tmp_path, monkeypatch)
    with served(tmp_path) as (url, _):
        page = requests.get(f"{url}/login", headers=PROXIED, timeout=10)
        assert page.status_code == 200 and page.headers["Server"] == "gunicorn"
        assert "Strict-Transport-Security" not in page.headers  # the header was not trusted
        assert "; Secure" in page.headers["Set-Cookie"]  # Secure all the same
