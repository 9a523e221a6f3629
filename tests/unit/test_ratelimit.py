"""The EHR's rate limit (connector.ratelimit): a token bucket in the store shared by every
worker, on SQLite and PostgreSQL, with an injected clock (nothing really sleeps here)."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import responses
from sqlalchemy import event

from connector import gate, ratelimit
from connector.config import parse_config
from connector.errors import ConfigError
from connector.fhir_client import Exchange, FhirClient
from connector.ratelimit import HOLD_S, RateLimiter, RateLimitWaitAborted, bucket_params
from connector.store import Store
from connector.sync import SyncEngine

URL = "http://127.0.0.1:9/fhir"
T0 = 1_800_000_000.0


class Clock:
    """A shared fake clock: ``sleep`` moves it on."""

    def __init__(self, t: float = T0) -> None:
        self.t = t
        self.slept = 0.0

    def __call__(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.t += seconds
        self.slept += seconds


def _no_sleep(seconds: float) -> None:
    raise AssertionError(f"slept {seconds} s")


@pytest.fixture
def second_store(store: Store) -> Iterator[Store]:
    """Another worker: its own Store (engine, connections) on the same database."""
    other = Store.from_url(store.engine.url.render_as_string(hide_password=False))
    yield other
    other.close()


def _limiter(store: Store, clock: Clock, per_minute: int, **kw: Any) -> RateLimiter:
    kw.setdefault("sleep", clock.sleep)
    return RateLimiter(store, per_minute=per_minute, key=URL, clock=clock,
                       rng=random.Random(1), **kw)


class Asleep(Exception):
    """A simulated worker goes to sleep: the others go on meanwhile."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds


def _asleep(seconds: float) -> None:
    raise Asleep(seconds)


def _max_in_window(times: list[float], window: float = 60.0) -> int:
    """The most requests in any rolling ``window`` (half-open) of these times."""
    times = sorted(times)
    best, start = 0, 0
    for end, at in enumerate(times):
        while times[start] <= at - window:
            start += 1
        best = max(best, end - start + 1)
    return best


@pytest.mark.parametrize("n", [1, 2, 9, 10, 60, 250, 600, 6000, 1_000_000])
def test_the_bucket_never_allows_more_than_n_in_a_minute_and_a_hold(n: int) -> None:
    block, rate = bucket_params(n)
    assert 1 <= block <= min(n, ratelimit.MAX_BLOCK)
    # at most n whole tokens in any 60 s + HOLD_S, and no worse than 15 % under n
    assert block + rate * (60 + HOLD_S) < n + 1
    assert rate * 60 >= 0.85 * n - 1 or n < 10


def test_two_workers_together_never_send_more_than_n_in_any_minute(
    store: Store, second_store: Store,
) -> None:
    """Two workers as a discrete-event simulation on one clock: each sends as fast as it is
    let, requests of varied latency (bursts too); one asleep does not hold up the other."""
    clock, n = Clock(), 120
    workers = [_limiter(s, clock, n, sleep=_asleep) for s in (store, second_store)]
    rng = random.Random(7)
    sent: list[list[float]] = [[], []]
    ready = [T0, T0]
    while min(ready) < T0 + 200:
        i = ready.index(min(ready))
        clock.t = ready[i]
        try:
            workers[i].acquire()
        except Asleep as asleep:
            ready[i] = clock.t + asleep.seconds
            continue
        sent[i].append(clock.t)
        ready[i] = clock.t + rng.choice((0.0, 0.01, 0.2))
    both = sent[0] + sent[1]
    assert sent[0] and sent[1]
    assert _max_in_window(both) <= n
    # ... and not much under: the bucket refills at (n - block + 0.5) / (60 + HOLD_S)
    assert len(both) >= 0.9 * n * 200 / 60 - 20
    # even with the limit holding both back: a few statements a second, not a busy loop
    assert sum(w.round_trips for w in workers) < 2 * len(both)


def test_under_the_limit_a_round_trip_takes_a_block_of_ten(store: Store) -> None:
    clock = Clock()
    limiter = _limiter(store, clock, 6000, sleep=_no_sleep)
    for _ in range(100):
        limiter.acquire()
        clock.t += 0.05  # 20 requests a second, the limit is 100
    assert limiter.round_trips <= 100 // 10 + 1  # + the row's first insert


def test_tokens_refill_after_a_wait_and_the_bucket_caps_at_one_block(store: Store) -> None:
    clock, n = Clock(), 600
    limiter = _limiter(store, clock, n)
    block, rate = bucket_params(n)
    for _ in range(block):  # a full bucket: no wait
        limiter.acquire()
    assert clock.slept == 0
    assert limiter.available() == pytest.approx(0.0)
    limiter.acquire()  # empty: waits for half a block, then goes
    assert clock.slept == pytest.approx(limiter.want / rate, rel=0.06)
    clock.t += 3600  # an hour idle refills one block, never more
    assert limiter.available() == pytest.approx(float(block))
    assert limiter.take(block) == block
    assert limiter.take(1) == 0


def test_a_worker_takes_what_is_left_when_less_than_a_block(store: Store) -> None:
    clock = Clock()
    limiter = _limiter(store, clock, 600)
    assert limiter.take(7) == 7  # 3 left of 10
    limiter.sleep = _no_sleep
    for _ in range(3):
        limiter.acquire()
    assert limiter.available() == pytest.approx(0.0)


def test_unspent_tokens_are_dropped_after_the_hold(store: Store) -> None:
    clock = Clock()
    limiter = _limiter(store, clock, 600)
    limiter.acquire()  # a block of 10 taken, 9 held
    clock.t += HOLD_S + 0.5
    before = limiter.round_trips
    limiter.acquire()  # the 9 are dropped: this one comes from the bucket
    assert limiter.round_trips > before


