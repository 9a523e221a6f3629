"""Deployment config: ``peersync.toml`` in ``$PEERSYNC_HOME`` (default: the current folder).

Validated once at load: an unknown key or a bad value is refused with the file
and the dotted key named. ``PEERSYNC_EHR_URL`` and ``PEERSYNC_DATABASE_URL``
override the file. Secrets are never kept here: ``[ehr.auth]`` names files or
environment variables that hold them.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from connector.errors import ConfigError

CONFIG_NAME = "peersync.toml"
MODES = ("transaction", "batch", "single", "auto")
NOTE_FORMATS = ("text/plain", "application/xhtml+xml")
AUTH_TYPES = ("none", "basic", "bearer", "client_secret", "smart")
AUTH_KEYS = {
    "none": set(),
    "basic": {"username", "password_file", "password_env"},
    "bearer": {"token_file", "token_env"},
    "client_secret": {"client_id", "client_secret_file", "client_secret_env", "token_url", "scope"},
    "smart": {
        "client_id",
        "private_key_file",
        "private_key_env",
        "key_id",
        "algorithm",
        "scope",
        "token_url",
    },
}


def home() -> Path:
    return Path(os.environ.get("PEERSYNC_HOME") or ".").resolve()


@dataclass(frozen=True, slots=True)
class EhrConfig:
    base_url: str
    preset: str = "generic"  # a packaged preset name or a path to a preset file
    organization_id: str = ""  # the agency's Organization id in the EHR, where it is set by hand
    mode: str = "transaction"
    conditional: bool = True
    max_bundle_entries: int = 50
    note_content_type: str = "text/plain"
    create_encounters: bool = True
    timeout_s: float = 30.0
    ca_file: str = ""
    auth: dict[str, Any] = field(default_factory=lambda: {"type": "none"})
    # the capability keys set in the file: they override the preset's values
    explicit: frozenset[str] = frozenset()


# [ehr] keys that say what the EHR can do: the preset gives them unless set.
CAPABILITY_KEYS = ("mode", "conditional", "note_content_type", "create_encounters")


@dataclass(frozen=True, slots=True)
class SyncConfig:
    lease_s: float = 30.0
    renew_every_s: float = 10.0
    max_wait_s: float = 120.0  # how long `peersync sync` waits for scheduled retries
    max_attempts: int = 8  # failures that are neither transient nor the EHR's refusal
    # a note the EHR does not show yet (found by marker) is looked for again after this long
    lookup_grace_s: float = 30.0
    # transient failures (unreachable, timeouts, 429, 5xx) are retried until this long
    # after the record's first failure, then it needs attention (gave-up-after-outage)
    give_up_after: float = 259200.0
    retry_base_s: float | None = None  # the backoff's first step (None: connector.retry's 2 s)
    retry_max_s: float | None = None  # the backoff's cap (None: connector.retry's 300 s)
    # the EHR gate (connector.gate): one probe this long after the EHR became
    # unreachable, doubling per failed probe up to probe_max_s
    probe_every_s: float = 5.0
    probe_max_s: float = 60.0
    outage_after_failures: int = 3  # 5xx/timeouts in a row that close the gate


@dataclass(frozen=True, slots=True)
class WebConfig:
    """``[web]``: how `peersync serve` (and any server running ``create_app``) serves the app."""

    # proxies in front whose X-Forwarded-For/-Proto/-Host are trusted (0: none)
    trusted_proxies: int = 0
    idle_timeout_s: float = 1800.0  # a session ends after this long without a request
    workers: int = 2  # gunicorn worker processes (`peersync serve --workers` overrides)


WEB_LIMITS = {"trusted_proxies": (0, 10), "idle_timeout_s": (60, 86400), "workers": (1, 64)}


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


def _fail(path: Path, key: str, message: str) -> ConfigError:
    return ConfigError(f"{path}: {key}: {message}")


def is_loopback_host(host: str | None) -> bool:
    """True for localhost, 127.0.0.0/8 and ::1."""
    if not host:
        return False
    host = host.strip("[]").rstrip(".").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_ehr_url(url: str, *, key: str = "ehr.base_url") -> str:
    """Validate an EHR URL (base URL, token URL); returns it without a trailing slash.

    The one rule the config, the auth and the FHIR client share. Plain http://
    is refused except for loopback: PHI and tokens travel on it.
    """
    if not isinstance(url, str) or not url.strip():
        raise ConfigError(f"{key}: required")
    try:
        parts = urlsplit(url.strip())
        hostname = parts.hostname
    except ValueError:  # e.g. an unclosed IPv6 bracket
        raise ConfigError(f"{key}: not a valid URL") from None
    if parts.scheme not in ("http", "https") or not hostname:
        raise ConfigError(f"{key}: must be an absolute https:// URL")
    if parts.username is not None or parts.password is not None:
        raise ConfigError(f"{key}: must not carry credentials (use [ehr.auth])")
    if parts.query or parts.fragment:
        raise ConfigError(f"{key}: must not have a query or a fragment")
    if parts.scheme == "http" and not is_loopback_host(hostname):
        raise ConfigError(
            f"{key}: http:// is allowed only for loopback (127.0.0.0/8, ::1, localhost); "
            "use https://"
        )
    return url.strip().rstrip("/")


def check_url_scheme(url: str, *, where: str = "ehr.base_url") -> str:
    """The EHR URL rule, as the config parser names its key."""
    return check_ehr_url(url, key=where)


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
    ehr_raw = dict(top["ehr"])
    auth_raw = ehr_raw.pop("auth", {"type": "none"})
    ehr = _take(
        ehr_raw,
        path,
        "ehr.",
        {
            "base_url": str,
            "preset": str,
            "organization_id": str,
            "mode": str,
            "conditional": bool,
            "max_bundle_entries": int,
            "note_content_type": str,
            "create_encounters": bool,
            "timeout_s": (int, float),
            "ca_file": str,
        },
        {
            "preset": "generic",
            "organization_id": "",
            "mode": "transaction",
            "conditional": True,
            "max_bundle_entries": 50,
            "note_content_type": "text/plain",
            "create_encounters": True,
            "timeout_s": 30.0,
            "ca_file": "",
        },
    )
    from_env = environ.get("PEERSYNC_EHR_URL")
    base_url = from_env or ehr.get("base_url")
    if not base_url:
        raise _fail(path, "ehr.base_url", "missing (or set PEERSYNC_EHR_URL)")
    try:
        where = "ehr.base_url (from PEERSYNC_EHR_URL)" if from_env else "ehr.base_url"
        ehr["base_url"] = check_url_scheme(base_url, where=where)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    ehr["explicit"] = frozenset(k for k in CAPABILITY_KEYS if k in ehr_raw)
    from connector.writeplan import PRESETS
    from connector.writeplan.presets import load_preset

    if ehr["preset"] not in PRESETS and not ehr["preset"].endswith(".toml"):
        raise _fail(path, "ehr.preset",
                    f"must be one of {', '.join(PRESETS)} or a path to a preset .toml file")
    try:
        load_preset(ehr["preset"], folder=path.parent)  # a bad preset is refused at start-up
    except ConfigError as exc:
        raise _fail(path, "ehr.preset", str(exc)) from None
    if ehr["organization_id"] and not re.fullmatch(r"[A-Za-z0-9\-.]{1,64}",
                                                   ehr["organization_id"]):
        raise _fail(path, "ehr.organization_id", "must be a FHIR id (A-Z a-z 0-9 - .)")
    if ehr["mode"] not in MODES:
        raise _fail(path, "ehr.mode", f"must be one of {', '.join(MODES)}")
    if ehr["note_content_type"] not in NOTE_FORMATS:
        raise _fail(path, "ehr.note_content_type", f"must be one of {', '.join(NOTE_FORMATS)}")
    if not 3 <= ehr["max_bundle_entries"] <= 1000:
        raise _fail(path, "ehr.max_bundle_entries", "must be between 3 and 1000")
    if not 0 < float(ehr["timeout_s"]) <= 600:
        raise _fail(path, "ehr.timeout_s", "must be between 0 and 600 seconds")
    ehr["timeout_s"] = float(ehr["timeout_s"])
    if ehr["ca_file"] and not _rel(path, ehr["ca_file"]).exists():
        raise _fail(path, "ehr.ca_file", "file not found")
    if not isinstance(auth_raw, dict):
        raise _fail(path, "ehr.auth", "must be a table")
    auth_type = auth_raw.get("type", "none")
    if auth_type not in AUTH_TYPES:
        raise _fail(path, "ehr.auth.type", f"must be one of {', '.join(AUTH_TYPES)}")
    unknown = sorted(set(auth_raw) - AUTH_KEYS[auth_type] - {"type"})
    if unknown:
        raise _fail(path, f"ehr.auth.{unknown[0]}", f"unknown key for auth type {auth_type}")
    ehr["auth"] = dict(auth_raw, type=auth_type)
    sync = _take(
        top["sync"],
        path,
        "sync.",
        {
            "lease_s": (int, float),
            "renew_every_s": (int, float),
            "max_wait_s": (int, float),
            "max_attempts": int,
            "lookup_grace_s": (int, float),
            "give_up_after": (int, float),
            "retry_base_s": (int, float),
            "retry_max_s": (int, float),
            "probe_every_s": (int, float),
            "probe_max_s": (int, float),
            "outage_after_failures": int,
        },
        {},
    )
    defaults = SyncConfig()
    sync_cfg = SyncConfig(
        lease_s=float(sync.get("lease_s", defaults.lease_s)),
        renew_every_s=float(sync.get("renew_every_s", defaults.renew_every_s)),
        max_wait_s=float(sync.get("max_wait_s", defaults.max_wait_s)),
        max_attempts=int(sync.get("max_attempts", defaults.max_attempts)),
        lookup_grace_s=float(sync.get("lookup_grace_s", defaults.lookup_grace_s)),
        give_up_after=float(sync.get("give_up_after", defaults.give_up_after)),
        retry_base_s=float(sync["retry_base_s"]) if "retry_base_s" in sync else None,
        retry_max_s=float(sync["retry_max_s"]) if "retry_max_s" in sync else None,
        probe_every_s=float(sync.get("probe_every_s", defaults.probe_every_s)),
        probe_max_s=float(sync.get("probe_max_s", defaults.probe_max_s)),
        outage_after_failures=int(sync.get("outage_after_failures",
                                           defaults.outage_after_failures)),
    )
    for key in ("give_up_after", "probe_every_s", "probe_max_s", "retry_base_s", "retry_max_s"):
        value = getattr(sync_cfg, key)
        if value is not None and not 0 < value < math.inf:
            raise _fail(path, f"sync.{key}", "must be a number of seconds above 0")
    if sync_cfg.probe_max_s < sync_cfg.probe_every_s:
        raise _fail(path, "sync.probe_max_s", "must not be shorter than sync.probe_every_s")
    if sync_cfg.outage_after_failures < 1:
        raise _fail(path, "sync.outage_after_failures", "must be at least 1")
    for key in ("lease_s", "renew_every_s"):
        if not 0 < getattr(sync_cfg, key) < math.inf:  # TOML allows inf and nan
            raise _fail(path, f"sync.{key}", "must be a number of seconds above 0")
    if not 0 <= sync_cfg.lookup_grace_s <= 86400:
        raise _fail(path, "sync.lookup_grace_s", "must be between 0 and 86400 seconds")
    if not 0 <= sync_cfg.max_wait_s < math.inf:
        raise _fail(path, "sync.max_wait_s", "must be a number of seconds, 0 or more")
    if sync_cfg.max_attempts < 1:
        raise _fail(path, "sync.max_attempts", "must be at least 1")
    if sync_cfg.renew_every_s >= sync_cfg.lease_s:
        raise _fail(path, "sync.renew_every_s", "must be shorter than sync.lease_s")
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
        ehr=EhrConfig(**ehr),
        sync=sync_cfg,
        audit_key_file=audit.get("key_file"),
        web=web,
    )


def parse_web(table: dict[str, Any], path: Path) -> WebConfig:
    """The ``[web]`` table, validated (unknown keys and out-of-range values refused)."""
    web = _take(table, path, "web.",
                {"trusted_proxies": int, "idle_timeout_s": (int, float), "workers": int}, {})
    for key, (low, high) in WEB_LIMITS.items():
        if key in web and not low <= web[key] <= high:  # NaN fails too
            raise _fail(path, f"web.{key}", f"must be between {low} and {high}")
    defaults = WebConfig()
    return WebConfig(
        trusted_proxies=int(web.get("trusted_proxies", defaults.trusted_proxies)),
        idle_timeout_s=float(web.get("idle_timeout_s", defaults.idle_timeout_s)),
        workers=int(web.get("workers", defaults.workers)),
    )


def load_web_config(path: Path) -> WebConfig:
    """Only the ``[web]`` table of the config file at ``path`` (defaults if it does not exist).

    For ``create_app``, which must know how to serve before anything else of the
    config is needed.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return WebConfig()
    except (OSError, UnicodeDecodeError):
        raise ConfigError(f"{path}: cannot be read") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from exc
    table = data.get("web", {})
    if not isinstance(table, dict):
        raise _fail(path, "web", "must be a table")
    return parse_web(table, path)


