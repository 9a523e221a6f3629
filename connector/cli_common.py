"""What every CLI command group shares: its errors, exit codes, and the wiring of this deployment.

``peersync`` (connector/cli.py) and its command groups (connector/cli_setup.py,
cli_sync.py, accounts_cli.py, audit_cli.py) all use it, so none imports cli.py.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from connector.errors import ConfigError

if TYPE_CHECKING:
    from connector.fhir_client import FhirClient
    from connector.store import Store
    from connector.wiring import Wiring

EXIT_FAILED = 1
EXIT_CONFIG = 2


class CliError(click.ClickException):
    exit_code = EXIT_CONFIG


def wiring() -> Wiring:
    """This deployment's wiring, loaded once per command."""
    from connector.wiring import Wiring

    ctx = click.get_current_context()
    root = ctx.find_root()
    cached: Wiring | None = root.meta.get("peersync.wiring")
    if cached is None:
        try:
            cached = Wiring.load()
        except ConfigError as exc:
            raise CliError(str(exc)) from None
        root.meta["peersync.wiring"] = cached
    return cached


def open_store() -> Store:
    from connector.store import StoreError

    try:
        store = wiring().store()
    except (ConfigError, StoreError) as exc:
        raise CliError(str(exc)) from None
    click.get_current_context().call_on_close(store.close)
    return store


def open_client() -> FhirClient:
    try:
        return wiring().client()
    except ConfigError as exc:
        raise CliError(str(exc)) from None
