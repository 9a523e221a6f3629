"""``[web]``: the admin app's server settings, and a reader of that table alone for
``create_app``."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from connector.config.base import _fail, _take
from connector.errors import ConfigError


@dataclass(frozen=True, slots=True)
class WebConfig:
    """``[web]``: how `peersync serve` (and any server running ``create_app``) serves the app."""

    # proxies in front whose X-Forwarded-For/-Proto/-Host are trusted (0: none)
    trusted_proxies: int = 0
    idle_timeout_s: float = 1800.0  # a session ends after this long without a request
    workers: int = 2  # gunicorn worker processes (`peersync serve --workers` overrides)


WEB_LIMITS = {"trusted_proxies": (0, 10), "idle_timeout_s": (60, 86400), "workers": (1, 64)}


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