def _rel(config_path: Path, value: str) -> Path:
    candidate = Path(value)
    return candidate if candidate.is_absolute() else config_path.parent / candidate


def _valid_source(value: str) -> bool:
    return bool(re.fullmatch(r"[A-Za-z0-9._-]{1,64}", value))


def valid_source(value: str) -> bool:
    return _valid_source(value)


def _absolute_sqlite(url: str, folder: Path) -> str:
    """A relative SQLite path in the config is relative to the config's folder."""
    # "sqlite+pysqlite:///x.db" is the same file as "sqlite:///x.db".
    match = re.fullmatch(r"(sqlite(?:\+\w+)?:///)(.*)", url, flags=re.DOTALL)
    if match:
        prefix, rest = match.groups()
        if rest and not rest.startswith("/") and rest != ":memory:":
            return prefix + str((folder / rest).resolve())
    return url


CONFIG_TEMPLATE = """\
# PeerSync deployment config (written by `peersync init`).
# PEERSYNC_EHR_URL and PEERSYNC_DATABASE_URL override the values below.

profile = {profile}               # agency profile: "default" or a path to a TOML file
database_url = {database_url}     # SQLite file (relative to this folder) or postgresql+psycopg://...
default_source = {default_source} # source name for `peersync import` without --source

[ehr]
base_url = {base_url}
preset = {preset}               # generic | us-core-notes | epic | oracle-health | ./my-ehr.toml
# organization_id = ""          # the agency's Organization id in the EHR (Epic: required)
# What the EHR can take comes from the preset; a key set here overrides it
# (`peersync config check` prints the resulting write plan):
# mode = "auto"                 # transaction | batch | single | auto (from the CapabilityStatement)
# conditional = true            # the server supports conditional create/update
# note_content_type = "text/plain"  # or "application/xhtml+xml"
# create_encounters = true      # false: attach notes to the EHR's own Encounter
max_bundle_entries = 50         # some servers refuse larger bundles
timeout_s = 30
ca_file = ""                    # optional CA bundle

[ehr.auth]
type = "none"                   # none | basic | bearer | client_secret | smart
# smart: client_id, private_key_file, key_id, algorithm (RS384|ES384), scope, token_url (optional)

[sync]
lease_s = 30                    # a dead worker's jobs are taken again after their lease
renew_every_s = 10
max_wait_s = 120                # `peersync sync` waits at most this long for scheduled retries
max_attempts = 8                # other retryable failures (not the EHR's) before attention
lookup_grace_s = 30             # a lost note not found yet is looked for again after this
give_up_after = 259200          # transient EHR failures (unreachable, 429, 5xx) are retried
                                # this long (s) from a record's first failure: 72 h
# retry_base_s = 2              # the retry backoff's first step; it doubles up to retry_max_s
# retry_max_s = 300
probe_every_s = 5               # EHR unreachable: all workers pause; one probes after this,
probe_max_s = 60                # doubling per failed probe up to this
outage_after_failures = 3       # 5xx or timeouts in a row that pause all workers

# The audit log's HMAC key: PEERSYNC_AUDIT_KEY (hex or base64) if set, else this
# file (mode 0600; `peersync init` writes peersync.key beside this file).
# [audit]
# key_file = "peersync.key"

# `peersync serve`: gunicorn behind a TLS-terminating proxy (cookies are Secure).
[web]
trusted_proxies = 0             # TLS proxies in front whose X-Forwarded-* count (--behind-proxy: 1)
idle_timeout_s = 1800           # a session ends after this long without a request
workers = 2                     # gunicorn worker processes
"""


def write_config(
    folder: Path,
    *,
    base_url: str,
    database_url: str = "sqlite:///peersync.db",
    default_source: str = "peer-tool",
    profile: str = "default",
    preset: str = "generic",
    overwrite: bool = False,
) -> Path:
    path = folder / CONFIG_NAME
    if path.exists() and not overwrite:
        raise ConfigError(f"{path}: already exists (use --force to replace it)")
    text = CONFIG_TEMPLATE.format(
        profile=_toml_string(profile),
        database_url=_toml_string(database_url),
        default_source=_toml_string(default_source),
        base_url=_toml_string(base_url.rstrip("/")),
        preset=_toml_string(preset),
    )
    # Checked before anything is written: a refused value leaves no file behind.
    parse_config(tomllib.loads(text), path=path, environ={})
    folder.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def _toml_string(value: str) -> str:
    """``value`` as a TOML basic string (quotes, backslashes, control characters escaped)."""
    escaped = []
    for char in value:
        if char in '"\\':
            escaped.append("\\" + char)
        elif char < " " or char == "\x7f":
            escaped.append(f"\\u{ord(char):04x}")
        else:
            escaped.append(char)
    return '"' + "".join(escaped) + '"'
