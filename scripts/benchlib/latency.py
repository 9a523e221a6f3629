"""A latency-injecting loopback reverse proxy: every request waits ``delay_s``, then goes on.

Built on the tests' loopback plumbing (``tests/loopback_proxy.py``: a threaded
HTTP/1.1 server on a free 127.0.0.1 port, one request per connection): each
request is held ``delay_s`` (the EHR's answer time), then forwarded to one
upstream (sekmet, or an EHR emulator in front of it) and its answer relayed.
Requests are served concurrently, as an EHR would: the delay is per request,
not a queue. ``requests`` counts what went through.
"""

from __future__ import annotations

import http.client
import threading
import time
from urllib.parse import urlsplit

from tests.loopback_proxy import HOP, LoopbackServer, ProxyHandler


class LatencyProxy:
    def __init__(self, upstream_base_url: str, delay_s: float) -> None:
        parts = urlsplit(upstream_base_url)
        if parts.hostname not in ("127.0.0.1", "localhost") or not parts.port:
            raise ValueError("upstream must be http://127.0.0.1:<port>/<path> (loopback only)")
        self.host, self.port = parts.hostname, parts.port
        self.path = parts.path.rstrip("/")
        self.delay_s = delay_s
        self.requests = 0
        self._lock = threading.Lock()
        self._server: LoopbackServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}{self.path}"

    def start(self) -> LatencyProxy:
        self._server = LoopbackServer(self)
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.1},
                                        name="latency-proxy", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def __enter__(self) -> LatencyProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _serve(self, handler: ProxyHandler) -> None:
        body = handler.read_body()
        with self._lock:
            self.requests += 1
        time.sleep(self.delay_s)
        headers = {k: v for k, v in handler.headers.items() if k.lower() not in HOP}
        headers["Host"] = f"{self.host}:{self.port}"
        headers["Connection"] = "close"
        if body or handler.command in ("POST", "PUT", "PATCH"):
            headers["Content-Length"] = str(len(body))
        conn = http.client.HTTPConnection(self.host, self.port, timeout=120)
        try:
            conn.request(handler.command, handler.path, body=body or None, headers=headers)
            resp = conn.getresponse()
            status, resp_headers, payload = resp.status, resp.getheaders(), resp.read()
        except (OSError, http.client.HTTPException) as exc:
            handler.answer(502, [("Content-Type", "text/plain")], str(exc).encode())
            return
        finally:
            conn.close()
        mine = f"http://127.0.0.1:{handler.server.server_address[1]}"
        theirs = f"http://{self.host}:{self.port}"
        payload = payload.replace(theirs.encode(), mine.encode())
        handler.answer(status, [(k, v.replace(theirs, mine)) for k, v in resp_headers], payload)
