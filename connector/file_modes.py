"""The file-mode checks of `peersync config check`: files that hold PHI, keys or
secrets must be readable by PeerSync's user only (chmod 600).

Part of :func:`connector.setup_check.check_setup` (which re-exports the public
names).
"""

from __future__ import annotations

import stat
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from connector.config import Config
    from connector.setup_check import CheckReport


def check_secret_files(report: CheckReport, cfg: Mapping[str, Any], folder: Path) -> None:
    """Warn when a secret or key file can be read by other users."""
    for key, value in cfg.items():
        if not key.endswith("_file") or not isinstance(value, str) or not value:
            continue
        path = Path(value).expanduser()
        path = path if path.is_absolute() else folder / path
        try:
            mode = path.stat().st_mode
        except OSError:
            continue  # build_auth already refused a missing file
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            report.add(f"ehr.auth.{key}", "warn",
                       f"{path} is readable by other users (mode {stat.S_IMODE(mode):o}); "
                       "chmod 600 it")


SECRET_FILE_NAME = "peersync.secret"  # webapp.SECRET_FILE: the session-signing key


def private_files(config: Config) -> list[tuple[str, Path]]:
    """The files only PeerSync's user may read: the SQLite database (PHI) with its -wal
    and -shm, the audit key and the web app's session secret. (name, path) pairs."""
    from sqlalchemy.engine import make_url

    from connector.audit import key_path

    files: list[tuple[str, Path]] = []
    try:
        url = make_url(config.database_url)
    except Exception:  # noqa: BLE001 - a bad URL is reported when the store opens
        url = None
    database = url.database if url is not None and url.get_backend_name() == "sqlite" else None
    if database and database != ":memory:" and not database.startswith("file:"):
        db = Path(database).expanduser()
        db = db if db.is_absolute() else config.folder / db
        files += [("database file", db), ("database -wal file", Path(f"{db}-wal")),
                  ("database -shm file", Path(f"{db}-shm"))]
    files.append(("audit key file", key_path(config.folder,
                                             getattr(config, "audit_key_file", None))))
    files.append(("web secret file", config.folder / SECRET_FILE_NAME))
    return files


def check_file_modes(report: CheckReport, config: Config) -> None:
    """Warn for each private file that group or others may read or write (chmod 600)."""
    for name, path in private_files(config):
        try:
            mode = path.stat().st_mode
        except OSError:
            continue  # not made yet (no -wal between connections, no secret before serving)
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            report.add(name, "warn",
                       f"{path} is open to other users (mode {stat.S_IMODE(mode):o}); "
                       "chmod 600 it")
