"""EHR presets: one TOML file per EHR family, inside the package, validated at load.

A preset is data saying what one EHR's published write API takes: per resource
type what PeerSync does (see :mod:`connector.writeplan.catalogue`), bundle and
conditional support, what a DocumentReference keeps, how an amendment and a
retraction are written, how a lost note is found again, and the SMART scope
syntax. ``[ehr] preset`` in ``peersync.toml`` names one; keys set in ``[ehr]``
override it (see :func:`connector.writeplan.resolve_plan`).

Another EHR is one more file: copy the closest preset next to ``peersync.toml``,
edit it, and set ``preset = "./my-ehr.toml"``.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from connector.errors import ConfigError
from connector.writeplan.catalogue import ACTIONS, BY_NAME

PRESET_DIR = Path(__file__).resolve().parent / "presets"
PRESETS = ("generic", "us-core-notes", "epic", "oracle-health")
MODES = ("transaction", "batch", "single")

# table -> key -> (type, allowed values or None)
_SCHEMA: dict[str, dict[str, tuple[type, tuple[Any, ...] | None]]] = {
    "preset": {"name": (str, None), "title": (str, None), "source": (str, None),
               "checked": (str, None)},
    "ehr": {"mode": (str, MODES), "conditional_create": (bool, None),
            "conditional_update": (bool, None)},
    "resources": {name: (str, kind.allowed) for name, kind in BY_NAME.items()},
    "match": {"practitioner_by": (str, ("staff-id", "npi")),
              "organization_by": (str, ("identifier", "id"))},
    "note": {
        "keeps_identifiers": (bool, None),
        "keeps_security_labels": (bool, None),
        "keeps_relates_to": (bool, None),
        "keeps_authenticator": (bool, None),
        "max_content": (int, (1, 2)),
        "content_type": (str, None),
        "content_type_update": (str, None),
        "amendment": (str, ("replace", "update")),
        "retraction": (str, ("full", "partial")),
        "encounter_required": (bool, None),
        "find_by": (str, ("identifier", "marker")),
        "search_window": (str, ("date", "period")),
        "window_precision": (str, ("date", "datetime")),
    },
    "auth": {"scopes": (str, ("v1", "v2"))},
}


@dataclass(frozen=True, slots=True)
class NoteRules:
    """What the EHR keeps of a DocumentReference, and how notes are amended and found."""

    keeps_identifiers: bool
    keeps_security_labels: bool
    keeps_relates_to: bool
    keeps_authenticator: bool  # a co-signing supervisor goes as DocumentReference.authenticator
    max_content: int
    content_type: str
    content_type_update: str
    amendment: str  # replace: a new note that replaces the old | update: the same note, amended
    retraction: str  # full | partial PUT
    encounter_required: bool  # no EHR Encounter: wait, or send with context.period only
    find_by: str  # identifier | marker (a field the EHR keeps: attachment title + creation)
    search_window: str  # date | period: the search parameter of the marker look-up window
    window_precision: str  # date | datetime


@dataclass(frozen=True, slots=True)
class Preset:
    name: str
    title: str
    source: str
    checked: str
    path: Path
    mode: str
    conditional_create: bool
    conditional_update: bool
    resources: dict[str, str]
    practitioner_by: str
    organization_by: str
    note: NoteRules
    scopes: str


def preset_path(name: str, *, folder: Path | None = None) -> Path:
    """A packaged preset by name, or a path (relative to ``folder``) to a preset file."""
    if name in PRESETS:
        return PRESET_DIR / f"{name}.toml"
    candidate = Path(name)
    if not candidate.is_absolute() and folder is not None:
        candidate = folder / candidate
    return candidate


def load_preset(name: str, *, folder: Path | None = None) -> Preset:
    path = preset_path(name, folder=folder)
    if name not in PRESETS and not name.endswith(".toml"):
        raise ConfigError(f"ehr.preset: must be one of {', '.join(PRESETS)} "
                          "or a path to a preset .toml file")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: preset file not found") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: not a readable TOML preset ({type(exc).__name__})") from None
    return parse_preset(data, path)


def parse_preset(data: dict[str, Any], path: Path) -> Preset:
    """Validate a preset's tables; every key is required, an unknown one is refused."""
    errors: list[str] = []
    values: dict[str, dict[str, Any]] = {}
    for table in sorted(set(data) - set(_SCHEMA)):
        errors.append(f"{table}: unknown table")
    for table, keys in _SCHEMA.items():
        section = data.get(table)
        if not isinstance(section, dict):
            errors.append(f"[{table}]: missing table")
            continue
        values[table] = {}
        for key in sorted(set(section) - set(keys)):
            errors.append(f"{table}.{key}: unknown key")
        for key, (kind, allowed) in keys.items():
            if key not in section:
                errors.append(f"{table}.{key}: missing")
                continue
            value = section[key]
            if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
                errors.append(f"{table}.{key}: must be {kind.__name__}")
            elif allowed is not None and value not in allowed:
                errors.append(f"{table}.{key}: must be one of {', '.join(map(str, allowed))}")
            else:
                values[table][key] = value
    if errors:
        raise ConfigError("; ".join(f"{path}: {e}" for e in errors))
    resources = values["resources"]
    if resources["DocumentReference"] != "write":
        errors.append("resources.DocumentReference: must be write")
    for key in ("content_type", "content_type_update"):
        if not values["note"][key].startswith(("text/plain", "application/xhtml+xml")):
            errors.append(f"note.{key}: must be text/plain or application/xhtml+xml "
                          "(with the charset written as the EHR wants it)")
    if errors:
        raise ConfigError("; ".join(f"{path}: {e}" for e in errors))
    assert set(resources.values()) <= set(ACTIONS)
    return Preset(
        name=values["preset"]["name"], title=values["preset"]["title"],
        source=values["preset"]["source"], checked=values["preset"]["checked"], path=path,
        mode=values["ehr"]["mode"], conditional_create=values["ehr"]["conditional_create"],
        conditional_update=values["ehr"]["conditional_update"], resources=dict(resources),
        practitioner_by=values["match"]["practitioner_by"],
        organization_by=values["match"]["organization_by"],
        note=NoteRules(**values["note"]), scopes=values["auth"]["scopes"],
    )
