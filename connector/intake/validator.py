"""The contract's validator: Draft 2020-12 with strict types, ECMA-262 `$`, real formats,
and a compiled fast path for valid records."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, date
from pathlib import Path
from typing import Any, Final

from jsonschema import Draft202012Validator, FormatChecker, ValidationError, validators
from rfc3339_validator import validate_rfc3339

from connector.records import parse_datetime

SCHEMA_PATH: Final = Path(__file__).parent.parent / "contract" / "encounter.schema.json"
SCHEMA: Final[dict[str, Any]] = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))

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
        # The instant must exist in UTC too (years 1-9999 after the offset):
        # "9999-12-31T23:59:00-01:00" is a valid RFC 3339 string that isn't.
        parse_datetime(instance).astimezone(UTC)
    except (ValueError, OverflowError):
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

def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
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


def _contract_paths(schema: Mapping[str, Any], prefix: str = "") -> Iterator[str]:
    for name, sub in schema.get("properties", {}).items():
        yield prefix + name
        if isinstance(sub, Mapping):
            yield from _contract_paths(sub, f"{prefix}{name}.")


# Every dotted path the contract defines: the only field names a message may
# repeat (any other name came from the input, and may be PHI).
CONTRACT_PATHS: Final = frozenset(_contract_paths(SCHEMA))


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
