"""Query parameters of the list pages (dates, page numbers, cursors), parsed in one place.

A filter is a convenience, never a way to crash a page: text that is not a
date or a number is ignored (as if the filter were empty), and a date or a
number outside what the pages can compute with is clamped into range. The
range keeps every derived value (the next day, a week back, the instant in
the agency's zone or UTC, an SQL offset) inside what ``datetime`` and the
databases hold, so ``to=9999-12-31`` or ``page=10**30`` never reach an
OverflowError.
"""

from __future__ import annotations

from datetime import date

from flask import request

MIN_DAY = date(1000, 1, 1)
MAX_DAY = date(9000, 12, 31)
MAX_PAGE = 1_000_000  # x 50 rows a page: far beyond any list, far inside a 64-bit offset
MAX_CURSOR = 2**62  # audit sequence numbers are 64-bit integers
MAX_DIGITS = 40  # longer "numbers" are not parsed at all (int() of huge text is slow)


def parse_day(value: str | None) -> date | None:
    """An ISO date (YYYY-MM-DD) clamped to [MIN_DAY, MAX_DAY]; None when empty or not a date."""
    text = (value or "").strip()
    if not text or len(text) > 32:
        return None
    try:
        day = date.fromisoformat(text)
    except ValueError:
        return None
    return min(max(day, MIN_DAY), MAX_DAY)


def parse_int(value: str | None, *, low: int, high: int) -> int | None:
    """A whole number clamped to [low, high]; None when empty or not a number."""
    text = (value or "").strip()
    if not text or len(text) > MAX_DIGITS:
        return None
    try:
        number = int(text, 10)
    except ValueError:
        return None
    return min(max(number, low), high)


def day_arg(name: str) -> date | None:
    """The query parameter ``name`` as a day (see :func:`parse_day`)."""
    return parse_day(request.args.get(name))


def page_arg(name: str = "page") -> int:
    """The 1-based page number in the query parameter ``name``: 1 unless a number is given."""
    return parse_int(request.args.get(name), low=1, high=MAX_PAGE) or 1


def cursor_arg(name: str) -> int | None:
    """A positive sequence number used as a cursor (e.g. the audit's ``before``), or None."""
    return parse_int(request.args.get(name), low=0, high=MAX_CURSOR)
