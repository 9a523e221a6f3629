"""Deployment config: ``peersync.toml`` in ``$PEERSYNC_HOME`` (default: the current folder).

Validated once at load: an unknown key or a bad value is refused with the file
and the dotted key named. ``PEERSYNC_EHR_URL`` and ``PEERSYNC_DATABASE_URL``
override the file. Secrets are never kept here: ``[ehr.auth]`` names files or
environment variables that hold them.

One module per part: ``base`` (file name, folder, the table reader), ``ehr``
(``[ehr]``, ``[ehr.auth]`` and the EHR URL rule), ``sync``, ``web``, ``loading``
(the whole file) and ``template`` (what ``peersync init`` writes).
"""

from __future__ import annotations

from connector.config.base import (
    CONFIG_NAME,
    _fail,
    _kind_name,
    _rel,
    _take,
    _valid_source,
    home,
    valid_source,
)
from connector.config.ehr import (
    AUTH_KEYS,
    AUTH_TYPES,
    CAPABILITY_KEYS,
    MODES,
    NOTE_FORMATS,
    EhrConfig,
    check_ehr_url,
    check_url_scheme,
    is_loopback_host,
    parse_ehr,
)
from connector.config.loading import Config, _absolute_sqlite, load_config, parse_config
from connector.config.sync import SyncConfig, parse_sync
from connector.config.template import CONFIG_TEMPLATE, _toml_string, write_config
from connector.config.web import WEB_LIMITS, WebConfig, load_web_config, parse_web
from connector.errors import ConfigError

__all__ = [
    "AUTH_KEYS",
    "AUTH_TYPES",
    "CAPABILITY_KEYS",
    "CONFIG_NAME",
    "CONFIG_TEMPLATE",
    "MODES",
    "NOTE_FORMATS",
    "WEB_LIMITS",
    "Config",
    "ConfigError",
    "EhrConfig",
    "SyncConfig",
    "WebConfig",
    "_absolute_sqlite",
    "_fail",
    "_kind_name",
    "_rel",
    "_take",
    "_toml_string",
    "_valid_source",
    "check_ehr_url",
    "check_url_scheme",
    "home",
    "is_loopback_host",
    "load_config",
    "load_web_config",
    "parse_config",
    "parse_ehr",
    "parse_sync",
    "parse_web",
    "valid_source",
    "write_config",
]
