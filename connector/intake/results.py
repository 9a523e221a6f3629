"""Accepted / Rejected, and validating one decoded record or an API payload."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import islice
from typing import TypeAlias

from connector.errors import FieldError, RecordInvalid
from connector.intake.limits import MAX_ERRORS
from connector.intake.messages import (
    MSG_NOT_OBJECT,
    _cross_field,
    _translate,
    _valid_id,
    _walk_values,
    structure_errors,
)
from connector.intake.validator import _FAST_CHECK, VALIDATOR
from connector.records import EncounterRecord

# --------------------------------------------------------------------------
# Results


@dataclass(frozen=True, slots=True)
class Accepted:
    """A record that passed the contract, at its position in the input."""

    position: int
    record: EncounterRecord


@dataclass(frozen=True, slots=True)
class Rejected:
    """A record (or, path ``""``, the rest of a file) that did not pass."""

    position: int
    error: RecordInvalid

    def lines(self) -> list[str]:
        return self.error.lines()


Result: TypeAlias = Accepted | Rejected

def validate_record(obj: object, *, source: str, position: int | None = None) -> EncounterRecord:
    """Check one decoded record against the contract; return the domain record.

    Raises :class:`RecordInvalid` listing every violation found. The dict is
    kept as given (no defaults injected), so the same input hashes the same.
    """
    return _validate(obj, source=source, position=position)


def _validate(
    obj: object,
    *,
    source: str,
    position: int | None,
    pre_errors: Iterable[FieldError] = (),
) -> EncounterRecord:
    errors = list(pre_errors)
    if not isinstance(obj, dict):
        raise RecordInvalid(
            [*errors, FieldError("", MSG_NOT_OBJECT)], source=source, position=position
        )
    structure, fatal = structure_errors(obj)
    errors.extend(structure)
    if fatal:
        raise RecordInvalid(errors, source=source, position=position, record_id=_valid_id(obj))
    if errors or _FAST_CHECK is None or not _FAST_CHECK(obj):
        # A field already reported while reading it (a CSV cell that isn't an
        # integer, say) was left out of `obj`: don't also call it missing.
        reported = {e.path for e in errors}
        seen: set[tuple[str, str]] = set()
        for error in VALIDATOR.iter_errors(obj):
            errors.extend(e for e in _translate(error, seen) if e.path not in reported)
            if len(errors) > MAX_ERRORS:
                break
        errors.extend(islice(_walk_values(obj), MAX_ERRORS + 1))
    bad = {e.path for e in errors}
    errors.extend(_cross_field(obj, bad))
    if len(errors) > MAX_ERRORS:
        shown = errors[: MAX_ERRORS - 1]
        errors = [*shown, FieldError("", f"more errors not shown (at most {MAX_ERRORS} listed)")]
    if errors:
        raise RecordInvalid(errors, source=source, position=position, record_id=_valid_id(obj))
    return EncounterRecord.from_dict(source, obj)


def _check(
    obj: object, *, source: str, position: int, pre_errors: Iterable[FieldError] = ()
) -> Result:
    try:
        record = _validate(obj, source=source, position=position, pre_errors=pre_errors)
    except RecordInvalid as exc:
        return Rejected(position, exc)
    return Accepted(position, record)


def _reject(
    source: str, position: int, message: str, path: str = "", record_id: str | None = None
) -> Rejected:
    error = RecordInvalid(
        [FieldError(path, message)], source=source, position=position, record_id=record_id
    )
    return Rejected(position, error)


# --------------------------------------------------------------------------
# API payloads


def parse_payload(obj: object, *, source: str) -> Iterator[Result]:
    """Records already decoded from JSON (the web app's endpoint, the Python API).

    ``obj`` is one record (dict, position 1) or a list of records (position =
    index + 1).
    """
    if isinstance(obj, list):
        for index, item in enumerate(obj, start=1):
            yield _check(item, source=source, position=index)
    elif isinstance(obj, dict):
        yield _check(obj, source=source, position=1)
    else:
        yield _reject(source, 1, "must be a JSON object or a list of JSON objects")
