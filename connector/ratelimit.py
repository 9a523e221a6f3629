"""The EHR's rate limit: ``[ehr] max_requests_per_minute`` across every worker sharing a store.

A token bucket in the database (``ehr_rate_limit``, one row per EHR base URL),
shared by every worker process on every host. The FHIR client calls
:meth:`RateLimiter.acquire` before each request (``FhirClient.before_request``,
set by :func:`install` when the limit is > 0); with no limit nothing is
installed and no request costs a database round trip.

- **taking**: a worker takes a small block of tokens (``block``: a tenth of the
  limit, 1 to 10) in one conditional UPDATE that refills the bucket for the time
  since the last take, checks that ``block`` tokens are there and takes them
  (PostgreSQL: one atomic statement; SQLite: the same statement in a write
  transaction). It then spends them locally, one per request, under a lock: the
  threads of one worker share them.
- **waiting**: short of a block, a worker reads the bucket and takes what is
  there; an empty bucket tells how long until half a block is back, and the
  worker sleeps that long and takes it (waits bounded by ``max_wait_s`` in all;
  the worker's stop event ends a wait at once, and the request is then not
  sent: :class:`RateLimitWaitAborted`, retried like any other safe failure).
- **the bound**: tokens left unspent ``HOLD_S`` after they were taken are
  dropped, so a request sent at *t* used a token taken after *t - HOLD_S*. The
  bucket holds at most ``block`` and refills at ``(N - block + 0.5) / (60 +
  HOLD_S)`` a second, so in any ``60 + HOLD_S`` seconds at most N tokens are
  taken, and in any rolling minute at most N requests are sent by all workers
  together. The steady rate is a little under N (600/min: ~570; 60/min: ~53).
- **the gate**: a 429 with ``Retry-After`` closes the EHR gate
  (:mod:`connector.gate`) and nobody claims until then; the bucket keeps
  refilling meanwhile (up to ``block``), so when the gate opens the first
  requests go at once: the two waits never add up.

Times are the workers' clocks (Unix seconds); the row's ``refilled_at`` never
moves back, so a worker whose clock is behind gets no refill until it catches
up, and one ahead credits its lead once: hosts' clock skew moves the refill by
at most the skew (NTP keeps that to milliseconds). Token requests to an OAuth
endpoint go through the auth, not this hook, and are not counted.
"""

from __future__ import annotations

import hashlib
import logging
import random
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    Float,
    case,
    event,
    literal,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite

from connector.errors import EhrError
from connector.schema import ehr_rate_limit

if TYPE_CHECKING:
    from connector.fhir_client import FhirClient
    from connector.store import Store

log = logging.getLogger("peersync.ratelimit")

MAX_BLOCK = 10  # tokens taken from the bucket at once, at most
HOLD_S = 2.0  # a worker's unspent tokens are dropped this long after they were taken
MAX_WAIT_S = 300.0  # one request waits at most this long for a token, then fails (retried)


class RateLimitWaitAborted(EhrError):
    """No token for this request: the worker is stopping, or none came within ``max_wait_s``.

    The request was not sent, so retry is safe; it is no sign that the EHR is down
    (the gate ignores it).
    """

    retry_safe = True


def bucket_key(base_url: str) -> str:
    """The bucket's row: the EHR base URL (it never carries credentials), or its hash if long."""
    if len(base_url) <= 200:
        return base_url
    return "sha256:" + hashlib.sha256(base_url.encode("utf-8")).hexdigest()


