"""Messages built from the keyword and the schema (never from the value), and the
contract's rules between fields."""

from __future__ import annotations

import difflib
import math
import re
import unicodedata
from collections.abc import Iterable, Iterator, Mapping
from datetime import UTC, datetime
from typing import Any, Final

from jsonschema import ValidationError

from connector.errors import FieldError
from connector.intake.limits import (
    COSIGN_SKEW,
    DOCUMENTATION_TOLERANCE_MINUTES,
    MAX_DEPTH,
    MAX_FIELDS,
    MAX_NAME_IN_MESSAGE,
    MAX_SPAN,
)
from connector.intake.validator import _ID_RE, CONTRACT_PATHS, SCHEMA, _encodable
from connector.records import parse_datetime

# --------------------------------------------------------------------------
# Messages: built from the keyword and the schema, never from the instance

_TYPE_WORDS: Final = {
    "string": "a string",
    "integer": "an integer",
    "number": "a number",
    "boolean": "a boolean (true or false)",
    "object": "an object",
    "array": "a list",
    "null": "null",
}

_PATTERN_MESSAGES: Final = {
    SCHEMA["properties"]["id"]["pattern"]: (
        "must be 1-64 characters, each a letter, digit, '.', '_' or '-'"
    ),
    SCHEMA["properties"]["specialist"]["properties"]["npi"]["pattern"]: "must be 10 digits",
    SCHEMA["properties"]["note"]["properties"]["id"]["pattern"]: (
        "must not contain control characters"
    ),
    SCHEMA["properties"]["note"]["properties"]["cosigned_by"]["pattern"]: (
        "must not contain control characters"
    ),
    SCHEMA["properties"]["service"]["properties"]["code"]["pattern"]: (
        "must be 4-7 characters, each an upper-case letter or a digit"
    ),
}

_FORMAT_MESSAGES: Final = {
    "date-time": (
        "must be an RFC 3339 date-time with a UTC offset, within years 0001-9999 in UTC"
    ),
    "date": "must be a real calendar date written YYYY-MM-DD",
}

MSG_UNKNOWN: Final = "unknown field (not in the contract)"
MSG_MISSING: Final = "required field missing"
MSG_NOT_OBJECT: Final = "must be a JSON object"

_STRIP_CATEGORIES: Final = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})


def _safe_name(name: object) -> str:
    """A field name fit for a message: printable, capped in length."""
    text = name if isinstance(name, str) else str(name)
    if not text.isascii() or not text.isprintable():
        text = "".join(ch for ch in text if unicodedata.category(ch) not in _STRIP_CATEGORIES)
    if len(text) > MAX_NAME_IN_MESSAGE:
        text = text[:MAX_NAME_IN_MESSAGE] + "…"
    return text or '""'


def _render_path(parts: Iterable[object]) -> str:
    out = ""
    for part in parts:
        if isinstance(part, int) and not isinstance(part, bool):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + _safe_name(part)
    return out


def _join(path: str, name: object) -> str:
    """A contract field's path (the name is the contract's, never the input's)."""
    return f"{path}.{_safe_name(name)}" if path else _safe_name(name)


def _field_path(path: str, name: object, number: int) -> str:
    """The path of the ``number``-th field (1-based) of the object at ``path``.

    A name the contract defines is named; any other is written ``<field N>``:
    it came from the input (a typo, or a header row that was data) and may be PHI.
    """
    if isinstance(name, str):
        candidate = f"{path}.{name}" if path else name
        if _INDEX.sub("", candidate) in CONTRACT_PATHS:
            return candidate
    anonymous = f"<field {number}>"
    return f"{path}.{anonymous}" if path else anonymous


def _unknown_message(path: str, name: object) -> str:
    """MSG_UNKNOWN, with the contract field of that group the name is closest to."""
    if isinstance(name, str) and len(name) <= MAX_NAME_IN_MESSAGE:
        prefix = _INDEX.sub("", path) + "." if path else ""
        siblings = sorted(
            known[len(prefix) :]
            for known in CONTRACT_PATHS
            if known.startswith(prefix) and "." not in known[len(prefix) :]
        )
        near = difflib.get_close_matches(name, siblings, n=1, cutoff=0.8)
        if near:
            return f"{MSG_UNKNOWN}; did you mean {prefix}{near[0]}?"
    return MSG_UNKNOWN


_INDEX: Final = re.compile(r"\[[0-9]+\]")


