"""The whole deployment config: ``peersync.toml`` read, validated table by table, overridden
by the environment (``PEERSYNC_EHR_URL``, ``PEERSYNC_DATABASE_URL``)."""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from connector.config.base import CONFIG_NAME, _fail, _take, _valid_source, home
from connector.config.ehr import EhrConfig, parse_ehr
from connector.config.sync import SyncConfig, parse_sync
from connector.config.web import WebConfig, parse_web
from connector.errors import ConfigError


@dataclass(frozen=True, slots=True)
class Config:
    path: Path
    profile: str  # a path (relative to the config file) or "default"
    database_url: str
    default_source: str
    ehr: EhrConfig
    sync: SyncConfig = field(default_factory=SyncConfig)
    audit_key_file: str | None = None  # [audit] key_file; None: peersync.key beside this file
    web: WebConfig = field(default_factory=WebConfig)

    @property
    def folder(self) -> Path:
        return self.path.parent

    def profile_path(self) -> Path:
        from mappings.profile import default_profile_path

        if self.profile == "default":
            return default_profile_path()
        candidate = Path(self.profile)
        return candidate if candidate.is_absolute() else self.folder / candidate


def load_config(path: Path | None = None, *, environ: Mapping[str, str] | None = None) -> Config:
    env = os.environ if environ is None else environ
    path = (path or home() / CONFIG_NAME).resolve()
    if not path.exists():
        raise ConfigError(f"{path}: not found: run `peersync init` first (or set PEERSYNC_HOME)")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from exc
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not valid TOML (not UTF-8 text)") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read ({exc.strerror})") from None
    return parse_config(data, path=path, environ=env)


def parse_config(data: dict[str, Any], *, path: Path, environ: Mapping[str, str]) -> Config:
    top = _take(
        data,
        path,
        "",
        {
            "profile": str,
            "database_url": str,
            "default_source": str,
            "ehr": dict,
            "sync": dict,
            "audit": dict,
            "web": dict,
        },
        {
            "profile": "default",
            "database_url": "sqlite:///peersync.db",
            "default_source": "peer-tool",
            "ehr": None,
            "sync": {},
            "audit": {},
            "web": {},
        },
    )
    if top["ehr"] is None:
        raise _fail(path, "ehr", "missing table [ehr]")
    source = top["default_source"]
    if not _valid_source(source):
        raise _fail(path, "default_source", "must be 1-64 characters of A-Z a-z 0-9 . _ -")
    ehr = parse_ehr(top["ehr"], path, environ)
    sync_cfg = parse_sync(top["sync"], path)
    audit = _take(top["audit"], path, "audit.", {"key_file": str}, {})
    if "key_file" in audit and not audit["key_file"].strip():
        raise _fail(path, "audit.key_file", "must name a file (or leave it out)")
    web = parse_web(top["web"], path)
    database_url = environ.get("PEERSYNC_DATABASE_URL") or top["database_url"]
    return Config(
        path=path,
        profile=top["profile"],
        database_url=_absolute_sqlite(database_url, path.parent),
        default_source=source,
        ehr=ehr,
        sync=sync_cfg,
        audit_key_file=audit.get("key_file"),
        web=web,
    )


def _absolute_sqlite(url: str, folder: Path) -> str:
    """A relative SQLite path in the config is relative to the config's folder."""
    # "sqlite+pysqlite:///x.db" is the same file as "sqlite:///x.db".
    match = re.fullmatch(r"(sqlite(?:\+\w+)?:///)(.*)", url, flags=re.DOTALL)
    if match:
        prefix, rest = match.groups()
        if rest and not rest.startswith("/") and rest != ":memory:":
            return prefix + str((folder / rest).resolve())
    return url