def bucket_params(per_minute: int) -> tuple[int, float]:
    """(block = the bucket's capacity, refill per second) for ``per_minute`` > 0.

    ``block + rate * (60 + HOLD_S)`` stays under ``per_minute + 1``: at most
    ``per_minute`` whole tokens in any ``60 + HOLD_S`` seconds.
    """
    if per_minute <= 0:
        raise ValueError("per_minute must be > 0")
    block = max(1, min(MAX_BLOCK, per_minute // 10))
    return block, (per_minute - block + 0.5) / (60.0 + HOLD_S)


class _HeldWrite:
    """SQLite: the write transaction this thread holds, if any.

    A match-or-create (``Store.exclusive``) holds SQLite's one write lock while it
    searches and creates in the EHR; a take in a transaction of its own would wait
    for that lock, held by its own thread, until the busy timeout. A request made
    under it takes its tokens in that same transaction instead (the lock is held:
    it is just as atomic; were it rolled back, those tokens would be handed back).
    """

    def __init__(self, engine: Engine) -> None:
        self._local = threading.local()
        event.listen(engine, "begin", self._begin)
        event.listen(engine, "commit", self._end)
        event.listen(engine, "rollback", self._end)

    def _begin(self, conn: Connection) -> None:
        if conn.get_execution_options().get("peersync_write", False):
            self._local.conn = conn

    def _end(self, conn: Connection) -> None:
        if getattr(self._local, "conn", None) is conn:
            self._local.conn = None

    def current(self) -> Connection | None:
        conn: Connection | None = getattr(self._local, "conn", None)
        return conn


class RateLimiter:
    """One worker's view of the shared bucket; thread-safe. ``acquire()`` before each request."""

    def __init__(
        self,
        store: Store,
        *,
        per_minute: int,
        key: str,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] | None = None,
        stop: threading.Event | None = None,
        max_wait_s: float = MAX_WAIT_S,
        rng: random.Random | None = None,
    ) -> None:
        self.store = store
        self.per_minute = per_minute
        self.block, self.rate = bucket_params(per_minute)
        # an empty bucket: wait until half a block is there (fewer round trips when the
        # limit is what holds the workers back; the bucket never overflows meanwhile)
        self.want = max(1, self.block // 2)
        self.key = key
        self.clock = clock
        self.sleep = sleep  # tests: a fake clock's sleep; None: the stop event's wait
        self.stop = stop  # the worker's stop event (set by the engine's run): ends a wait
        self.max_wait_s = max_wait_s
        self.rng = rng or random.Random()
        self._lock = threading.Lock()
        self._tokens = 0  # taken from the bucket, not spent yet
        self._taken_at = 0.0
        self._row_ready = False
        self._held = _HeldWrite(store.engine) if store.dialect == "sqlite" else None
        self.waited_s = 0.0  # in all, for reports and tests
        self.round_trips = 0  # statements sent to the database, for tests

    # -- the hook ----------------------------------------------------------

    def acquire(self) -> None:
        """Spend one token, taking a block from the bucket or waiting for one if needed."""
        with self._lock:
            waited, k = 0.0, self.block
            while True:
                if self.stop is not None and self.stop.is_set():
                    raise RateLimitWaitAborted("rate limit: the worker is stopping; not sent")
                now = self.clock()
                if self._tokens > 0 and now - self._taken_at <= HOLD_S:
                    self._tokens -= 1
                    return
                self._tokens = 0  # unspent for too long: dropped (see the module's bound)
                got = self.take(k, now=now)
                available = 0.0
                if not got:  # fewer than k: take what is there, else wait for half a block
                    available = self.available(now=now)
                    if available >= 1:
                        got = self.take(min(self.block, int(available)), now=now)
                if got:
                    self._tokens, self._taken_at = got - 1, now
                    return
                pause, k = self.wait_for(self.want, available), self.want
                if waited + pause > self.max_wait_s:
                    raise RateLimitWaitAborted(
                        f"rate limit: no token within {self.max_wait_s:.0f} s; not sent")
                log.debug("rate limit %d/min: waiting %.3f s for a token", self.per_minute,
                          pause)
                self._pause(pause)
                waited += pause
                self.waited_s += pause

    __call__ = acquire

    def wait_for(self, tokens: int, available: float) -> float:
        """Seconds until a bucket holding ``available`` holds ``tokens``, with a little jitter
        so that waiting workers do not all come back in the same millisecond."""
        missing = max(0.0, tokens - available)
        return missing / self.rate * (1.0 + 0.05 * self.rng.random()) if missing else 0.0

    def _pause(self, seconds: float) -> None:
        if self.sleep is not None:
            self.sleep(seconds)
        elif self.stop is not None:
            self.stop.wait(seconds)  # set: the loop's next turn raises
        else:
            time.sleep(seconds)

    # -- the bucket ---------------------------------------------------------

    def _filled(self, now: float) -> ColumnElement[float]:
        """The bucket's tokens at ``now``: refilled since the last take, capped at ``block``."""
        t = ehr_rate_limit.c
        at = literal(now, Float)
        elapsed = case((at > t.refilled_at, at - t.refilled_at), else_=literal(0.0, Float))
        filled = t.tokens + elapsed * literal(self.rate, Float)
        cap = literal(float(self.block), Float)
        return case((filled > cap, cap), else_=filled)

    def _ensure_row(self, now: float) -> None:
        if self._row_ready:
            return
        dialect = self.store.dialect
        insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
        self._write(insert(ehr_rate_limit)
                    .values(key=self.key, tokens=float(self.block), refilled_at=now)
                    .on_conflict_do_nothing(index_elements=["key"]))
        self._row_ready = True

    def take(self, k: int, *, now: float | None = None) -> int:
        """Take ``k`` tokens in one conditional UPDATE: ``k`` when they were there, else 0."""
        now = self.clock() if now is None else now
        self._ensure_row(now)
        t = ehr_rate_limit.c
        filled = self._filled(now)
        at = literal(now, Float)
        taken = self._write(
            update(ehr_rate_limit)
            .where(t.key == self.key, filled >= literal(float(k), Float))
            .values(tokens=filled - literal(float(k), Float),
                    refilled_at=case((at > t.refilled_at, at), else_=t.refilled_at)))
        return k if taken else 0

    def _write(self, statement: Any) -> int:
        """One statement in a write transaction of its own (or this thread's: SQLite)."""
        self.round_trips += 1
        held = self._held.current() if self._held is not None else None
        if held is not None:
            return int(held.execute(statement).rowcount)
        with self.store.begin(audited=False) as conn:
            return int(conn.execute(statement).rowcount)

    def available(self, *, now: float | None = None) -> float:
        """The bucket's tokens at ``now`` (a read; it changes nothing)."""
        now = self.clock() if now is None else now
        self._ensure_row(now)
        with self.store.engine.connect() as conn:
            value = conn.execute(select(self._filled(now))
                                 .where(ehr_rate_limit.c.key == self.key)).scalar()
        self.round_trips += 1
        return float(value or 0.0)


def install(client: FhirClient, store: Store, per_minute: int, *,
            stop: threading.Event | None = None) -> RateLimiter | None:
    """Make ``client`` take a token before every request when ``per_minute`` > 0.

    Returns the limiter (its ``stop`` may be set later), or None when there is no
    limit: then the client has no hook and requests cost no database round trip.
    """
    if per_minute <= 0:
        return None
    limiter = RateLimiter(store, per_minute=per_minute, key=bucket_key(client.base_url),
                          stop=stop)
    client.before_request = limiter.acquire
    return limiter
