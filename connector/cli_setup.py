"""``peersync init``, ``peersync config check|show`` and ``peersync db upgrade``: setting up
a deployment and checking it. Registered on ``main`` by connector/cli.py."""

from __future__ import annotations

import os
import sys

import click

from connector.audit import KEY_ENV, ensure_key_file
from connector.cli_common import CliError, open_store, wiring
from connector.config import home, load_config, valid_source, write_config
from connector.errors import ConfigError


@click.command("init")
@click.option(
    "--ehr-url",
    default="http://127.0.0.1:8090/fhir",
    show_default=True,
    help="The EHR's FHIR base URL.",
)
@click.option(
    "--database-url",
    default="sqlite:///peersync.db",
    show_default=True,
    help="SQLAlchemy URL (relative SQLite paths are relative to PEERSYNC_HOME).",
)
@click.option(
    "--source",
    "default_source",
    default="peer-tool",
    show_default=True,
    help="Default source name for imports.",
)
@click.option(
    "--profile",
    default="default",
    show_default=True,
    help='Agency profile: "default" or a path to a TOML file.',
)
@click.option(
    "--preset",
    default="generic",
    show_default=True,
    help="What the EHR's write API takes: generic | us-core-notes | epic | oracle-health "
         "(or a path to a preset file); `peersync config check` prints the write plan.",
)
@click.option("--force", is_flag=True, help="Replace an existing peersync.toml.")
def init(ehr_url: str, database_url: str, default_source: str, profile: str, preset: str,
         force: bool) -> None:
    """Write peersync.toml and create the database in $PEERSYNC_HOME (default: here)."""
    folder = home()
    if not valid_source(default_source):
        raise CliError("--source: must be 1-64 characters of A-Z a-z 0-9 . _ -")
    try:
        path = write_config(
            folder,
            base_url=ehr_url,
            database_url=database_url,
            default_source=default_source,
            profile=profile,
            preset=preset,
            overwrite=force,
        )
    except ConfigError as exc:
        raise CliError(str(exc)) from None
    config = load_config(path)
    wiring()
    from connector.store import Store

    store = Store.from_url(config.database_url)
    store.migrate()
    store.close()
    click.echo(f"wrote {path}")
    click.echo(f"database ready: {_safe_url(config.database_url)}")
    key_file = ensure_key_file(folder, config.audit_key_file)
    click.echo(f"audit key: {key_file} (mode 0600; keep a copy away from the database)"
               + (f"; {KEY_ENV} is set and takes precedence" if os.environ.get(KEY_ENV) else ""))


@click.group("config")
def config_group() -> None:
    """Check or show the deployment config."""


@config_group.command("check")
def config_check() -> None:
    """Check the config and profile, the EHR's capabilities, auth, and the agency's
    Organization and Device (matched or created once). Exit 1 when a check fails."""
    from connector.setup_check import check_setup

    wired = wiring()
    store = open_store()
    report = check_setup(wired.config, profile=wired.profile, store=store,
                         client_factory=wired.client, wiring=wired)
    for line in report.lines():
        click.echo(line)
    sys.exit(report.exit_code)


@config_group.command("show")
def config_show() -> None:
    """Print the effective config (environment overrides applied; secrets never shown)."""
    from connector.setup_check import render_config

    click.echo(render_config(wiring().config))


@click.group("db")
def db() -> None:
    """Database maintenance."""


@db.command("upgrade")
def db_upgrade() -> None:
    """Apply pending schema migrations."""
    config = wiring().config
    from connector.store import Store

    store = Store.from_url(config.database_url)
    try:
        store.migrate()
    finally:
        store.close()
    click.echo("database schema is up to date")


def _safe_url(url: str) -> str:
    """A database URL without its password, for printing."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - printing only
        return "(database URL)"
