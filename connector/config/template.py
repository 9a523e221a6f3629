"""``peersync init``'s config file: the commented template, filled in and checked before
it is written."""

from __future__ import annotations

import tomllib
from pathlib import Path

from connector.config.base import CONFIG_NAME
from connector.config.loading import parse_config
from connector.errors import ConfigError

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
max_in_flight = 8               # requests (or batch bundles) at once per worker (1..64);
                                # each record's writes stay in order
timeout_s = 30
ca_file = ""                    # optional CA bundle
max_requests_per_minute = 0     # all workers together, per rolling minute (0: no limit)

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
