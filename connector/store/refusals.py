"""Telling which field of a record the database refused, without its value."""

from __future__ import annotations

import re
from datetime import UTC
from typing import Any, Final

from sqlalchemy.exc import DataError, ProgrammingError, StatementError

from connector.records import EncounterRecord, parse_datetime
from connector.store.base import Refused

# What a row the database won't take raises (not: the database is unreachable,
# which Store.begin turns into StoreError, nor a duplicate: IntegrityError).
_REFUSALS: Final = (DataError, ProgrammingError, StatementError, OverflowError, ValueError)

_INT32: Final = (-(2**31), 2**31 - 1)
_CONTROL: Final = re.compile("[\x00-\x1f\x7f-\x9f]")
_ID: Final = re.compile(r"[A-Za-z0-9._-]{1,64}\Z")
_DATETIMES: Final = frozenset(
    {
        "start",
        "end",
        "note.signed_at",
        "note.documentation_started",
        "note.documentation_finished",
    }
)
# Stored in their own columns (the payload column holds JSON, escaped).
_COLUMNS: Final = frozenset(
    {"participant.id", "specialist.id", "note.id", "consent.id", "participant.mrn"}
)


def refusal(record: EncounterRecord, exc: BaseException) -> Refused:
    record_id = record.id if isinstance(record.id, str) and _ID.match(record.id) else "<invalid>"
    return Refused(
        source=record.source,
        record_id=record_id,
        field=_field_at_fault(record.raw),
        reason=type(exc).__name__,
    )


def _field_at_fault(raw: dict[str, Any]) -> str:
    """The first contract path whose value a database may refuse ("" if none)."""
    stack: list[tuple[str, object]] = [("", raw)]
    suspects: list[str] = []
    while stack:
        path, value = stack.pop()
        if isinstance(value, dict):
            for key, item in value.items():
                stack.append((f"{path}.{key}" if path else str(key), item))
        elif isinstance(value, bool):
            continue
        elif isinstance(value, int):
            if not _INT32[0] <= value <= _INT32[1]:
                suspects.append(path)
        elif isinstance(value, str) and (
            (path in _DATETIMES and not _utc_ok(value))
            or "\x00" in value
            or (path in _COLUMNS and _CONTROL.search(value))
        ):
            suspects.append(path)
    return min(suspects) if suspects else ""


def _utc_ok(value: str) -> bool:
    try:
        parse_datetime(value).astimezone(UTC)
    except (ValueError, OverflowError):
        return False
    return True
