"""`peersync config show`: the effective config as TOML, every secret masked.

:func:`auth_key_shown_as` is the one masking rule for an ``[ehr.auth]`` key,
shared with ``peersync config check`` (:func:`connector.auth_check.describe_auth`)
and the web app's settings page. Re-exported by :mod:`connector.setup_check`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from connector.config import Config

# Keys of [ehr.auth] that are safe to print as they are (the rest: *_file / *_env, or hidden).
SHOWN_AUTH_KEYS = ("type", "username", "client_id", "key_id", "algorithm", "token_url", "scope")


def auth_key_shown_as(key: str) -> str:
    """How an ``[ehr.auth]`` key may be shown: "file" (its path), "env" (the variable's
    name), "value" (not a secret), or "hidden". The one masking rule for every output."""
    if key.endswith("_file"):
        return "file"
    if key.endswith("_env"):
        return "env"
    return "value" if key in SHOWN_AUTH_KEYS else "hidden"


def render_config(config: Config, *, environ: Mapping[str, str] | None = None) -> str:
    """The effective config as TOML, secrets masked: auth ``*_file``/``*_env`` keys show the
    path or the variable name (never the content), the database URL has no password."""
    env = os.environ if environ is None else environ
    ehr = config.ehr
    lines = [f"# effective config from {config.path}"]
    if env.get("PEERSYNC_EHR_URL"):
        lines.append("# ehr.base_url comes from PEERSYNC_EHR_URL")
    if env.get("PEERSYNC_DATABASE_URL"):
        lines.append("# database_url comes from PEERSYNC_DATABASE_URL")
    lines += [
        f"profile = {_toml(config.profile)}  # {config.profile_path()}",
        f"database_url = {_toml(safe_database_url(config.database_url))}",
        f"default_source = {_toml(config.default_source)}",
        "",
        "[ehr]",
    ]
    for key in ("base_url", "preset", "organization_id"):
        lines.append(f"{key} = {_toml(getattr(ehr, key))}")
    for key in ("mode", "conditional", "note_content_type", "create_encounters"):
        if key in ehr.explicit:
            lines.append(f"{key} = {_toml(getattr(ehr, key))}  # overrides the preset")
    for key in ("max_bundle_entries", "timeout_s", "ca_file"):
        lines.append(f"{key} = {_toml(getattr(ehr, key))}")
    lines += ["", "[ehr.auth]"]
    for key, value in ehr.auth.items():
        how = auth_key_shown_as(key)
        if how == "file":
            lines.append(f"{key} = {_toml(value)}  # the file's path; its content is not shown")
        elif how == "env":
            lines.append(f"{key} = {_toml(value)}  # the variable's name; its value is not shown")
        elif how == "value":
            lines.append(f"{key} = {_toml(value)}")
        else:
            lines.append(f'{key} = "<hidden>"')
    audit_key = getattr(config, "audit_key_file", None)
    lines += ["", "[audit]"]
    if audit_key:
        lines.append(f"key_file = {_toml(audit_key)}  # the file's path; its content is not shown")
    else:
        lines.append("# key_file not set: peersync.key beside this file (content not shown)")
    lines += ["", "[sync]"]
    for key in ("lease_s", "renew_every_s", "max_wait_s", "max_attempts"):
        lines.append(f"{key} = {_toml(getattr(config.sync, key))}")
    return "\n".join(lines)


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return json.dumps(str(value), ensure_ascii=False)  # a JSON string is a TOML basic string


def safe_database_url(url: str) -> str:
    """A database URL without its password."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - printing only
        return "(database URL not shown)"
