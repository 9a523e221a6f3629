"""Retry decisions: a pure function of (error, attempts).

Transient failures (nothing reached the server, timeouts, 429, 5xx) are
retried with exponential backoff and full jitter, honouring ``Retry-After``;
everything else is a data problem for an admin. A lost response is neither:
the write may have been applied, so it is settled by a look-up first.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from connector.errors import (
    ConnectorError,
    EhrConflict,
    EhrOutcomeUnknown,
    EhrTransient,
    EhrUnavailable,
)
from connector.states import JobState

BASE_DELAY_S = 2.0
MAX_DELAY_S = 300.0


@dataclass(frozen=True, slots=True)
class Decision:
    state: JobState
    delay_s: float = 0.0


def decide(
    error: ConnectorError,
    attempts: int,
    *,
    max_attempts: int = 8,
    rng: random.Random | None = None,
) -> Decision:
    """What to do with a job whose ``attempts``-th try (1-based) failed with ``error``."""
    if isinstance(error, EhrOutcomeUnknown):
        return Decision(JobState.UNKNOWN, delay_s=backoff(attempts, rng=rng))
    if isinstance(error, EhrUnavailable | EhrTransient):
        if attempts >= max_attempts:
            return Decision(JobState.NEEDS_ATTENTION)
        delay = backoff(attempts, rng=rng)
        retry_after = getattr(error, "retry_after", None)
        if retry_after is not None:
            delay = max(delay, min(float(retry_after), MAX_DELAY_S))
        return Decision(JobState.RETRY_SCHEDULED, delay_s=delay)
    if isinstance(error, EhrConflict):
        return Decision(JobState.NEEDS_ATTENTION)
    return Decision(JobState.NEEDS_ATTENTION)


def backoff(attempts: int, *, rng: random.Random | None = None) -> float:
    """Exponential backoff with jitter: uniform in [base / 2, base * 2**(n-1)], capped."""
    # The exponent is bounded first: 2.0 * 2**1100 does not fit in a float.
    ceiling = min(MAX_DELAY_S, BASE_DELAY_S * (2 ** min(max(0, attempts - 1), 32)))
    return (rng or random).uniform(BASE_DELAY_S / 2, ceiling)
