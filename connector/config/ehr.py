"""``[ehr]`` and ``[ehr.auth]``: where the EHR is, what it takes, and how to sign in.

``check_ehr_url`` is the one URL rule the config, the auth and the FHIR client
share: plain http:// only for loopback.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from connector.config.base import _fail, _rel, _take
from connector.errors import ConfigError

MODES = ("transaction", "batch", "single", "auto")
NOTE_FORMATS = ("text/plain", "application/xhtml+xml")
MAX_REQUESTS_PER_MINUTE = 1_000_000
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


@dataclass(frozen=True, slots=True)
class EhrConfig:
    base_url: str
    preset: str = "generic"  # a packaged preset name or a path to a preset file
    organization_id: str = ""  # the agency's Organization id in the EHR, where it is set by hand
    mode: str = "transaction"
    conditional: bool = True
    max_bundle_entries: int = 50
    # requests (or batch bundles) in flight at once per worker in batch and single modes
    max_in_flight: int = 8
    note_content_type: str = "text/plain"
    create_encounters: bool = True
    timeout_s: float = 30.0
    ca_file: str = ""
    # requests a minute to this EHR from every worker sharing the store (connector.ratelimit)
    max_requests_per_minute: int = 0  # 0: no limit
    auth: dict[str, Any] = field(default_factory=lambda: {"type": "none"})
    # the capability keys set in the file: they override the preset's values
    explicit: frozenset[str] = frozenset()


# [ehr] keys that say what the EHR can do: the preset gives them unless set.
CAPABILITY_KEYS = ("mode", "conditional", "note_content_type", "create_encounters")


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


def parse_ehr(table: dict[str, Any], path: Path, environ: Mapping[str, str]) -> EhrConfig:
    """The ``[ehr]`` table (with ``[ehr.auth]``), validated; PEERSYNC_EHR_URL overrides."""
    ehr_raw = dict(table)
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
            "max_in_flight": int,
            "note_content_type": str,
            "create_encounters": bool,
            "timeout_s": (int, float),
            "ca_file": str,
            "max_requests_per_minute": int,
        },
        {
            "preset": "generic",
            "organization_id": "",
            "mode": "transaction",
            "conditional": True,
            "max_bundle_entries": 50,
            "max_in_flight": 8,
            "note_content_type": "text/plain",
            "create_encounters": True,
            "timeout_s": 30.0,
            "ca_file": "",
            "max_requests_per_minute": 0,
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
    if not 1 <= ehr["max_in_flight"] <= 64:
        raise _fail(path, "ehr.max_in_flight", "must be between 1 and 64")
    if not 0 < float(ehr["timeout_s"]) <= 600:
        raise _fail(path, "ehr.timeout_s", "must be between 0 and 600 seconds")
    ehr["timeout_s"] = float(ehr["timeout_s"])
    if not 0 <= ehr["max_requests_per_minute"] <= MAX_REQUESTS_PER_MINUTE:
        raise _fail(path, "ehr.max_requests_per_minute",
                    f"must be 0 (no limit) or a number of requests up to "
                    f"{MAX_REQUESTS_PER_MINUTE}")
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
    return EhrConfig(**ehr)
