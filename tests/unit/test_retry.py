"""Retry decisions: a pure function of (error, attempts, first failure, now), and the backoff."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest

from connector.errors import (
    ConfigError,
    ConnectorError,
    EhrAuthError,
    EhrConflict,
    EhrNotFound,
    EhrOutcomeUnknown,
    EhrRejected,
    EhrTransient,
    EhrUnavailable,
    FieldError,
    RecordInvalid,
)
from connector.retry import (
    BASE_DELAY_S,
    GAVE_UP,
    GIVE_UP_AFTER_S,
    MAX_DELAY_S,
    Decision,
    backoff,
    decide,
)
from connector.states import JobState
from connector.store import StoreError

URL = "https://ehr.example.org/fhir"


def transient(status: int = 503, retry_after: float | None = None) -> EhrTransient:
    return EhrTransient(
        f"HTTP {status}", status=status, method="POST", url=URL, retry_after=retry_after
    )


def ceiling(attempts: int) -> float:
    """The largest delay the attempts-th failure may wait."""
    return min(MAX_DELAY_S, BASE_DELAY_S * 2 ** max(0, attempts - 1))


TRANSIENT: list[ConnectorError] = [
    EhrUnavailable("connection refused", method="POST", url=URL),
    transient(503),
    transient(429),
    transient(500),
]
PERMANENT: list[ConnectorError] = [
    EhrConflict("HTTP 412", status=412, url=URL),
    EhrConflict("HTTP 409", status=409, url=URL),
    EhrRejected("HTTP 422", status=422, url=URL),
    EhrRejected("HTTP 400", status=400, url=URL),
    EhrNotFound("HTTP 404", status=404, url=URL),
    EhrAuthError("HTTP 403", status=403, url=URL, missing_scope="system/Encounter.write"),
    RecordInvalid([FieldError("end", "must not be before start")], record_id="ps-1"),
    ConfigError("profile: bad"),
]


@pytest.mark.parametrize("error", TRANSIENT, ids=lambda e: type(e).__name__ + "-" + str(e))
@pytest.mark.parametrize("attempts", [1, 2, 3, 5, 7])
def test_a_transient_failure_is_retried_later(error: ConnectorError, attempts: int) -> None:
    decision = decide(error, attempts, max_attempts=8, rng=random.Random(attempts))

    assert decision.state is JobState.RETRY_SCHEDULED
    assert BASE_DELAY_S / 2 <= decision.delay_s <= ceiling(attempts)


NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize("error", TRANSIENT, ids=lambda e: type(e).__name__ + "-" + str(e))
@pytest.mark.parametrize("attempts", [8, 9, 50, 10_000])
def test_a_transient_failure_is_never_exhausted_by_a_count(
    error: ConnectorError, attempts: int
) -> None:
    """Finding 3: an outage of two minutes spent all 8 attempts. Now only time counts."""
    two_hours_in = NOW - timedelta(hours=2)

    for max_attempts in (1, 8):
        decision = decide(error, attempts, max_attempts=max_attempts,
                          first_failure_at=two_hours_in, now=NOW, rng=random.Random(attempts))
        assert decision.state is JobState.RETRY_SCHEDULED
        assert 0 < decision.delay_s <= MAX_DELAY_S


@pytest.mark.parametrize("error", TRANSIENT, ids=lambda e: type(e).__name__ + "-" + str(e))
def test_a_transient_failure_gives_up_after_the_time_budget(error: ConnectorError) -> None:
    budget = 3600.0
    just_inside = decide(error, 3, first_failure_at=NOW - timedelta(seconds=budget - 1),
                         now=NOW, give_up_after_s=budget, rng=random.Random(0))
    at_budget = decide(error, 3, first_failure_at=NOW - timedelta(seconds=budget), now=NOW,
                       give_up_after_s=budget)
    past = decide(error, 1, first_failure_at=NOW - timedelta(days=9), now=NOW,
                  give_up_after_s=budget)

    assert just_inside.state is JobState.RETRY_SCHEDULED
    assert at_budget == past == Decision(JobState.NEEDS_ATTENTION, reason=GAVE_UP)
    assert GAVE_UP == "gave-up-after-outage"


def test_the_default_budget_is_72_hours() -> None:
    error = transient(503)
    assert GIVE_UP_AFTER_S == 72 * 3600
    inside = decide(error, 500, first_failure_at=NOW - timedelta(hours=71, minutes=59),
                    now=NOW, rng=random.Random(0))
    outside = decide(error, 2, first_failure_at=NOW - timedelta(hours=72), now=NOW)
    assert inside.state is JobState.RETRY_SCHEDULED
    assert outside == Decision(JobState.NEEDS_ATTENTION, reason=GAVE_UP)


def test_max_attempts_counts_the_other_retryable_failures() -> None:
    """A database hiccup mid-send is retried max_attempts times, whatever the clock says."""
    error = StoreError("database error (OperationalError)")
    assert decide(error, 7, max_attempts=8, rng=random.Random(0)).state \
        is JobState.RETRY_SCHEDULED
    assert decide(error, 8, max_attempts=8) == Decision(JobState.NEEDS_ATTENTION)
    assert decide(error, 1, max_attempts=1) == Decision(JobState.NEEDS_ATTENTION)


@pytest.mark.parametrize("days", [0, 3, 30])
def test_a_lost_answer_is_never_given_up(days: int) -> None:
    error = EhrOutcomeUnknown("read timeout", method="POST", url=URL)
    decision = decide(error, 40, first_failure_at=NOW - timedelta(days=days), now=NOW,
                      give_up_after_s=60, rng=random.Random(0))
    assert decision.state is JobState.UNKNOWN


def test_the_backoff_scales_with_its_configured_base_and_cap() -> None:
    rng = random.Random(5)
    delays = [decide(transient(), n, base_s=0.1, max_s=0.4, rng=rng).delay_s
              for n in range(1, 30) for _ in range(20)]
    assert min(delays) >= 0.05 and max(delays) <= 0.4
    assert max(delays) > 0.35  # reaches the cap
    assert decide(transient(429, 3), 1, base_s=0.1, max_s=0.4).delay_s == 0.4  # capped hint


@pytest.mark.parametrize("error", PERMANENT, ids=lambda e: type(e).__name__ + "-" + str(e)[:12])
@pytest.mark.parametrize("attempts", [1, 8, 50])
def test_a_permanent_failure_needs_attention_at_once(error: ConnectorError, attempts: int) -> None:
    assert decide(error, attempts, rng=random.Random(0)) == Decision(JobState.NEEDS_ATTENTION)


@pytest.mark.parametrize("attempts", [1, 2, 8, 9, 40])
def test_a_lost_response_is_unknown_until_looked_up(attempts: int) -> None:
    """Never a blind re-send and never given up: the next try starts with a look-up."""
    error = EhrOutcomeUnknown("read timeout", method="POST", url=URL)

    decision = decide(error, attempts, max_attempts=8, rng=random.Random(1))

    assert decision.state is JobState.UNKNOWN
    assert BASE_DELAY_S / 2 <= decision.delay_s <= ceiling(attempts)


def test_delays_grow_with_attempts_up_to_the_cap() -> None:
    rng = random.Random(20261123)
    error = transient()
    largest = {
        attempts: max(decide(error, attempts, max_attempts=99, rng=rng).delay_s for _ in range(300))
        for attempts in range(1, 12)
    }
    smallest = {
        attempts: min(decide(error, attempts, max_attempts=99, rng=rng).delay_s for _ in range(300))
        for attempts in range(1, 12)
    }

    # The reachable range doubles each time: with 300 draws the largest comes near it.
    for attempts in range(1, 9):
        assert 0.8 * ceiling(attempts) <= largest[attempts] <= ceiling(attempts)
        assert largest[attempts] < largest[attempts + 1]
    for attempts in range(9, 12):  # 2 * 2**8 = 512 > 300: capped
        assert 0.9 * MAX_DELAY_S <= largest[attempts] <= MAX_DELAY_S
    assert all(delay >= BASE_DELAY_S / 2 for delay in smallest.values())  # never a hot loop


@pytest.mark.parametrize("retry_after", [0, 1.5, 45, 299.0])
def test_retry_after_is_honoured(retry_after: float) -> None:
    for seed in range(20):
        decision = decide(transient(429, retry_after), 1, rng=random.Random(seed))
        assert decision.state is JobState.RETRY_SCHEDULED
        assert decision.delay_s >= retry_after
        assert decision.delay_s <= max(retry_after, ceiling(1))


def test_retry_after_does_not_shorten_the_backoff() -> None:
    plain = decide(transient(503), 6, rng=random.Random(3)).delay_s
    hinted = decide(transient(503, retry_after=1), 6, rng=random.Random(3)).delay_s
    assert hinted == plain > 1


@pytest.mark.parametrize("retry_after", [301, 3600, 10**9, float("inf")])
def test_a_long_retry_after_is_capped(retry_after: float) -> None:
    decision = decide(transient(503, retry_after), 1, rng=random.Random(0))

    assert decision == Decision(JobState.RETRY_SCHEDULED, delay_s=MAX_DELAY_S)


def test_retry_after_does_not_outlast_the_budget() -> None:
    assert decide(transient(429, 60), 8, max_attempts=8, first_failure_at=NOW - timedelta(
        hours=80), now=NOW) == Decision(JobState.NEEDS_ATTENTION, reason=GAVE_UP)


def test_the_same_seed_gives_the_same_decision() -> None:
    first = [decide(transient(), n, rng=random.Random(42)) for n in range(1, 8)]
    again = [decide(transient(), n, rng=random.Random(42)) for n in range(1, 8)]
    assert first == again


@pytest.mark.parametrize("attempts", [-3, 0, 1, 2, 3, 4, 8, 9, 64, 1100, 10**6])
def test_backoff_stays_within_its_bounds(attempts: int) -> None:
    rng = random.Random(attempts)
    for _ in range(200):
        delay = backoff(attempts, rng=rng)
        assert BASE_DELAY_S / 2 <= delay <= ceiling(min(attempts, 64))
        assert delay <= MAX_DELAY_S


def test_backoff_without_a_random_source_uses_the_module_one() -> None:
    delays = [backoff(3) for _ in range(50)]
    assert all(BASE_DELAY_S / 2 <= d <= ceiling(3) for d in delays)
    assert len(set(delays)) > 1  # jittered
