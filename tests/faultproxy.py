"""A small fault-injecting HTTP/1.1 reverse proxy for the durability tests.

It listens on 127.0.0.1 (a free port), forwards every request to one upstream
(sekmet) and, on a seeded schedule, breaks some of them in the ways a real
network and a real EHR do:

- ``status_5xx``: answer 503 without forwarding (nothing applied);
- ``throttle_429``: answer 429 with ``Retry-After: 1`` without forwarding;
- ``reset_before``: read the request, then reset the client's connection
  (SO_LINGER 0, so the client gets an RST) without forwarding;
- ``reset_after``: forward (the EHR applies it), then reset the client's
  connection without answering;
- ``timeout_after``: forward (applied), then hold the client without a byte
  for ``hold_s`` (longer than the connector's read timeout), then close;
- ``gateway_504_after``: forward (applied), then answer 504 Gateway Timeout, as
  a gateway in front of an EHR does when it gives up on a slow upstream.

Faults hit only the methods in ``methods`` (default: writes, POST and PUT);
reads pass through untouched unless asked. At most ``max_faults`` are injected;
every decision comes from one ``random.Random(seed)``, so a schedule can be
replayed. Every answer carries ``Connection: close`` (one request per
connection: the client's keep-alive pool simply opens a new one), and request
bodies are read by Content-Length.

``slow_after_s`` (tests/reliability): count, as ``slow_answers``, every request the
upstream took that long or longer to answer (no fault of ours: a loaded machine), and
keep the slowest in ``slowest_s``.

Two more knobs for the kill tests: ``delay_s`` slows every write (so a kill
lands mid-send), and :meth:`FaultProxy.arm` pauses the n-th write before or
after it is forwarded until :meth:`release`, so a test can kill the client at
exactly that point.

``stop()`` shuts the server down and joins every handler thread.
"""

from __future__ import annotations

import http.client
import random
import threading
import time
from collections import Counter
from urllib.parse import urlsplit

from tests.loopback_proxy import HOP, LoopbackServer, ProxyHandler

FAULT_KINDS = ("status_5xx", "throttle_429", "reset_before", "reset_after", "timeout_after",
               "gateway_504_after")
WRITE_METHODS = frozenset({"POST", "PUT"})


