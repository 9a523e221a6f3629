"""`peersync audit`: export the log, anchor its head, verify the chain, create the key.

The chain itself is connector.audit, which imports neither this module nor the
store; this module may import both.
"""

from __future__ import annotations

import json
import os
import re
import sys
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import click

from connector.audit import (
    KEY_ENV,
    RowFilter,
    ensure_key_file,
    export,
    head_problem,
    key_path,
    load_anchor,
    load_audit_key,
    verify,
    write_anchor,
)
from connector.audit import anchor as take_anchor
from connector.cli_common import EXIT_FAILED, CliError
from connector.errors import ConfigError

if TYPE_CHECKING:
    from sqlalchemy import Engine

NO_ANCHOR_NOTE = ("note: without --anchor, a cut-off tail (the last rows removed and the chain "
                  "head moved back) cannot be detected; verify against an anchor from "
                  "`peersync audit anchor` or `peersync audit export` kept away from the database")


def parse_time(text: str) -> datetime:
    """ISO 8601 date or date-time; a date means its midnight UTC, a bare time is UTC."""
    value = text.strip()
    try:
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
            parsed = datetime.combine(date.fromisoformat(value), datetime.min.time())
        else:
            parsed = datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter("expected an ISO 8601 date or date-time, e.g. 2026-01-31 "
                                 "or 2026-01-31T08:00:00Z") from None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)



def _config() -> Any:
    from connector.config import load_config

    try:
        return load_config()
    except ConfigError as exc:
        raise CliError(str(exc)) from None


def _engine(config: Any) -> Engine:
    """The database's engine (no audit key needed to read the log)."""
    from sqlalchemy.exc import SQLAlchemyError

    from connector.store import Store, StoreError

    store = Store.from_url(config.database_url)
    click.get_current_context().call_on_close(store.close)
    try:
        store.check_schema()
    except StoreError as exc:
        raise CliError(str(exc)) from None
    try:
        head_problem(store.engine)  # reads the chain head: is there a chain at all?
    except SQLAlchemyError:
        raise CliError("the database has no audit chain yet: run `peersync db upgrade`") from None
    return store.engine


def _time_option(value: str | None) -> datetime | None:
    return parse_time(value) if value else None


@click.group("audit")
def audit_group() -> None:
    """The tamper-evident audit log: export it, anchor it, verify it."""


@audit_group.command("export")
@click.option("--since", "since_text", required=True, metavar="ISO8601|YYYY-MM-DD",
              help="Rows at or after this time (a date means its midnight UTC).")
@click.option("--until", "until_text", metavar="ISO8601|YYYY-MM-DD",
              help="Rows before this time (a date means its midnight UTC).")
@click.option("--actor", help="An actor, or a prefix ending in * or : (e.g. web:).")
@click.option("--record", "record_id", metavar="ID", help="One record's rows.")
@click.option("--outcome", metavar="STATE|ACTION",
              help="Rows reaching this state, or of this action (e.g. login.failed).")
@click.option("--format", "fmt", type=click.Choice(["csv", "json"]), default="csv",
              show_default=True)
@click.option("--output", default="-", metavar="FILE|-", show_default=True,
              help="Where the rows go (-: standard output).")
@click.option("--anchor", "anchor_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Where the anchor goes (default: <output>.anchor.json; with -, stderr).")
def export_command(since_text: str, until_text: str | None, actor: str | None,
                   record_id: str | None, outcome: str | None, fmt: str, output: str,
                   anchor_path: Path | None) -> None:
    """Export audit rows and write an anchor (the chain's last seq and MAC) beside them.

    The filters are the audit page's. CSV cells starting with = + - @ ' or a
    tab or carriage return get a leading ' (drop it to check a row's MAC).
    Keep the anchor away from the database: `peersync audit verify --anchor FILE`
    then proves that no row up to it was edited, removed or cut off.
    """
    since = parse_time(since_text)
    where = RowFilter(until=_time_option(until_text), actor=actor or None,
                      record_id=record_id or None, outcome=outcome or None)
    engine = _engine(_config())
    kind: Literal["csv", "json"] = "json" if fmt == "json" else "csv"
    if output == "-":
        anchor = export(engine, sys.stdout, since=since, where=where, fmt=kind)
    else:
        with open(output, "w", encoding="utf-8", newline="") as out:
            anchor = export(engine, out, since=since, where=where, fmt=kind)
        anchor_path = anchor_path or Path(output + ".anchor.json")
    if anchor_path is None:
        click.echo("anchor: " + json.dumps(anchor, sort_keys=True), err=True)
    else:
        write_anchor(anchor, anchor_path)
        click.echo(f"{anchor['rows']} row(s) exported; anchor (seq {anchor['last_seq']}) "
                   f"written to {anchor_path}", err=True)


@audit_group.command("anchor")
@click.option("--output", default="-", metavar="FILE|-", show_default=True,
              help="Where the anchor goes (-: standard output).")
def anchor_command(output: str) -> None:
    """Write the chain head as an anchor: last seq, its MAC, the row count, the time.

    Ship the file somewhere the database's users cannot write (another host, a
    ticket, a mail): `peersync audit verify --anchor FILE` then catches a tail
    cut off and the head moved back. Exit 1 if the head disagrees with the log.
    """
    engine = _engine(_config())
    problem = head_problem(engine)
    if problem:
        click.echo(f"not anchored: {problem}", err=True)
        sys.exit(EXIT_FAILED)
    anchor = take_anchor(engine)
    if output == "-":
        click.echo(json.dumps(anchor, indent=2, sort_keys=True))
        return
    write_anchor(anchor, Path(output))
    click.echo(f"anchor (seq {anchor['last_seq']}, {anchor['count']} row(s)) written to "
               f"{output}", err=True)


@audit_group.command("verify")
@click.option("--anchor", "anchor_path", type=click.Path(dir_okay=False, path_type=Path),
              help="An anchor from `peersync audit anchor` or `export` (catches a cut-off tail).")
def verify_command(anchor_path: Path | None) -> None:
    """Check every row's MAC, the sequence and the chain head. Exit 1 on any problem.

    A chain checked with the public development key (no audit key configured),
    or holding rows keyed with it, proves nothing and fails.
    """
    config = _config()
    try:
        key = load_audit_key(config.folder, config.audit_key_file, os.environ)
        anchor = load_anchor(anchor_path) if anchor_path else None
    except ConfigError as exc:
        raise CliError(str(exc)) from None
    result = verify(_engine(config), key, anchor=anchor)
    for line in result.warnings:
        click.echo(f"warning: {line}", err=True)
    if result.ok:
        click.echo(f"audit log intact: {result.rows} row(s), last seq {result.last_seq}"
                   + (f", anchor seq {anchor['last_seq']} found" if anchor else ""))
    else:
        click.echo(f"audit log NOT intact: {len(result.problems)} problem(s) in {result.rows} "
                   "row(s)")
        for line in result.problems:
            click.echo(f"  {line}")
    if anchor is None:
        click.echo(NO_ANCHOR_NOTE, err=True)
    if not result.ok:
        sys.exit(EXIT_FAILED)


@audit_group.command("init-key")
def init_key_command() -> None:
    """Create the audit key file (mode 0600) if it is missing; never replaces one."""
    config = _config()
    path = key_path(config.folder, config.audit_key_file)
    existed = path.exists()
    ensure_key_file(config.folder, config.audit_key_file)
    click.echo(f"audit key {'already at' if existed else 'written to'} {path} "
               "(keep a copy away from the database)")
    if os.environ.get(KEY_ENV):
        click.echo(f"note: {KEY_ENV} is set and takes precedence over the file", err=True)
