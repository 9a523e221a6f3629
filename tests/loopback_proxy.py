"""The HTTP plumbing the tests' loopback proxies share (tests/faultproxy.py, tests/emulators.py).

A threaded HTTP/1.1 server on 127.0.0.1 (a free port) whose handler hands every
request to its owner's ``_serve(handler)``; the handler reads a body by
Content-Length, answers with ``Connection: close``, or resets the client's
connection with an RST (SO_LINGER 0) and no answer at all.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, NoReturn, Protocol

# Hop-by-hop headers (RFC 9110 7.6.1) and the ones we set ourselves.
HOP = frozenset({
    "connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer",
    "upgrade", "content-length", "host",
})


class Owner(Protocol):
    def _serve(self, handler: ProxyHandler) -> None: ...


class Abort(Exception):
    """Raised inside a handler to drop the connection without an answer."""


class LoopbackServer(ThreadingHTTPServer):
    daemon_threads = False  # so that server_close() joins every handler thread
    block_on_close = True
    allow_reuse_address = True
    request_queue_size = 64

    def __init__(self, owner: Owner) -> None:
        self.owner = owner
        self.aborted: set[int] = set()  # ids of client sockets to reset, not shut down
        self.aborted_lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), ProxyHandler)

    def shutdown_request(self, request: Any) -> None:
        with self.aborted_lock:
            abort = id(request) in self.aborted
            self.aborted.discard(id(request))
        if abort:
            # No FIN first: close() with SO_LINGER 0 sends an RST.
            self.close_request(request)
        else:
            super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that went away (e.g. killed mid-request) is not an error of ours.
        hook = getattr(self.owner, "on_handler_error", None)
        if hook is not None:
            hook()


class ProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: LoopbackServer

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet
        pass

    def handle(self) -> None:
        try:
            super().handle()
        except (Abort, OSError):  # OSError covers ConnectionError and TimeoutError
            self.close_connection = True

    def _any(self) -> None:
        self.server.owner._serve(self)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _any

    def read_body(self) -> bytes:
        """The request body; a client gone before sending all of it is dropped, not served
        (a worker killed mid-request must not reach the EHR as a truncated body)."""
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        if len(body) < length:
            self.close_connection = True
            raise Abort
        return body

    def answer(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        self.close_connection = True
        self.send_response(status)
        for name, value in headers:
            if name.lower() not in HOP:
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)
        self.wfile.flush()

    def reset(self) -> NoReturn:
        """Drop the client's connection with an RST, answering nothing."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                       struct.pack("ii", 1, 0))
        with self.server.aborted_lock:
            self.server.aborted.add(id(self.request))
        raise Abort
