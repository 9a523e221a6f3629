"""Intake: read encounter records and check them against the intake contract.

The contract is ``contract/CONTRACT.md`` with its machine-readable form
``contract/encounter.schema.json`` (JSON Schema 2020-12). This module

* validates one decoded object (:func:`validate_record`), reporting *every*
  violation as a :class:`~connector.errors.FieldError` with a dotted path and a
  message that never repeats the offending value (it may be PHI);
* streams records out of files and streams (:func:`iter_records`): one JSON
  object, a JSON array, JSON Lines or CSV, in bounded memory, one
  :class:`Accepted` or :class:`Rejected` per record, so that a bad record never
  stops the good ones;
* does the same for payloads already decoded by the web app
  (:func:`parse_payload`).

Positions are 1-based: the line number in JSON Lines, the data-row number in
CSV (1 = the first row after the header), the element number in a JSON array,
and 1 for a single object.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import math
import os
import re
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import IO, Any, Final, TypeAlias

from jsonschema import Draft202012Validator, FormatChecker, ValidationError, validators
from rfc3339_validator import validate_rfc3339

from connector.errors import FieldError, RecordInvalid
from connector.records import EncounterRecord, parse_datetime

__all__ = [
    "SCHEMA",
    "FORMATS",
    "Accepted",
    "Rejected",
    "Result",
    "validate_record",
    "iter_records",
    "parse_payload",
]

SCHEMA_PATH: Final = Path(__file__).parent / "contract" / "encounter.schema.json"
SCHEMA: Final[dict[str, Any]] = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))

FORMATS: Final = ("json", "jsonl", "csv")
_FORMAT_ALIASES: Final = {"json": "json", "jsonl": "jsonl", "ndjson": "jsonl", "csv": "csv"}
_EXTENSIONS: Final = {".json": "json", ".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv"}

CHUNK_SIZE = 64 * 1024  # not Final: tests shrink it to split input everywhere
# Largest single record accepted from a file (bytes for JSON Lines/one object,
# characters for a JSON array element). A maximal note (100,000 characters,
# each written as a 12-character surrogate-pair escape) stays well below it.
MAX_RECORD_SIZE = 4 * 1024 * 1024
MAX_NAME_IN_MESSAGE: Final = 64
MAX_SPAN: Final = timedelta(hours=24)
DOCUMENTATION_TOLERANCE_MINUTES: Final = 1.0

_BOM: Final = b"\xef\xbb\xbf"
_JSON_WS: Final = b" \t\r\n"
_NON_WS_BYTES: Final = re.compile(rb"[^ \t\r\n]")


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
# A path, the content itself (bytes), a binary or text stream, or chunks.
Input: TypeAlias = (
    str
    | os.PathLike[str]
    | bytes
    | bytearray
    | IO[bytes]
    | IO[str]
    | Iterable[bytes]
    | Iterable[str]
)


# --------------------------------------------------------------------------
# The validator: Draft 2020-12 with strict types, ECMA-262 `$` and real formats

_DATE_RE: Final = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


def _is_datetime(instance: object) -> bool:
    if not isinstance(instance, str):
        return True  # `format` applies to strings only; `type` reports the rest
    # validate_rfc3339 anchors with `$`, which also matches before a final "\n".
    # RFC 3339 (5.6, note) allows a lower-case "t" and "z"; the validator doesn't.
    if not instance.isascii() or instance.endswith("\n") or not validate_rfc3339(instance.upper()):
        return False
    try:
        parse_datetime(instance)
    except ValueError:
        return False
    return True


def _is_date(instance: object) -> bool:
    if not isinstance(instance, str):
        return True
    if _DATE_RE.fullmatch(instance) is None:
        return False
    try:
        date.fromisoformat(instance)
    except ValueError:
        return False
    return True


FORMAT_CHECKER: Final = FormatChecker(formats=())
FORMAT_CHECKER.checks("date-time")(_is_datetime)
FORMAT_CHECKER.checks("date")(_is_date)


def _is_integer(checker: object, instance: object) -> bool:
    # Strict: 2.0 is not an integer here (it would hash differently from 2).
    return isinstance(instance, int) and not isinstance(instance, bool)


def _is_number(checker: object, instance: object) -> bool:
    # Strict: no bool, Decimal, Fraction... only what JSON can carry.
    return isinstance(instance, int | float) and not isinstance(instance, bool)


_PATTERNS: dict[str, re.Pattern[str]] = {}


def _compile_pattern(pattern: str) -> re.Pattern[str]:
    compiled = _PATTERNS.get(pattern)
    if compiled is None:
        # ECMA-262 `$` (no multiline) is end of input; Python's also matches
        # before a trailing newline, which would let "ps-1\n" pass `^...$`.
        translated = (
            pattern[:-1] + r"\Z"
            if pattern.endswith("$") and not pattern.endswith("\\$")
            else pattern
        )
        compiled = _PATTERNS[pattern] = re.compile(translated)
    return compiled


def _pattern_keyword(
    validator: Any, pattern: str, instance: object, schema: Mapping[str, Any]
) -> Iterator[ValidationError]:
    if isinstance(instance, str) and _compile_pattern(pattern).search(instance) is None:
        yield ValidationError("does not match the pattern")  # never the value


_TYPE_CHECKER = Draft202012Validator.TYPE_CHECKER.redefine_many(
    {"integer": _is_integer, "number": _is_number}
)
_ContractValidator = validators.extend(
    Draft202012Validator,
    validators={"pattern": _pattern_keyword},
    type_checker=_TYPE_CHECKER,
)
Draft202012Validator.check_schema(SCHEMA)
VALIDATOR: Final = _ContractValidator(SCHEMA, format_checker=FORMAT_CHECKER)

_ID_RE: Final = _compile_pattern(SCHEMA["properties"]["id"]["pattern"])


# --------------------------------------------------------------------------
# Fast path: a yes/no check compiled from the same schema. jsonschema is the
# reference and builds every message; the compiled check only spares it the
# common case of a valid record (it is several times faster). It knows the
# keywords below and nothing else: any other keyword in the schema disables it.

_FAST_KEYWORDS: Final = frozenset(
    {
        "$schema", "$id", "title", "description", "default",
        "type", "properties", "additionalProperties", "required", "enum",
        "pattern", "minLength", "maxLength", "minimum", "maximum", "format", "items",
    }
)  # fmt: skip

_FORMAT_TESTS: Final[dict[str, Callable[[object], bool]]] = {
    "date-time": _is_datetime,
    "date": _is_date,
}


class _NoFastPath(Exception):
    pass


def _type_test(kind: str) -> Callable[[object], bool]:
    if kind == "object":
        return lambda v: isinstance(v, dict)
    if kind == "array":
        return lambda v: isinstance(v, list)
    if kind == "string":
        # Also what _walk_values checks: text that can be written as UTF-8.
        return lambda v: isinstance(v, str) and (v.isascii() or _encodable(v))
    if kind == "boolean":
        return lambda v: isinstance(v, bool)
    if kind == "integer":
        return lambda v: _is_integer(None, v)
    if kind == "number":
        return lambda v: (
            not isinstance(v, bool)
            and (isinstance(v, int) or (isinstance(v, float) and math.isfinite(v)))
        )
    if kind == "null":
        return lambda v: v is None
    raise _NoFastPath(kind)


def _compile_fast(schema: Mapping[str, Any]) -> Callable[[object], bool]:
    if not isinstance(schema, Mapping) or set(schema) - _FAST_KEYWORDS:
        raise _NoFastPath("unsupported keyword")
    tests: list[Callable[[object], bool]] = []
    kind = schema.get("type")
    if kind is not None:
        if not isinstance(kind, str):
            raise _NoFastPath("type list")
        tests.append(_type_test(kind))
    if "enum" in schema:
        allowed = schema["enum"]
        if not all(isinstance(v, str) for v in allowed):
            raise _NoFastPath("non-string enum")
        allowed_set = frozenset(allowed)
        tests.append(lambda v: isinstance(v, str) and v in allowed_set)
    if "pattern" in schema:
        regex = _compile_pattern(schema["pattern"])
        tests.append(lambda v: not isinstance(v, str) or regex.search(v) is not None)
    if "minLength" in schema:
        low: int = schema["minLength"]
        tests.append(lambda v: not isinstance(v, str) or len(v) >= low)
    if "maxLength" in schema:
        high: int = schema["maxLength"]
        tests.append(lambda v: not isinstance(v, str) or len(v) <= high)
    if "minimum" in schema:
        minimum = schema["minimum"]
        tests.append(lambda v: not _is_number(None, v) or v >= minimum)
    if "maximum" in schema:
        maximum = schema["maximum"]
        tests.append(lambda v: not _is_number(None, v) or v <= maximum)
    if "format" in schema:
        format_test = _FORMAT_TESTS.get(schema["format"])
        if format_test is not None:
            tests.append(format_test)
    if "items" in schema:
        item_test = _compile_fast(schema["items"])
        tests.append(lambda v: not isinstance(v, list) or all(item_test(i) for i in v))
    if "properties" in schema or "required" in schema or "additionalProperties" in schema:
        tests.append(_object_test(schema))

    def test(value: object) -> bool:
        for t in tests:  # noqa: SIM110 - a plain loop: this is the hot path
            if not t(value):
                return False
        return True

    return test


def _object_test(schema: Mapping[str, Any]) -> Callable[[object], bool]:
    props = {name: _compile_fast(sub) for name, sub in schema.get("properties", {}).items()}
    required = tuple(schema.get("required", ()))
    additional = schema.get("additionalProperties", True)
    if additional not in (True, False):
        raise _NoFastPath("additionalProperties schema")

    def test(value: object) -> bool:
        if not isinstance(value, dict):
            return True
        for name in required:
            if name not in value:
                return False
        for name, item in value.items():
            prop = props.get(name)
            if prop is None:
                if not additional:
                    return False
            elif not prop(item):
                return False
        return True

    return test


try:
    _FAST_CHECK: Callable[[object], bool] | None = _compile_fast(SCHEMA)
except _NoFastPath:  # pragma: no cover - the schema grew a keyword: use jsonschema only
    _FAST_CHECK = None


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
    SCHEMA["properties"]["service"]["properties"]["code"]["pattern"]: (
        "must be 4-7 characters, each an upper-case letter or a digit"
    ),
}

_FORMAT_MESSAGES: Final = {
    "date-time": "must be an RFC 3339 date-time with a UTC offset",
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
    return f"{path}.{_safe_name(name)}" if path else _safe_name(name)


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
        for name in instance:
            if name not in known and (key := (_join(path, name), MSG_UNKNOWN)) not in seen:
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
            for key, item in reversed(value.items()):
                sub = _join(path, key)
                if isinstance(key, str) and not key.isascii() and not _encodable(key):
                    yield FieldError(sub, "field name is not valid Unicode text")
                stack.append((sub, item))
        elif isinstance(value, list):
            for index in range(len(value) - 1, -1, -1):
                stack.append((f"{path}[{index}]", value[index]))


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


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


def _valid_id(obj: object) -> str | None:
    if isinstance(obj, dict):
        rid = obj.get("id")
        if isinstance(rid, str) and _ID_RE.search(rid) is not None:
            return rid
    return None


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
    if errors or _FAST_CHECK is None or not _FAST_CHECK(obj):
        # A field already reported while reading it (a CSV cell that isn't an
        # integer, say) was left out of `obj`: don't also call it missing.
        reported = {e.path for e in errors}
        seen: set[tuple[str, str]] = set()
        for error in VALIDATOR.iter_errors(obj):
            errors.extend(e for e in _translate(error, seen) if e.path not in reported)
        errors.extend(_walk_values(obj))
    bad = {e.path for e in errors}
    errors.extend(_cross_field(obj, bad))
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


# --------------------------------------------------------------------------
# Byte sources


class _Source(io.RawIOBase):
    """A raw byte stream over a path, a stream (bytes or text) or an iterable of
    chunks, with a look-ahead buffer for sniffing the format."""

    def __init__(self, read: Callable[[int], bytes]) -> None:
        super().__init__()
        self._read_chunk = read
        self.head = bytearray()
        self._eof = False
        self.skipped_lines = 0  # blank lines dropped by first_data()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        size = len(view)
        if not self.head:
            if self._eof:
                return 0
            data = self._read_chunk(size)
            if not data:
                self._eof = True
                return 0
            if len(data) <= size:
                view[: len(data)] = data
                return len(data)
            self.head += data
        n = min(size, len(self.head))
        view[:n] = self.head[:n]
        del self.head[:n]
        return n

    def pull(self) -> bool:
        """Read one more chunk into the look-ahead buffer; False at end of input."""
        if self._eof:
            return False
        data = self._read_chunk(CHUNK_SIZE)
        if not data:
            self._eof = True
            return False
        self.head += data
        return True

    def strip_bom(self) -> None:
        while len(self.head) < len(_BOM) and self.pull():
            pass
        if self.head.startswith(_BOM):
            del self.head[: len(_BOM)]

    def first_data(self) -> int | None:
        """Index in the look-ahead of the first non-whitespace byte (None: no data).

        Leading blank lines are dropped as they are read and counted in
        ``skipped_lines``, so a long run of them can't fill the memory.
        """
        while True:
            m = _NON_WS_BYTES.search(self.head)
            if m is not None:
                return m.start()
            last_newline = self.head.rfind(b"\n")
            if last_newline >= 0:
                self.skipped_lines += self.head.count(b"\n", 0, last_newline + 1)
                del self.head[: last_newline + 1]
            if not self.pull():
                return None

    def next_non_ws(self, start: int) -> int | None:
        """Index in the look-ahead of the first non-whitespace byte from ``start``
        (None at the end of input or past MAX_RECORD_SIZE)."""
        while True:
            m = _NON_WS_BYTES.search(self.head, start)
            if m is not None:
                return m.start()
            if len(self.head) > MAX_RECORD_SIZE or not self.pull():
                return None

    def looks_like_json_lines(self, start: int) -> bool:
        """At an object starting at ``start``: is this JSON Lines?

        Yes when the first line is a complete object on its own, or when it is
        ``{...}`` and the next non-blank line starts another object (never
        valid JSON as one document).
        """
        while (nl := self.head.find(b"\n", start)) < 0:
            if len(self.head) > MAX_RECORD_SIZE or not self.pull():
                return False  # one line: the same records either way
        line = bytes(self.head[start:nl]).strip(_JSON_WS)
        if not line.endswith(b"}"):
            return False
        try:
            if isinstance(json.loads(line), dict):
                return True
        except (ValueError, RecursionError):
            pass
        after = self.next_non_ws(nl + 1)
        return after is not None and self.head[after] == ord("{")


def _reader_for(
    obj: Input,
) -> tuple[Callable[[int], bytes], Callable[[], None] | None, str | None]:
    """(read function, close function, name for format detection)."""
    if isinstance(obj, str | os.PathLike):
        path = Path(obj)
        fh = open(path, "rb")  # noqa: SIM115 - closed by iter_records
        return fh.read, fh.close, path.name
    if isinstance(obj, bytes | bytearray | memoryview):
        chunks: Iterator[bytes | str] = iter([bytes(obj)])
        return _chunk_reader(chunks), None, None
    read = getattr(obj, "read", None)
    if callable(read):
        name = getattr(obj, "name", None)

        def read_stream(size: int) -> bytes:
            data = read(size)
            if isinstance(data, str):
                return data.encode("utf-8", "surrogatepass")
            return bytes(data) if data else b""

        return read_stream, None, name if isinstance(name, str) else None
    if isinstance(obj, Iterable):
        return _chunk_reader(iter(obj)), None, None
    raise TypeError(f"cannot read records from a {type(obj).__name__}")


def _chunk_reader(chunks: Iterator[bytes | str]) -> Callable[[int], bytes]:
    def read(size: int) -> bytes:
        for chunk in chunks:
            data = chunk.encode("utf-8", "surrogatepass") if isinstance(chunk, str) else chunk
            if data:
                return bytes(data)
        return b""

    return read


def _format_from_name(name: str | None) -> str | None:
    if not name:
        return None
    return _EXTENSIONS.get(Path(name).suffix.lower())


# --------------------------------------------------------------------------
# iter_records


def iter_records(
    path_or_stream: Input, *, source: str, format: str | None = None
) -> Iterator[Result]:
    """Stream the records of a file, stream, bytes or iterable of chunks.

    ``path_or_stream`` is a path (opened and closed here), ``bytes`` (the
    content itself), a binary or text stream, or an iterable of ``bytes`` /
    ``str`` chunks. Give CSV as bytes or a text stream opened with
    ``newline=""``, or line breaks inside quoted cells can't be kept as written.

    ``format`` ("json", "jsonl"/"ndjson", "csv") overrides detection, which
    uses the extension (``.json``, ``.jsonl``/``.ndjson``, ``.csv``) and, for
    ``.json`` or an unknown name, the first non-space byte: ``[`` an array,
    ``{`` one object or JSON Lines (anything else, when the name says nothing:
    CSV). Memory stays bounded by the largest record, whatever the file size.
    A bad format name raises ``ValueError`` at once; the file is opened on the
    first ``next()``.
    """
    forced: str | None = None
    if format is not None:
        forced = _FORMAT_ALIASES.get(format.lower())
        if forced is None:
            raise ValueError(f"unknown format {format!r}; expected one of {', '.join(FORMATS)}")
    return _iter_records(path_or_stream, source, forced)


def _iter_records(path_or_stream: Input, source: str, forced: str | None) -> Iterator[Result]:
    read, close, name = _reader_for(path_or_stream)
    try:
        src = _Source(read)
        src.strip_bom()
        by_name = _format_from_name(name)
        fmt = forced or by_name
        if fmt == "csv":
            yield from _iter_csv(src, source)
            return
        if fmt == "jsonl":
            yield from _iter_jsonl(src, source)
            return
        first = src.first_data()
        if first is None:
            return  # empty input: no records
        byte = src.head[first]
        if byte == ord("["):
            yield from _iter_json_array(src, source)
        elif byte == ord("{"):
            if forced is None and src.looks_like_json_lines(first):
                yield from _iter_jsonl(src, source)
            else:
                yield from _iter_json_object(src, source)
        elif fmt is None:
            yield from _iter_csv(src, source)
        else:
            yield _reject(source, 1, "invalid JSON: expected an object '{' or an array '['")
    finally:
        if close is not None:
            close()


def _json_error_text(msg: str) -> str:
    # "Unterminated string starting at" + " at line ..." reads badly.
    return msg.removesuffix(" at")


def _iter_jsonl(src: _Source, source: str) -> Iterator[Result]:
    reader = io.BufferedReader(src, CHUNK_SIZE)
    loads = json.loads
    lineno = src.skipped_lines
    while True:
        line = reader.readline(MAX_RECORD_SIZE + 1)
        if not line:
            return
        lineno += 1
        if len(line) > MAX_RECORD_SIZE and not line.endswith(b"\n"):
            while (rest := reader.readline(CHUNK_SIZE)) and not rest.endswith(b"\n"):
                pass
            yield _reject(source, lineno, f"record too large (over {MAX_RECORD_SIZE} bytes)")
            continue
        if not line.strip(_JSON_WS):
            continue
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as exc:
            yield _reject(source, lineno, f"invalid UTF-8 (line {lineno}, byte {exc.start + 1})")
            continue
        try:
            obj = loads(text)
        except json.JSONDecodeError as exc:
            yield _reject(
                source,
                lineno,
                f"invalid JSON (line {lineno}, column {exc.colno}): {_json_error_text(exc.msg)}",
            )
            continue
        except RecursionError:
            yield _reject(source, lineno, f"invalid JSON (line {lineno}): nested too deeply")
            continue
        except ValueError:
            yield _reject(source, lineno, f"invalid JSON (line {lineno}): number too long")
            continue
        yield _check(obj, source=source, position=lineno)


def _iter_json_object(src: _Source, source: str) -> Iterator[Result]:
    reader = io.BufferedReader(src, CHUNK_SIZE)
    data = reader.read(MAX_RECORD_SIZE + 1)
    if len(data) > MAX_RECORD_SIZE:
        yield _reject(source, 1, f"record too large (over {MAX_RECORD_SIZE} bytes)")
        return
    text = data.decode("utf-8", "surrogateescape")
    decoder = json.JSONDecoder()
    start = _skip_ws(text, 0)
    try:
        obj, end = decoder.raw_decode(text, start)
    except json.JSONDecodeError as exc:
        msg = _json_error_text(exc.msg)
        line = exc.lineno + src.skipped_lines
        yield _reject(source, 1, f"invalid JSON: {msg} at line {line} column {exc.colno}")
        return
    except RecursionError:
        yield _reject(source, 1, "invalid JSON: nested too deeply")
        return
    except ValueError:
        yield _reject(source, 1, "invalid JSON: number too long")
        return
    if _ESCAPED.search(text, start, end) is not None:
        yield _reject(source, 1, "invalid UTF-8")
    else:
        yield _check(obj, source=source, position=1)
    rest = _skip_ws(text, end)
    if rest < len(text):
        line, col = _line_col(text, rest)
        line += src.skipped_lines
        yield _reject(
            source, 2, f"invalid JSON: unexpected data after the object at line {line} column {col}"
        )


_NON_WS: Final = re.compile(r"[^ \t\r\n]")
_STRUCTURAL: Final = re.compile(r'["\[\]{},]')
_IN_STRING: Final = re.compile(r'["\\\n]')
_ESCAPED: Final = re.compile("[\udc80-\udcff]")  # undecodable bytes (surrogateescape)
_DECODER: Final = json.JSONDecoder()


def _skip_ws(text: str, i: int) -> int:
    m = _NON_WS.search(text, i)
    return m.start() if m else len(text)


def _line_col(text: str, i: int) -> tuple[int, int]:
    line = text.count("\n", 0, i) + 1
    return line, i - text.rfind("\n", 0, i)


class _Fatal(Exception):
    """The array can't be followed past this point."""


class _ArrayReader:
    """An incremental splitter for a top-level JSON array.

    Holds one element (plus one chunk) at a time. A fast path hands the
    buffer to the C decoder; when that fails, a light scanner finds where the
    element ends (a top-level ``,`` or ``]``, respecting strings) so that a
    syntax error costs only that element.
    """

    def __init__(self, read: Callable[[int], bytes], skipped_lines: int = 0) -> None:
        self._read = read
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="surrogateescape")
        self.buf = ""
        self.pos = 0
        self.eof = False
        self._lines = skipped_lines  # newlines in text already dropped from the buffer
        self._col = 0  # characters after the last dropped newline

    # buffer management

    def _more(self) -> bool:
        if self.eof:
            return False
        data = self._read(CHUNK_SIZE)
        if not data:
            self.eof = True
            self.buf += self._decoder.decode(b"", final=True)
            return False
        self.buf += self._decoder.decode(data)
        return True

    def _compact(self) -> None:
        p = self.pos
        if not p:
            return
        newlines = self.buf.count("\n", 0, p)
        if newlines:
            self._lines += newlines
            self._col = p - self.buf.rfind("\n", 0, p) - 1
        else:
            self._col += p
        self.buf = self.buf[p:]
        self.pos = 0

    def where(self, i: int) -> str:
        newlines = self.buf.count("\n", 0, i)
        if newlines:
            line, col = self._lines + newlines + 1, i - self.buf.rfind("\n", 0, i)
        else:
            line, col = self._lines + 1, self._col + i + 1
        return f"at line {line} column {col}"

    def skip_ws(self) -> str:
        while True:
            m = _NON_WS.search(self.buf, self.pos)
            if m is not None:
                self.pos = m.start()
                return self.buf[self.pos]
            self.pos = len(self.buf)
            self._compact()
            if not self._more() and not self.buf:
                return ""

    # elements

    def elements(self) -> Iterator[tuple[int, object, str | None]]:
        """(position, value, error message or None); raises _Fatal to stop."""
        if self.skip_ws() != "[":
            raise _Fatal(1, f"invalid JSON: expected '[' {self.where(self.pos)}")
        self.pos += 1
        index = 1
        if self.skip_ws() == "]":
            self.pos += 1
            self._trailing(index)
            return
        while True:
            yield (index, *self._element(index))
            c = self.skip_ws()
            index += 1
            if c == ",":
                self.pos += 1
                if self.skip_ws() in ("]", ""):
                    raise _Fatal(index, f"invalid JSON: Expecting value {self.where(self.pos)}")
            elif c == "]":
                self.pos += 1
                self._trailing(index)
                return
            elif c == "":
                raise _Fatal(
                    index, f"invalid JSON: missing ']' at the end {self.where(len(self.buf))}"
                )
            else:
                raise _Fatal(index, f"invalid JSON: Expecting ',' delimiter {self.where(self.pos)}")

    def _trailing(self, index: int) -> None:
        if self.skip_ws() != "":
            raise _Fatal(
                index, f"invalid JSON: unexpected data after the array {self.where(self.pos)}"
            )

    def _element(self, index: int) -> tuple[object, str | None]:
        if self.pos > CHUNK_SIZE:
            self._compact()
        while len(self.buf) - self.pos < CHUNK_SIZE and self._more():
            pass
        start = self.pos
        try:
            obj, stop = _DECODER.raw_decode(self.buf, start)
        except (ValueError, RecursionError):
            pass
        else:
            if stop < len(self.buf) or self.eof:
                return self._decoded(obj, start, stop)
        # Slow path: find where this element ends, then decode it again.
        end, oversize = self._scan_end(start)
        if oversize is not None:
            if end is None:
                raise _Fatal(index, f"{oversize}; cannot continue")
            self.pos = end
            return None, oversize
        try:
            obj, stop = _DECODER.raw_decode(self.buf, start)
        except (ValueError, RecursionError) as exc:
            message = _decode_problem(exc, self.where)
            if end is None:
                raise _Fatal(index, message) from None
            self.pos = end
            return None, message
        after = _skip_ws(self.buf, stop)
        if end is not None and after < end:
            self.pos = end
            return None, f"invalid JSON: Expecting ',' delimiter {self.where(after)}"
        return self._decoded(obj, start, stop)

    def _decoded(self, obj: object, start: int, stop: int) -> tuple[object, str | None]:
        self.pos = stop
        if stop - start > MAX_RECORD_SIZE:
            return None, f"record too large (over {MAX_RECORD_SIZE} characters)"
        if _ESCAPED.search(self.buf, start, stop) is not None:
            return None, "invalid UTF-8"
        return obj, None

    def _scan_end(self, start: int) -> tuple[int | None, str | None]:
        """Where the element at ``start`` ends: (index of the closing ``,`` or
        ``]`` or None at end of input, why it is rejected when it is too large).

        Past MAX_RECORD_SIZE it keeps scanning (dropping what it has read) to
        find the next element, so memory stays bounded.
        """
        i, depth, in_string = start, 0, False
        oversize: str | None = None
        while True:
            buf = self.buf
            if in_string:
                m = _IN_STRING.search(buf, i)
                if m is not None:
                    j = m.start()
                    if buf[j] == "\\":
                        if j + 1 < len(buf):
                            i = j + 2
                            continue
                        i = j
                    else:  # closing quote, or a raw newline: an unterminated string
                        in_string = False
                        i = j + 1
                        continue
                else:
                    i = len(buf)
            else:
                m = _STRUCTURAL.search(buf, i)
                if m is not None:
                    j = m.start()
                    ch = buf[j]
                    i = j + 1
                    if ch == '"':
                        in_string = True
                    elif ch in "[{":
                        depth += 1
                    elif depth:
                        if ch in "]}":
                            depth -= 1
                    elif ch in ",]":
                        return j, oversize
                    continue
                i = len(buf)
            if oversize is None and i - start > MAX_RECORD_SIZE:
                oversize = self._oversize(start)
            if oversize is not None:
                self.pos = i  # drop what was scanned
                self._compact()
                i = 0
            if not self._more():
                return None, oversize

    def _oversize(self, start: int) -> str:
        """Why an element with no end in sight is rejected: a syntax error in
        view, or else its size."""
        try:
            _DECODER.raw_decode(self.buf, start)
        except json.JSONDecodeError as exc:
            # A string or value cut off by the end of the buffer is no proof.
            if exc.pos < len(self.buf) - 1 and not exc.msg.startswith("Unterminated string"):
                return _decode_problem(exc, self.where)
        except (ValueError, RecursionError):
            pass
        return f"record too large (over {MAX_RECORD_SIZE} characters) {self.where(start)}"


def _decode_problem(exc: Exception, where: Callable[[int], str]) -> str:
    if isinstance(exc, json.JSONDecodeError):
        return f"invalid JSON: {_json_error_text(exc.msg)} {where(exc.pos)}"
    if isinstance(exc, RecursionError):
        return "invalid JSON: nested too deeply"
    return "invalid JSON: number too long"


def _iter_json_array(src: _Source, source: str) -> Iterator[Result]:
    reader = _ArrayReader(io.BufferedReader(src, CHUNK_SIZE).read, src.skipped_lines)
    elements = reader.elements()
    while True:
        try:
            position, obj, problem = next(elements)
        except StopIteration:
            return
        except _Fatal as fatal:
            position, message = fatal.args
            yield _reject(source, position, message)
            return
        if problem is not None:
            yield _reject(source, position, problem)
        else:
            yield _check(obj, source=source, position=position)


# --------------------------------------------------------------------------
# CSV


def _csv_columns(
    schema: Mapping[str, Any], prefix: str = ""
) -> tuple[dict[str, Mapping[str, Any]], dict[str, str]]:
    """(leaf path -> its schema, group path -> an example leaf), from the schema."""
    leaves: dict[str, Mapping[str, Any]] = {}
    groups: dict[str, str] = {}
    for name, sub in schema.get("properties", {}).items():
        path = f"{prefix}{name}"
        if sub.get("type") == "object" and "properties" in sub:
            sub_leaves, sub_groups = _csv_columns(sub, path + ".")
            leaves.update(sub_leaves)
            groups.update(sub_groups)
            groups[path] = next(iter(sub_leaves))
        else:
            leaves[path] = sub
    return leaves, groups


CSV_COLUMNS, _CSV_GROUPS = _csv_columns(SCHEMA)
_INT_RE: Final = re.compile(r"-?[0-9]+")
_NUM_RE: Final = re.compile(r"-?[0-9]+(?:\.[0-9]+)?")


def _convert(schema: Mapping[str, Any], cell: str) -> tuple[Any, str | None]:
    """A CSV cell -> (value, error message) by the schema's type for its column."""
    kind = schema.get("type")
    if kind == "integer":
        if _INT_RE.fullmatch(cell):
            try:
                return int(cell), None
            except ValueError:  # more digits than int() accepts
                pass
        return None, "must be an integer"
    if kind == "number":
        if _NUM_RE.fullmatch(cell):
            try:
                return (float(cell) if "." in cell else int(cell)), None
            except ValueError:
                pass
        return None, "must be a number (digits, optionally with a '.' decimal part)"
    if kind == "boolean":
        if cell == "true":
            return True, None
        if cell == "false":
            return False, None
        return None, "must be true or false"
    if kind == "array":
        return [item for part in cell.split(";") if (item := part.strip())], None
    return cell, None


def _iter_csv(src: _Source, source: str) -> Iterator[Result]:
    text = io.TextIOWrapper(
        io.BufferedReader(src, CHUNK_SIZE),
        encoding="utf-8-sig",
        errors="surrogateescape",
        newline="",
    )
    reader = csv.reader(text, strict=True)
    try:
        header = next(reader)
        while not header:  # blank lines before the header
            header = next(reader)
    except StopIteration:
        return
    except csv.Error as exc:
        yield _reject(source, 1, f"invalid CSV header: {exc}")
        return

    # Problems with the header reject every row (nothing is silently dropped).
    header_errors: list[FieldError] = []
    columns: list[tuple[str, Mapping[str, Any]] | None] = []
    unnamed: set[int] = set()
    seen_names: set[str] = set()
    for number, name in enumerate(header, start=1):
        columns.append(None)
        if name == "":
            unnamed.add(number - 1)
        elif name in seen_names:
            header_errors.append(FieldError(_safe_name(name), "duplicate column"))
        elif name in _CSV_GROUPS:
            header_errors.append(
                FieldError(
                    name,
                    "is a group of fields, not a column: "
                    f"use its dotted fields (e.g. {_CSV_GROUPS[name]})",
                )
            )
        elif name not in CSV_COLUMNS:
            header_errors.append(FieldError(_safe_name(name), MSG_UNKNOWN))
        else:
            columns[-1] = (name, CSV_COLUMNS[name])
        seen_names.add(name)
    id_index = header.index("id") if "id" in header and header.count("id") == 1 else None
    width = len(header)

    position = 0
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            position += 1
            yield _reject(source, position, f"invalid CSV: {exc}")
            continue
        position += 1
        if not row:
            continue  # blank line
        record_id = None
        if id_index is not None and id_index < len(row):
            candidate = row[id_index]
            if _ID_RE.search(candidate) is not None:
                record_id = candidate
        if len(row) != width:
            yield _reject(
                source,
                position,
                f"row has {len(row)} cells but the header has {width} columns",
                record_id=record_id,
            )
            continue
        errors = list(header_errors)
        obj: dict[str, Any] = {}
        for index, cell in enumerate(row):
            column = columns[index]
            if cell == "":
                continue
            if column is None:
                if index in unnamed:
                    errors.append(FieldError("", f"column {index + 1} has a value but no name"))
                continue
            path, schema = column
            if not cell.isascii() and _ESCAPED.search(cell) is not None:
                errors.append(FieldError(path, "invalid UTF-8"))
                continue
            value, problem = _convert(schema, cell)
            if problem is not None:
                errors.append(FieldError(path, problem))
                continue
            target = obj
            *parents, leaf = path.split(".")
            for parent in parents:
                target = target.setdefault(parent, {})
            target[leaf] = value
        yield _check(obj, source=source, position=position, pre_errors=errors)
