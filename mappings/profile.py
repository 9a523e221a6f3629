"""Agency profiles: the codes and identifier systems one agency's EHR expects.

A profile is a TOML file (``mappings/profiles/*.toml``), read and validated
once, at start-up, by :func:`load_profile`. A bad profile is refused there with
the file and the dotted key named (``x.toml: codes.note_type: must be one of
11506-3, 34904-3``), never discovered in the middle of a sync. Unknown keys are
refused too: a misspelt key must not silently fall back to a default.

The per-source identifier systems are templates: ``{source}`` is replaced by
the record's source name, so that two sources sending ``id=123`` never share
an identifier.
"""

from __future__ import annotations

import difflib
import math
import os
import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from connector.errors import ConfigError

SOURCE_PLACEHOLDER = "{source}"

# LOINC document types an agency may choose (there is no peer-specific code).
NOTE_TYPES: dict[str, str] = {
    "11506-3": "Progress note",
    "34904-3": "Mental health Progress note",
}
DEFAULT_SERVICE_CODE = "H0038"
DEFAULT_NOTE_TYPE = "11506-3"
REVIEW_POLICIES = ("none", "cosign")

_SERVICE_CODE = re.compile(r"[A-Z0-9]{4,7}")  # as the intake contract's service.code
_URN = re.compile(r"urn:[A-Za-z0-9][A-Za-z0-9-]{0,31}:\S+")
_NOT_IN_URI = re.compile(r"[\s{}<>\"\\^`|]")
_MAX_REENTRY_MINUTES = 600.0


@dataclass(frozen=True, slots=True)
class Identity:
    """A named thing the agency identifies itself by (its Organization, our Device)."""

    name: str
    system: str
    value: str


@dataclass(frozen=True, slots=True)
class Profile:
    """One agency's validated profile. Build it with :func:`load_profile`."""

    name: str
    source_file: Path
    time_zone: str
    reentry_minutes: float
    organization: Identity
    device: Identity
    encounter_template: str
    note_template: str
    note_version_template: str
    participant_template: str
    staff_system: str
    mrn_system: str
    service_code: str
    note_type_code: str
    allow_markdown: bool
    create_patients: bool
    part2_notice: str
    # What the participant consented to disclose, and to whom (42 CFR 2.32 as of 2024):
    # it travels with the notice. Empty: the notice alone.
    part2_consent_scope: str = ""
    # [review]: "none" (notes go as they come) | "cosign" (a supervisor co-signs each new
    # note version first); service_codes, when set, limits review to those codes.
    review_policy: str = "none"
    review_service_codes: tuple[str, ...] = ()

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.time_zone)  # ZoneInfo caches instances by key

    @property
    def note_type_display(self) -> str:
        return NOTE_TYPES[self.note_type_code]

    def encounter_system(self, source: str) -> str:
        return _fill(self.encounter_template, source)

    def note_system(self, source: str) -> str:
        return _fill(self.note_template, source)

    def note_version_system(self, source: str) -> str:
        return _fill(self.note_version_template, source)

    def participant_system(self, source: str) -> str:
        return _fill(self.participant_template, source)


def _fill(template: str, source: str) -> str:
    if not source:
        raise ValueError("a record's source name must not be empty")
    # Percent-encode so any source name yields a valid URI; a plain name
    # ([A-Za-z0-9._~-]) is inserted unchanged.
    return template.replace(SOURCE_PLACEHOLDER, quote(source, safe=""))


def default_profile_path() -> Path:
    """The packaged demo agency's profile."""
    return Path(__file__).resolve().parent / "profiles" / "default.toml"


