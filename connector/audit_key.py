"""The audit key: where it lives, how it is read, and the public development key.

``PEERSYNC_AUDIT_KEY`` (hex or base64) wins; else a key file, mode 0600, beside
``peersync.toml`` (``peersync.key`` or ``audit.key_file``). Nothing here prints
the key. Part of :mod:`connector.audit` (which re-exports every name); imports
neither the store nor the CLI.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import logging
import os
import re
import stat
from collections.abc import Mapping
from pathlib import Path

from connector.errors import ConfigError

log = logging.getLogger("peersync.audit")

KEY_ENV = "PEERSYNC_AUDIT_KEY"
KEY_FILE_NAME = "peersync.key"
MIN_KEY_BYTES = 32
# Used when no key is configured (tests, a demo, a home made before `init` wrote
# a key). It is public, so it proves nothing: `verify` says so whenever it sees it.
DEVELOPMENT_KEY = b"peersync-DEVELOPMENT-audit-key--not-secret--do-not-use-in-production"


def parse_key(text: str, *, where: str) -> bytes:
    """A key given as hex or base64 text, at least 32 bytes. ``where`` names it in errors."""
    value = text.strip()
    key: bytes | None = None
    padded = value + "=" * (-len(value) % 4)
    try:
        if re.fullmatch(r"(?:[0-9a-fA-F]{2})+", value):  # hex wins where both would parse
            key = bytes.fromhex(value)
        elif re.fullmatch(r"[A-Za-z0-9+/]+=*", padded):
            key = base64.b64decode(padded, validate=True)
        elif re.fullmatch(r"[A-Za-z0-9_-]+=*", padded):
            key = base64.urlsafe_b64decode(padded)
    except (binascii.Error, ValueError):
        key = None
    if key is None:
        raise ConfigError(f"{where}: the audit key must be hex or base64 text")
    if len(key) < MIN_KEY_BYTES:
        raise ConfigError(f"{where}: the audit key must be at least {MIN_KEY_BYTES} bytes")
    return key


def key_path(config_folder: Path, key_file: str | None) -> Path:
    """Where the key file is: ``key_file`` (relative to the config's folder) or the default."""
    candidate = Path(key_file) if key_file else Path(KEY_FILE_NAME)
    return candidate if candidate.is_absolute() else config_folder / candidate


def load_audit_key(
    config_folder: Path, key_file: str | None, environ: Mapping[str, str]
) -> bytes:
    """The audit key: ``PEERSYNC_AUDIT_KEY`` wins, else the key file.

    A key file readable by group or others is refused (ConfigError naming the
    file). A configured ``key_file`` must exist; when none is configured and
    ``peersync.key`` is missing too, the development key is used and a warning
    logged (``peersync audit verify`` reports it as well).
    """
    from_env = environ.get(KEY_ENV)
    if from_env:
        return parse_key(from_env, where=KEY_ENV)
    path = key_path(config_folder, key_file)
    try:
        info = path.stat()
    except FileNotFoundError:
        if key_file:
            raise ConfigError(f"{path}: audit key file not found (audit.key_file)") from None
        log.warning(
            "no audit key (%s unset, %s missing): the audit log is keyed with the public "
            "development key; run `peersync audit init-key`",
            KEY_ENV,
            path,
        )
        return DEVELOPMENT_KEY
    except OSError as exc:
        raise ConfigError(f"{path}: audit key file cannot be read ({exc.strerror})") from None
    if not stat.S_ISREG(info.st_mode):
        raise ConfigError(f"{path}: the audit key file is not a regular file")
    if info.st_mode & 0o077:
        raise ConfigError(
            f"{path}: the audit key file is readable by others (mode "
            f"{stat.S_IMODE(info.st_mode):04o}); it must be 0600: chmod 600 {path}"
        )
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: audit key file cannot be read ({exc.strerror})") from None
    try:
        return parse_key(raw.decode("ascii"), where=str(path))
    except (UnicodeDecodeError, ConfigError):
        if len(raw) >= MIN_KEY_BYTES:  # a raw binary key
            return raw
        raise ConfigError(
            f"{path}: the audit key must be hex or base64 text, at least "
            f"{MIN_KEY_BYTES} bytes"
        ) from None


def ensure_key_file(folder: Path, key_file: str | None = None) -> Path:
    """Create a random 32-byte key file (hex text, mode 0600) unless it exists; return its path.

    Created with O_CREAT|O_EXCL and mode 0600 in one call, so it is never
    readable by others, not even for a moment, and never overwritten.
    """
    path = key_path(folder, key_file)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path
    try:
        os.write(fd, os.urandom(MIN_KEY_BYTES).hex().encode("ascii") + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    return path


def is_development_key(key: bytes) -> bool:
    return hmac.compare_digest(key, DEVELOPMENT_KEY)