def test_zero_means_no_limit_and_no_database_round_trip(tmp_path: Path, store: Store,
                                                        profile: Any) -> None:
    statements: list[str] = []
    event.listen(store.engine, "before_cursor_execute",
                 lambda *args: statements.append(str(args[2])))
    client = FhirClient(base_url=URL, timeout_s=2, connect_retries=0)
    assert ratelimit.install(client, store, 0) is None
    assert client.before_request is None
    config = parse_config({"ehr": {"base_url": URL}}, path=tmp_path / "peersync.toml",
                          environ={})
    assert config.ehr.max_requests_per_minute == 0
    engine = SyncEngine(store=store, client=client, profile=profile, config=config)
    assert engine.limiter is None and client.before_request is None
    with responses.RequestsMock() as mock:
        mock.get(f"{URL}/Patient/p1", json={"resourceType": "Patient", "id": "p1"})
        client.read("Patient", "p1")
    assert statements == []
    client.close()


def test_the_client_takes_a_token_before_every_request(store: Store) -> None:
    clock = Clock()
    exchanges: list[Exchange] = []
    client = FhirClient(base_url=URL, timeout_s=2, connect_retries=0,
                        on_exchange=exchanges.append)
    limiter = ratelimit.install(client, store, 600)
    assert limiter is not None and client.before_request == limiter.acquire
    limiter.clock, limiter.sleep = clock, clock.sleep
    with responses.RequestsMock() as mock:
        mock.get(f"{URL}/Patient/p1", json={"resourceType": "Patient", "id": "p1"})
        for _ in range(12):  # one block of 10, then waits for tokens
            client.read("Patient", "p1")
        assert len(mock.calls) == 12
    assert clock.slept > 0
    # the worker stops while waiting: the request is not sent, and no exchange is reported
    limiter.sleep = None
    limiter.stop = threading.Event()
    limiter.stop.set()
    with responses.RequestsMock() as mock, pytest.raises(RateLimitWaitAborted):
        client.read("Patient", "p1")
    assert len(exchanges) == 12
    client.close()


def test_a_stopped_or_too_long_wait_sends_nothing_and_is_no_outage(store: Store) -> None:
    clock = Clock()
    stop = threading.Event()
    limiter = _limiter(store, clock, 60, stop=stop)  # block 6, ~0.9 tokens a second
    for _ in range(6):
        limiter.acquire()
    stop.set()
    with pytest.raises(RateLimitWaitAborted) as caught:
        limiter.acquire()
    assert caught.value.retry_safe and gate.outage_kind(caught.value) is None
    patient = _limiter(store, Clock(clock.t), 60, max_wait_s=0.5)
    with pytest.raises(RateLimitWaitAborted, match="no token within"):
        patient.acquire()


def test_concurrent_takes_never_take_more_than_the_bucket_holds(
    store: Store, second_store: Store,
) -> None:
    """Time stands still: one block is all there is, however many threads on two stores."""
    clock = Clock()
    limiters = [_limiter(s, clock, 600) for s in (store, second_store)]
    for limiter in limiters:
        limiter.take(0)  # the row exists before the race
    got: list[int] = []
    barrier = threading.Barrier(4)

    def worker(limiter: RateLimiter) -> None:
        barrier.wait()
        got.extend(limiter.take(1) for _ in range(8))

    threads = [threading.Thread(target=worker, args=(limiters[i % 2],)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(got) == 10


def test_threads_of_one_worker_share_its_tokens(store: Store) -> None:
    clock = Clock()
    limiter = _limiter(store, clock, 600)
    taken: list[int] = []
    original = limiter.take

    def counting_take(k: int, *, now: float | None = None) -> int:
        got = original(k, now=now)
        taken.append(got)
        return got

    limiter.take = counting_take  # type: ignore[method-assign]
    threads = [threading.Thread(target=lambda: [limiter.acquire() for _ in range(25)])
               for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # 100 requests, each with a token of its own: none spent twice, fewer than a block unspent
    assert 100 <= sum(taken) < 100 + limiter.block


def test_max_requests_per_minute_is_validated_with_the_key_named(tmp_path: Path) -> None:
    path = tmp_path / "peersync.toml"
    ok = parse_config({"ehr": {"base_url": URL, "max_requests_per_minute": 250}}, path=path,
                      environ={})
    assert ok.ehr.max_requests_per_minute == 250
    for bad in (-1, 1.5, "250", True, 10**9):
        with pytest.raises(ConfigError, match=r"ehr\.max_requests_per_minute"):
            parse_config({"ehr": {"base_url": URL, "max_requests_per_minute": bad}},
                         path=path, environ={})


def test_the_template_names_the_key_with_a_comment() -> None:
    from connector.config import CONFIG_TEMPLATE

    line = next(x for x in CONFIG_TEMPLATE.splitlines()
                if x.startswith("max_requests_per_minute"))
    assert "= 0" in line and "#" in line


def test_a_request_under_a_match_or_create_lock_does_not_wait_for_its_own_lock(
    store: Store,
) -> None:
    """SQLite: ``Store.exclusive`` holds the one write lock while it asks the EHR; the
    token is taken in that transaction, not in one waiting for it until the busy timeout."""
    clock = Clock()
    limiter = _limiter(store, clock, 600, sleep=_no_sleep)
    started = time.monotonic()
    with store.exclusive("link|practitioner|S-17"):
        limiter.acquire()
    assert time.monotonic() - started < 5
    assert limiter.available() == pytest.approx(0.0)  # a block taken, committed with it