def load_profile(path: str | os.PathLike[str]) -> Profile:
    """Read and validate an agency profile; raise :class:`ConfigError` naming file and key."""
    source_file = Path(path)
    label = str(path)
    try:
        with source_file.open("rb") as fh:
            data = tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(f"{label}: cannot read the profile ({exc.strerror})") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{label}: not valid TOML: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{label}: not valid TOML: the file is not UTF-8") from exc

    values, errors = _validate(data)
    if errors:
        raise ConfigError("; ".join(f"{label}: {err}" for err in errors))
    return Profile(
        name=values["agency.name"],
        source_file=source_file,
        time_zone=values["agency.time_zone"],
        reentry_minutes=float(values["agency.reentry_minutes"]),
        organization=Identity(
            name=values["organization.name"],
            system=values["organization.identifier_system"],
            value=values["organization.identifier_value"],
        ),
        device=Identity(
            name=values["device.name"],
            system=values["device.identifier_system"],
            value=values["device.identifier_value"],
        ),
        encounter_template=values["identifiers.encounter"],
        note_template=values["identifiers.note"],
        note_version_template=values["identifiers.note_version"],
        participant_template=values["identifiers.participant"],
        staff_system=values["identifiers.staff"],
        mrn_system=values["identifiers.mrn"],
        service_code=values["codes.service_code"],
        note_type_code=values["codes.note_type"],
        allow_markdown=values["notes.allow_markdown"],
        create_patients=values["patients.create_missing"],
        part2_notice=values["part2.notice"],
        part2_consent_scope=values["part2.consent_scope"],
        review_policy=values["review.policy"],
        review_service_codes=tuple(values["review.service_codes"]),
    )


# --- the schema ------------------------------------------------------------

# A check takes the (type-checked) value and returns a problem, or None.
_Check = Callable[[Any], str | None]
_REQUIRED = object()


@dataclass(frozen=True, slots=True)
class _Key:
    kind: str  # "text", "bool", "number" or "list"
    default: Any = _REQUIRED
    check: _Check | None = None


def _time_zone(value: str) -> str | None:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        return "must be an IANA time zone name, e.g. America/New_York"
    return None


def _uri(value: str) -> str | None:
    if _NOT_IN_URI.search(value):
        return "must be an absolute URI (http://, https:// or urn:) without spaces or braces"
    if value.startswith(("http://", "https://")):
        host = value.split("://", 1)[1].split("/", 1)[0]
        if host:
            return None
    elif _URN.fullmatch(value):
        return None
    return "must be an absolute URI (http://, https:// or urn:)"


def _agency_system(value: str) -> str | None:
    if SOURCE_PLACEHOLDER in value:
        return f"must not contain {SOURCE_PLACEHOLDER}: this system is one for all sources"
    return _uri(value)


def _per_source_system(value: str) -> str | None:
    if SOURCE_PLACEHOLDER not in value:
        return f"must contain {SOURCE_PLACEHOLDER} (one identifier system per source)"
    if value.startswith("urn:oid:"):
        return "must not be an OID: a source name is not a number (use an http(s) URL)"
    return _uri(value.replace(SOURCE_PLACEHOLDER, "source"))


def _service_code(value: str) -> str | None:
    if not _SERVICE_CODE.fullmatch(value):
        return "must be a HCPCS/CPT code: 4 to 7 capital letters or digits"
    return None


def _review_policy(value: str) -> str | None:
    if value not in REVIEW_POLICIES:
        return "must be one of " + ", ".join(f'"{p}"' for p in REVIEW_POLICIES)
    return None


def _service_codes(value: list[Any]) -> str | None:
    for index, code in enumerate(value):
        if not isinstance(code, str) or not _SERVICE_CODE.fullmatch(code):
            return (f"item {index + 1}: must be a HCPCS/CPT code: 4 to 7 capital letters "
                    "or digits")
    if len(set(value)) != len(value):
        return "must not list a code twice"
    return None


def _note_type(value: str) -> str | None:
    if value not in NOTE_TYPES:
        return "must be one of " + ", ".join(NOTE_TYPES)
    return None


