"""What every part of the config shares: its file name and folder, and the table reader.

``_take`` reads one TOML table against a spec: an unknown key or a value of the
wrong kind is refused with the file and the dotted key named.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from connector.errors import ConfigError

CONFIG_NAME = "peersync.toml"


def home() -> Path:
    return Path(os.environ.get("PEERSYNC_HOME") or ".").resolve()


def _fail(path: Path, key: str, message: str) -> ConfigError:
    return ConfigError(f"{path}: {key}: {message}")


def _take(
    table: dict[str, Any],
    path: Path,
    prefix: str,
    spec: dict[str, type | tuple[type, ...]],
    defaults: dict[str, Any],
) -> dict[str, Any]:
    unknown = sorted(set(table) - set(spec))
    if unknown:
        raise _fail(path, f"{prefix}{unknown[0]}", "unknown key")
    out = dict(defaults)
    for key, kind in spec.items():
        if key not in table:
            continue
        value = table[key]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if isinstance(value, bool) and bool not in kinds:
            raise _fail(path, prefix + key, f"must be {_kind_name(kinds)}")
        if not isinstance(value, kinds):
            raise _fail(path, prefix + key, f"must be {_kind_name(kinds)}")
        out[key] = value
    return out


def _kind_name(kinds: tuple[type, ...]) -> str:
    names = {
        str: "a string",
        bool: "true or false",
        int: "a whole number",
        float: "a number",
        dict: "a table",
    }
    return " or ".join(dict.fromkeys(names.get(k, k.__name__) for k in kinds))


def _rel(config_path: Path, value: str) -> Path:
    candidate = Path(value)
    return candidate if candidate.is_absolute() else config_path.parent / candidate


def _valid_source(value: str) -> bool:
    return bool(re.fullmatch(r"[A-Za-z0-9._-]{1,64}", value))


def valid_source(value: str) -> bool:
    return _valid_source(value)