def _translate(error: ValidationError, seen: set[tuple[str, str]]) -> Iterator[FieldError]:
    """One jsonschema error -> FieldErrors (without the instance's value)."""
    path = _render_path(error.absolute_path)
    keyword = error.validator
    value = error.validator_value
    instance = error.instance
    if keyword == "required":
        assert isinstance(instance, Mapping)
        for name in value:
            if name not in instance and (key := (_join(path, name), MSG_MISSING)) not in seen:
                seen.add(key)
                yield FieldError(*key)
        return
    if keyword == "additionalProperties":
        assert isinstance(instance, Mapping)
        known = error.schema.get("properties", {}) if isinstance(error.schema, Mapping) else {}
        for number, name in enumerate(instance, start=1):
            if name in known:
                continue
            key = (_field_path(path, name, number), _unknown_message(path, name))
            if key not in seen:
                seen.add(key)
                yield FieldError(*key)
        return
    message = _message(keyword, value, instance)
    if (path, message) not in seen:
        seen.add((path, message))
        yield FieldError(path, message)


def _message(keyword: Any, value: Any, instance: object) -> str:
    if keyword == "type":
        wanted = value if isinstance(value, list) else [value]
        words = " or ".join(_TYPE_WORDS.get(t, str(t)) for t in wanted)
        if instance is None:
            return f"must be {words}, not null (leave the field out instead)"
        if wanted == ["object"]:
            return f"must be {words} (a group of fields)"
        return f"must be {words}"
    if keyword == "enum":
        return "must be one of: " + ", ".join(str(v) for v in value)
    if keyword == "const":
        return f"must be {value}"
    if keyword == "format":
        return _FORMAT_MESSAGES.get(value, f"must be a valid {value}")
    if keyword == "pattern":
        return _PATTERN_MESSAGES.get(value, "does not have the required form")
    if keyword == "minLength":
        return "must not be empty" if value == 1 else f"must be at least {value} characters"
    if keyword == "maxLength":
        return f"must be at most {value} characters"
    if keyword == "minimum":
        return f"must be at least {value}"
    if keyword == "maximum":
        return f"must be at most {value}"
    if keyword == "exclusiveMinimum":
        return f"must be more than {value}"
    if keyword == "exclusiveMaximum":
        return f"must be less than {value}"
    if keyword == "minItems":
        return f"must have at least {value} items"
    if keyword == "maxItems":
        return f"must have at most {value} items"
    return f"is not valid ({keyword})"


def _walk_values(obj: dict[str, Any]) -> Iterator[FieldError]:
    """What JSON Schema can't see: text that can't be UTF-8, non-finite numbers.

    Iterative, so arbitrarily deep (unknown) values can't overflow the stack.
    """
    stack: list[tuple[str, object]] = [("", obj)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, str):
            if not value.isascii() and not _encodable(value):
                yield FieldError(
                    path, "must be valid Unicode text (invalid UTF-8 or lone surrogate)"
                )
        elif isinstance(value, float):
            if not math.isfinite(value):
                yield FieldError(path, "must be a finite number")
        elif isinstance(value, dict):
            for number, (key, item) in reversed(list(enumerate(value.items(), start=1))):
                sub = _field_path(path, key, number)
                if isinstance(key, str) and not key.isascii() and not _encodable(key):
                    yield FieldError(sub, "field name is not valid Unicode text")
                stack.append((sub, item))
        elif isinstance(value, list):
            for index in range(len(value) - 1, -1, -1):
                stack.append((f"{path}[{index}]", value[index]))



def _npi_valid(npi: str) -> bool:
    """Luhn check of the NPI with the 80840 prefix (CMS, NPI check digit)."""
    total = 0
    for i, ch in enumerate(reversed("80840" + npi)):
        d = ord(ch) - 48
        if i % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def _cross_field(obj: dict[str, Any], bad: set[str]) -> Iterator[FieldError]:
    """The contract's rules between fields; each only when its inputs are valid."""
    start, end = obj.get("start"), obj.get("end")
    if isinstance(start, str) and isinstance(end, str) and not bad & {"start", "end"}:
        s, e = parse_datetime(start), parse_datetime(end)
        if e < s:
            yield FieldError("end", "must not be before start")
        elif e - s > MAX_SPAN:
            yield FieldError("end", "must be at most 24 hours after start")

    specialist = obj.get("specialist")
    if isinstance(specialist, dict):
        npi = specialist.get("npi")
        if isinstance(npi, str) and "specialist.npi" not in bad and not _npi_valid(npi):
            yield FieldError("specialist.npi", "not a valid NPI (check digit)")

    note = obj.get("note")
    if isinstance(note, dict):
        yield from _cosignature(obj, note, bad)
        has_started = "documentation_started" in note
        has_finished = "documentation_finished" in note
        if has_started and not has_finished:
            yield FieldError(
                "note.documentation_finished", "required when documentation_started is given"
            )
        elif has_finished and not has_started:
            yield FieldError(
                "note.documentation_started", "required when documentation_finished is given"
            )
        elif has_started and not bad & {
            "note.documentation_started",
            "note.documentation_finished",
        }:
            started = parse_datetime(note["documentation_started"])
            finished = parse_datetime(note["documentation_finished"])
            if finished <= started:
                yield FieldError(
                    "note.documentation_finished", "must be after documentation_started"
                )
            elif "documentation_minutes" in note and "note.documentation_minutes" not in bad:
                spent = (finished - started).total_seconds() / 60
                if abs(spent - note["documentation_minutes"]) > DOCUMENTATION_TOLERANCE_MINUTES:
                    yield FieldError(
                        "note.documentation_minutes",
                        "must agree with documentation_started/documentation_finished "
                        "within 1 minute",
                    )


