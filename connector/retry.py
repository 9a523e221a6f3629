"""Retry decisions: a pure function of (error, attempts, first failure time, now).

Transient failures (nothing reached the server, timeouts, 429, 5xx) are
retried with capped exponential backoff and full jitter, honouring
``Retry-After``, until a *time* budget runs out: ``give_up_after_s`` counted
from the record's first failure (an outage of hours is waited out, however
many tries it costs). Other failures that are safe to retry (a database
hiccup) are counted: ``max_attempts`` of them, then an admin looks. Everything
else is a data problem for an admin. A lost response is neither: the write may
have been applied, so it is settled by a look-up first (``unknown``, never
given up).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime

from connector.errors import (
    ConnectorError,
    EhrOutcomeUnknown,
    EhrTransient,
    EhrUnavailable,
)
from connector.states import JobState

BASE_DELAY_S = 2.0
MAX_DELAY_S = 300.0
GIVE_UP_AFTER_S = 259200.0  # 72 h
GAVE_UP = "gave-up-after-outage"


@dataclass(frozen=True, slots=True)
class Decision:
    state: JobState
    delay_s: float = 0.0
    reason: str | None = None  # set when the decision is not the error's own message


def is_transient(error: ConnectorError) -> bool:
    """The EHR could not take it now (unreachable, 429, 5xx): wait it out."""
    return isinstance(error, EhrUnavailable | EhrTransient)


def decide(
    error: ConnectorError,
    attempts: int,
    *,
    max_attempts: int = 8,
    first_failure_at: datetime | None = None,
    now: datetime | None = None,
    give_up_after_s: float = GIVE_UP_AFTER_S,
    base_s: float | None = None,
    max_s: float | None = None,
    rng: random.Random | None = None,
) -> Decision:
    """What to do with a job whose ``attempts``-th try (1-based) failed with ``error``.

    ``first_failure_at``: when this record's current run of failures began
    (``now`` when this is the first); the transient budget counts from there.
    ``base_s`` / ``max_s``: the backoff's first step and cap (None: the module's).
    """
    cap = MAX_DELAY_S if max_s is None else max_s
    if isinstance(error, EhrOutcomeUnknown):
        return Decision(JobState.UNKNOWN, delay_s=backoff(attempts, base_s=base_s, max_s=max_s,
                                                          rng=rng))
    if is_transient(error):
        spent = (now - first_failure_at).total_seconds() if first_failure_at and now else 0.0
        if spent >= give_up_after_s:
            return Decision(JobState.NEEDS_ATTENTION, reason=GAVE_UP)
        delay = backoff(attempts, base_s=base_s, max_s=max_s, rng=rng)
        retry_after = getattr(error, "retry_after", None)
        if retry_after is not None:
            delay = max(delay, min(float(retry_after), cap))
        return Decision(JobState.RETRY_SCHEDULED, delay_s=delay)
    if error.retry_safe and attempts < max_attempts:
        return Decision(JobState.RETRY_SCHEDULED,
                        delay_s=backoff(attempts, base_s=base_s, max_s=max_s, rng=rng))
    return Decision(JobState.NEEDS_ATTENTION)


def backoff(
    attempts: int,
    *,
    base_s: float | None = None,
    max_s: float | None = None,
    rng: random.Random | None = None,
) -> float:
    """Exponential backoff with jitter: uniform in [base / 2, base * 2**(n-1)], capped."""
    base = BASE_DELAY_S if base_s is None else base_s
    cap = MAX_DELAY_S if max_s is None else max_s
    # The exponent is bounded first: 2.0 * 2**1100 does not fit in a float.
    ceiling = max(base / 2, min(cap, base * (2 ** min(max(0, attempts - 1), 32))))
    return (rng or random).uniform(base / 2, ceiling)
