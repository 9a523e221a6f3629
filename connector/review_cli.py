"""`peersync review ...`: what waits for a supervisor's co-signature; co-sign or return it.

``RECORD_ID`` is looked up in every source unless ``--source`` names one (exit 2
when it waits in several, naming them); the command acts on the record's oldest
version waiting for review. ``--by`` names the supervisor account that signs:
its password is asked for (a terminal prompt, else standard input's first line,
as ``peersync user add`` reads one). Exit codes: 0 done; 1 refused (wrong
password, not this supervisor's specialist, the supervisor's own note, a
disabled account); 2 usage, not found, or ambiguous.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import click

from connector.cli_common import EXIT_FAILED, CliError

if TYPE_CHECKING:
    from connector.accounts import User
    from connector.store import Store
    from connector.store.review import Waiting


class Refused(click.ClickException):
    exit_code = EXIT_FAILED


def _store() -> Store:
    from connector.cli_common import open_store

    return open_store()


@click.group("review")
def review_group() -> None:
    """Supervisor review ([review] policy = "cosign"): list, co-sign (approve) or return."""


def _row(item: Waiting) -> dict[str, Any]:
    return {"source": item.source, "record_id": item.record_id, "job_id": item.job_id,
            "record_version_id": item.record_version_id, "specialist_id": item.specialist_id,
            "note_version": item.note_version, "start": item.start_at.isoformat(),
            "received_at": item.received_at.isoformat()}


@review_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="One JSON object: {\"waiting\": [...]}.")
@click.option("--source", help="Only this source's records (default: every source).")
def review_list(as_json: bool, source: str | None) -> None:
    """The note versions waiting for review, oldest first (ids and codes, no PHI)."""
    rows = [_row(item) for item in _store().review_queue(source=source, limit=10_000)]
    if as_json:
        click.echo(json.dumps({"waiting": rows}, indent=2))
        return
    if not rows:
        click.echo("nothing waits for review")
        return
    for row in rows:
        click.echo(f"{row['source']:<16} {row['record_id']:<24} v{row['note_version'] or '-':<4}"
                   f" {row['specialist_id']:<12} {row['start'][:16]}  (job {row['job_id']})")
    click.echo(f"{len(rows)} waiting for review")


def _waiting(store: Store, record_id: str, source: str | None) -> Waiting:
    """The record's oldest version waiting for review; CliError (2) if none or ambiguous."""
    items = store.review_queue(source=source, record_id=record_id, limit=1000)
    sources = sorted({item.source for item in items})
    if not items:
        where = f" in source {source}" if source else ""
        raise CliError(f"no version of record {record_id}{where} is waiting for review")
    if len(sources) > 1:
        raise CliError(f"record {record_id} waits for review in several sources "
                       f"({', '.join(sources)}): give --source")
    return items[0]


def _supervisor(store: Store, name: str, item: Waiting, what: str) -> User:
    """The --by account, once its password is given right; Refused (1) otherwise (audited)."""
    from connector.accounts import find_user, normalise_name, password_matches, web_actor
    from connector.accounts_cli import _read_password

    user = find_user(store, name)
    if not password_matches(user, _read_password(new=False)):
        shown = web_actor(normalise_name(name)).removeprefix("web:")  # "?" for no valid name
        store.review_refused(item.record_version_id, shown, what=what, code="bad-password")
        raise Refused(f"{what} refused: wrong user name or password")
    assert user is not None
    return user


def _decide(record_id: str, by: str, source: str | None, what: str,
            comment: str | None = None) -> tuple[Waiting, Any]:
    from connector.review import ReviewRefused

    store = _store()
    item = _waiting(store, record_id, source)
    user = _supervisor(store, by, item, what)
    try:
        if comment is None:
            return item, store.approve(item.record_version_id, user)
        store.return_note(item.record_version_id, user, comment=comment)
        return item, None
    except ReviewRefused as exc:
        raise Refused(f"{what} refused: {exc}") from None


@review_group.command("approve")
@click.argument("record_id")
@click.option("--by", required=True, help="The supervisor account that co-signs.")
@click.option("--source", help="The record's source (default: looked up in every source).")
def review_approve(record_id: str, by: str, source: str | None) -> None:
    """Co-sign RECORD_ID's oldest version waiting: it goes to the EHR at the next sync."""
    item, signature = _decide(record_id, by, source, "approve")
    click.echo(f"{item.source}/{item.record_id} (job {item.job_id}) co-signed by "
               f"{signature.staff_id} at {signature.at.isoformat(timespec='seconds')}: pending")


@review_group.command("return")
@click.argument("record_id")
@click.option("--by", required=True, help="The supervisor account that returns it.")
@click.option("--comment", required=True, help="What the specialist should change.")
@click.option("--source", help="The record's source (default: looked up in every source).")
def review_return(record_id: str, by: str, comment: str, source: str | None) -> None:
    """Return RECORD_ID's oldest version waiting to its author, with a comment: never sent."""
    if not comment.strip():
        raise CliError("--comment must not be empty: say what the specialist should change")
    item, _ = _decide(record_id, by, source, "return", comment)
    click.echo(f"{item.source}/{item.record_id} (job {item.job_id}) returned to "
               f"{item.specialist_id}")