def _cosignature(obj: dict[str, Any], note: dict[str, Any], bad: set[str]
                 ) -> Iterator[FieldError]:
    """note.cosigned_by/_at (contract v2): both or neither; a co-signer is not the author;
    signed no earlier than the session's start and no later than now (plus a clock skew)."""
    has_by, has_at = "cosigned_by" in note, "cosigned_at" in note
    if has_by != has_at:
        missing = "note.cosigned_at" if has_by else "note.cosigned_by"
        other = "cosigned_by" if has_by else "cosigned_at"
        yield FieldError(missing, f"required when {other} is given")
        return
    if not has_by:
        return
    specialist = obj.get("specialist")
    author = specialist.get("id") if isinstance(specialist, dict) else None
    if "note.cosigned_by" not in bad and note["cosigned_by"] == author:
        yield FieldError("note.cosigned_by", "must not be the specialist who wrote the note")
    if "note.cosigned_at" in bad:
        return
    signed = parse_datetime(note["cosigned_at"])
    start = obj.get("start")
    if isinstance(start, str) and "start" not in bad and signed < parse_datetime(start):
        yield FieldError("note.cosigned_at", "must not be before start")
    elif signed > datetime.now(UTC) + COSIGN_SKEW:
        yield FieldError("note.cosigned_at", "must not be in the future")


def _valid_id(obj: object) -> str | None:
    if isinstance(obj, dict):
        rid = obj.get("id")
        if isinstance(rid, str) and _ID_RE.search(rid) is not None:
            return rid
    return None


# --------------------------------------------------------------------------
# Structure: duplicate keys, nesting depth and size, checked before the schema


class DuplicateKeys(dict[str, Any]):
    """A decoded JSON object some of whose keys were given more than once.

    The last value wins (as in ``json.loads``), but the record is rejected:
    which of two values the source meant can't be known.
    """

    __slots__ = ("duplicates",)

    def __init__(self, pairs: list[tuple[str, Any]], duplicates: list[str]) -> None:
        super().__init__(pairs)
        self.duplicates = duplicates


def object_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``object_pairs_hook`` for every JSON decoder of records."""
    obj = dict(pairs)
    if len(obj) == len(pairs):
        return obj
    seen: set[str] = set()
    duplicates: list[str] = []
    for key, _ in pairs:
        if key in seen and key not in duplicates:
            duplicates.append(key)
        seen.add(key)
    return DuplicateKeys(pairs, duplicates)


def structure_errors(obj: object) -> tuple[list[FieldError], bool]:
    """(errors, fatal): duplicate keys; nesting or size past the limits (fatal:
    the record is not checked further). Iterative: no depth can overflow it."""
    errors: list[FieldError] = []
    count = 0
    stack: list[tuple[str, object, int]] = [("", obj, 0)]
    while stack:
        path, value, depth = stack.pop()
        if isinstance(value, dict):
            items: Iterable[tuple[str, object]]
            keys = list(value)
            if isinstance(value, DuplicateKeys):
                for key in value.duplicates:
                    sub = _field_path(path, key, keys.index(key) + 1)
                    errors.append(FieldError(sub, "given more than once (duplicate key)"))
            items = ((_field_path(path, k, n), value[k]) for n, k in enumerate(keys, start=1))
        elif isinstance(value, list):
            items = ((f"{path}[{i}]", item) for i, item in enumerate(value))
        else:
            continue
        if depth >= MAX_DEPTH:
            return [*errors, FieldError(path, f"nested too deeply (over {MAX_DEPTH} levels)")], True
        count += len(value)
        if count > MAX_FIELDS:
            return [FieldError("", f"too many fields (over {MAX_FIELDS} in one record)")], True
        stack.extend((sub, item, depth + 1) for sub, item in items)
    return errors, False