def _reentry_minutes(value: float) -> str | None:
    if not 0 <= value <= _MAX_REENTRY_MINUTES:
        return f"must be between 0 and {_MAX_REENTRY_MINUTES:g}"
    return None


_PER_SOURCE = ("encounter", "note", "note_version", "participant")

_SCHEMA: dict[str, dict[str, _Key]] = {
    "agency": {
        "name": _Key("text"),
        "time_zone": _Key("text", check=_time_zone),
        "reentry_minutes": _Key("number", check=_reentry_minutes),
    },
    "organization": {
        "name": _Key("text"),
        "identifier_system": _Key("text", check=_agency_system),
        "identifier_value": _Key("text"),
    },
    "device": {
        "name": _Key("text", default="PeerSync connector"),
        "identifier_system": _Key("text", check=_agency_system),
        "identifier_value": _Key("text"),
    },
    "identifiers": {
        **{name: _Key("text", check=_per_source_system) for name in _PER_SOURCE},
        "staff": _Key("text", check=_agency_system),
        "mrn": _Key("text", check=_agency_system),
    },
    "codes": {
        "service_code": _Key("text", default=DEFAULT_SERVICE_CODE, check=_service_code),
        "note_type": _Key("text", default=DEFAULT_NOTE_TYPE, check=_note_type),
    },
    "notes": {"allow_markdown": _Key("bool", default=False)},
    "patients": {"create_missing": _Key("bool", default=False)},
    "part2": {"notice": _Key("text"), "consent_scope": _Key("text", default="")},
    "review": {
        "policy": _Key("text", default="none", check=_review_policy),
        "service_codes": _Key("list", default=[], check=_service_codes),
    },
}


def _unknown(name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=1)
    return "unknown key" + (f" (did you mean {close[0]}?)" if close else "")


def _kind_problem(kind: str, value: Any) -> str | None:
    if kind == "text":
        if not isinstance(value, str):
            return "must be a string"
        if not value.strip():
            return "must not be empty"
    elif kind == "bool":
        if not isinstance(value, bool):
            return "must be true or false"
    elif kind == "list":
        if not isinstance(value, list):
            return 'must be a list, e.g. ["H0038"]'
    elif kind == "number":
        if isinstance(value, bool) or not isinstance(value, int | float):
            return "must be a number"
        if not math.isfinite(value):
            return "must be a finite number"
    return None


def _validate(data: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Check ``data`` against the schema: (values by dotted key, problems)."""
    values: dict[str, Any] = {}
    errors: list[str] = []
    for table, section in data.items():
        if table not in _SCHEMA:
            unknown = _unknown(table, list(_SCHEMA))
            if isinstance(section, dict):
                unknown = unknown.replace("unknown key", "unknown table")
            errors.append(f"{table}: {unknown}")
    for table, keys in _SCHEMA.items():
        section = data.get(table, {})
        if not isinstance(section, dict):
            errors.append(f"{table}: must be a table ([{table}])")
            continue
        for name in section:
            if name not in keys:
                errors.append(f"{table}.{name}: {_unknown(name, list(keys))}")
        for name, key in keys.items():
            dotted = f"{table}.{name}"
            if name not in section:
                if key.default is _REQUIRED:
                    errors.append(f"{dotted}: missing")
                else:
                    values[dotted] = key.default
                continue
            value = section[name]
            problem = _kind_problem(key.kind, value)
            if problem is None and key.check is not None:
                problem = key.check(value)
            if problem is None:
                values[dotted] = value
            else:
                errors.append(f"{dotted}: {problem}")

    # The per-source systems must differ, or a note id could be taken for an encounter id.
    seen: dict[str, str] = {}
    for name in _PER_SOURCE:
        dotted = f"identifiers.{name}"
        template = values.get(dotted)
        if template is None:
            continue
        if template in seen:
            errors.append(f"{dotted}: must differ from {seen[template]}")
        else:
            seen[template] = dotted
    return values, errors