class FaultProxy:
    """A reverse proxy in front of ``upstream`` (``http://127.0.0.1:<port>``, any path kept)."""

    def __init__(
        self,
        upstream: str,
        *,
        seed: int = 0,
        rates: dict[str, float] | None = None,
        max_faults: int = 0,
        methods: frozenset[str] | set[str] = WRITE_METHODS,
        hold_s: float = 3.0,
        delay_s: float = 0.0,
        delay_methods: frozenset[str] | set[str] = WRITE_METHODS,
        upstream_timeout_s: float = 60.0,
        slow_after_s: float | None = None,
    ) -> None:
        parts = urlsplit(upstream)
        if parts.hostname not in ("127.0.0.1", "localhost") or not parts.port:
            raise ValueError("upstream must be http://127.0.0.1:<port>")
        unknown = set(rates or {}) - set(FAULT_KINDS)
        if unknown:
            raise ValueError(f"unknown fault kinds: {sorted(unknown)}")
        self.upstream_host = parts.hostname
        self.upstream_port = parts.port
        self.rates = dict(rates or {})
        self.max_faults = max_faults
        self.methods = frozenset(m.upper() for m in methods)
        self.hold_s = hold_s
        self.delay_s = delay_s
        self.delay_methods = frozenset(m.upper() for m in delay_methods)
        self.upstream_timeout_s = upstream_timeout_s
        self.slow_after_s = slow_after_s
        self.slowest_s = 0.0
        self.rng = random.Random(seed)
        self.counts: Counter[str] = Counter()
        self._lock = threading.Condition()
        self._stopping = threading.Event()
        self._armed: tuple[str, int, tuple[str, ...]] | None = None  # (phase, nth, paths)
        self.paused = threading.Event()  # set while an armed request is held
        self._release = threading.Event()
        self._server: LoopbackServer | None = None
        self._thread: threading.Thread | None = None
        self._reopener: threading.Thread | None = None  # set during an outage()

    def on_handler_error(self) -> None:
        self._count("handler_errors")

    # -- lifecycle ------------------------------------------------------------

    def start(self) -> FaultProxy:
        self._server = LoopbackServer(self)
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.1},
                                        name="fault-proxy", daemon=True)
        self._thread.start()
        return self

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.server_address[1])

    @property
    def base_url(self) -> str:
        """The proxy's URL for the upstream's FHIR base (same path)."""
        return f"http://127.0.0.1:{self.port}/fhir"

    def stop(self) -> None:
        """Stop serving, wake every held request, close the listener and join all threads."""
        self._stopping.set()
        self._release.set()
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()  # joins the handler threads (daemon_threads = False)
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- knobs ------------------------------------------------------------------

    def set_faults(self, *, rates: dict[str, float] | None = None,
                   max_faults: int | None = None) -> None:
        with self._lock:
            if rates is not None:
                self.rates = dict(rates)
            if max_faults is not None:
                self.max_faults = max_faults

    def arm(self, phase: str, nth: int = 1, paths: tuple[str, ...] = ()) -> None:
        """Pause the ``nth`` write from now ``before`` or ``after`` forwarding it.

        ``paths``: count only writes to these paths (query left out), e.g.
        ``("/fhir",)`` for bundles or ``("/fhir/Provenance",)``. ``paused`` is
        set while the write is held; :meth:`release` then drops the client's
        connection (the client is expected to be dead by then).
        """
        if phase not in ("before", "after"):
            raise ValueError(phase)
        with self._lock:
            self.paused.clear()
            self._release.clear()
            self._armed = (phase, nth, tuple(paths))

    def release(self) -> None:
        self._release.set()

    @property
    def faults(self) -> dict[str, int]:
        with self._lock:
            return {kind: self.counts[kind] for kind in FAULT_KINDS}

    @property
    def total_faults(self) -> int:
        return sum(self.faults.values())

    def wait_writes(self, n: int, timeout_s: float) -> bool:
        """Wait until ``n`` writes have been answered by the upstream (forwarded and applied)."""
        with self._lock:
            return self._lock.wait_for(lambda: self.counts["writes_applied"] >= n, timeout_s)

    def _count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self.counts[key] += n
            self._lock.notify_all()

    # -- the proxy --------------------------------------------------------------

    def _decide(self, method: str) -> str | None:
        with self._lock:
            self.counts["requests"] += 1
            if method in WRITE_METHODS:
                self.counts["writes"] += 1
            if method not in self.methods:
                return None
            if sum(self.counts[k] for k in FAULT_KINDS) >= self.max_faults:
                return None
            roll = self.rng.random()
            for kind in FAULT_KINDS:
                rate = self.rates.get(kind, 0.0)
                if roll < rate:
                    self.counts[kind] += 1
                    return kind
                roll -= rate
            return None

    def _pause_point(self, method: str, path: str, phase: str) -> bool:
        """Is this write the armed one (at this phase)? Counts down the armed write."""
        if method not in WRITE_METHODS:
            return False
        with self._lock:
            if self._armed is None or self._armed[0] != phase:
                return False
            armed_phase, nth, paths = self._armed
            if paths and path.split("?", 1)[0].rstrip("/") not in paths:
                return False
            if nth > 1:
                self._armed = (armed_phase, nth - 1, paths)
                return False
            self._armed = None
            self.counts[f"paused_{phase}"] += 1
        return True

    def _hold(self) -> None:
        self.paused.set()
        self._release.wait(timeout=120)

    def _serve(self, handler: ProxyHandler) -> None:
        method = handler.command
        body = handler.read_body()
        if self.delay_s and method in self.delay_methods and self._stopping.wait(self.delay_s):
            handler.reset()
        fault = self._decide(method)
        if fault == "status_5xx":
            handler.answer(503, [("Content-Type", "application/fhir+json")],
                           b'{"resourceType":"OperationOutcome","issue":[{"severity":"error",'
                           b'"code":"transient","diagnostics":"injected 503"}]}')
            return
        if fault == "throttle_429":
            handler.answer(429, [("Retry-After", "1"), ("Content-Type", "application/fhir+json")],
                           b'{"resourceType":"OperationOutcome","issue":[{"severity":"error",'
                           b'"code":"throttled","diagnostics":"injected 429"}]}')
            return
        if fault == "reset_before":
            handler.reset()
        if self._pause_point(method, handler.path, "before"):
            self._hold()
            handler.reset()
        sent = time.monotonic()
        status, headers, payload = self._forward(handler, body)
        self._took(time.monotonic() - sent)
        if method in WRITE_METHODS:
            self._count("writes_applied")
        if self._pause_point(method, handler.path, "after"):
            self._hold()
            handler.reset()
        if fault == "reset_after":
            handler.reset()
        if fault == "timeout_after":
            self._stopping.wait(self.hold_s)
            handler.reset()
        if fault == "gateway_504_after":
            handler.answer(504, [("Content-Type", "application/fhir+json")],
                           b'{"resourceType":"OperationOutcome","issue":[{"severity":"error",'
                           b'"code":"timeout","diagnostics":"injected 504 after forwarding"}]}')
            return
        handler.answer(status, headers, payload)

    def _took(self, seconds: float) -> None:
        with self._lock:
            self.slowest_s = max(self.slowest_s, seconds)
            if self.slow_after_s is not None and seconds >= self.slow_after_s:
                self.counts["slow_answers"] += 1

    def _forward(self, handler: ProxyHandler, body: bytes
                 ) -> tuple[int, list[tuple[str, str]], bytes]:
        conn = http.client.HTTPConnection(self.upstream_host, self.upstream_port,
                                          timeout=self.upstream_timeout_s)
        try:
            headers = {k: v for k, v in handler.headers.items() if k.lower() not in HOP}
            headers["Host"] = f"{self.upstream_host}:{self.upstream_port}"
            headers["Connection"] = "close"
            if body or handler.command in WRITE_METHODS:
                headers["Content-Length"] = str(len(body))
            conn.request(handler.command, handler.path, body=body or None, headers=headers)
            resp = conn.getresponse()
            payload = resp.read()
            self._count("forwarded")
            return resp.status, list(resp.getheaders()), payload
        except (OSError, http.client.HTTPException):
            self._count("upstream_errors")
            handler.reset()
        finally:
            conn.close()

    # -- outage: connections refused (tests/reliability) ---------------------------------
    # The EHR unreachable: the listener is closed, so every connection is refused
    # (ECONNREFUSED) until the outage ends, then a listener on the same port serves again.
    # Requests already being served finish; the upstream (sekmet) is never touched.

    def outage(self, seconds: float) -> threading.Thread:
        """Refuse every connection for ``seconds`` from now, then serve again by itself.

        Returns the thread that reopens the listener; :meth:`wait_outage_over` joins it.
        Call ``stop()`` only after the outage is over (or it ends it early).
        """
        return self.refuse_until(time.monotonic() + seconds)

    def refuse_until(self, deadline: float) -> threading.Thread:
        """Refuse every connection until ``time.monotonic()`` reaches ``deadline``."""
        with self._lock:
            if self._server is None or self._reopener is not None:
                raise RuntimeError("not serving, or already in an outage")
            server, thread = self._server, self._thread
            port = int(server.server_address[1])
            self.counts["outages"] += 1
        server.shutdown()
        server.server_close()  # the port is closed: connections are refused from here on
        if thread is not None:
            thread.join(timeout=10)

        def reopen() -> None:
            if self._stopping.wait(max(0.0, deadline - time.monotonic())):
                return
            new = _PinnedServer(self, port)
            serving = threading.Thread(target=new.serve_forever, kwargs={"poll_interval": 0.1},
                                       name="fault-proxy", daemon=True)
            with self._lock:
                self._server, self._thread = new, serving
                self._reopener = None
            serving.start()

        reopener = threading.Thread(target=reopen, name="fault-proxy-outage", daemon=True)
        self._reopener = reopener
        reopener.start()
        return reopener

    @property
    def in_outage(self) -> bool:
        with self._lock:
            return self._reopener is not None

    def wait_outage_over(self, timeout_s: float) -> bool:
        """Wait (bounded) until the listener serves again."""
        reopener = self._reopener
        if reopener is not None:
            reopener.join(timeout=timeout_s)
        return not self.in_outage


class _PinnedServer(LoopbackServer):
    """A loopback server on a given port (the outage's listener, reopened where it was)."""

    def __init__(self, owner: FaultProxy, port: int) -> None:
        self._pinned_port = port
        super().__init__(owner)

    def server_bind(self) -> None:
        self.server_address = ("127.0.0.1", self._pinned_port)
        super().server_bind()
