"""`peersync user ...` and `peersync token ...`: the web app's accounts and the API's tokens.

A password is prompted for on a terminal (twice); otherwise it is the first
line of standard input, so scripts can pipe it in. A token is printed once,
alone on the last line of standard output.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import click

from connector.accounts import ROLES, AccountError

if TYPE_CHECKING:
    from connector.store import Store


def _store() -> Store:
    from connector.cli_common import open_store

    return open_store()


def _is_terminal() -> bool:
    return sys.stdin is not None and sys.stdin.isatty()


def _checked(password: str) -> str:
    """The password rules at the prompt: a refused password is asked for again."""
    from connector.accounts import check_password_rules

    try:
        check_password_rules(password)
    except AccountError as exc:
        raise click.BadParameter(str(exc)) from None
    return password


def _read_password(*, new: bool = True) -> str:
    """The password: prompted (a new one twice, asked again until the rules accept it;
    an existing one once, ``new=False``) or standard input's first line."""
    if _is_terminal():
        password: str = click.prompt("Password", hide_input=True, confirmation_prompt=new,
                                     err=True, value_proc=_checked if new else None)
        return password
    line = sys.stdin.readline() if sys.stdin is not None else ""
    password = line.rstrip("\r\n")
    if not password:
        raise click.ClickException("no password: type it at the prompt or give it as the "
                                   "first line of standard input")
    return password


@click.group("user")
def user_group() -> None:
    """Web app users: admins, specialists, supervisors and auditors."""


@user_group.command("add")
@click.argument("name")
@click.option("--role", required=True, type=click.Choice(ROLES),
              help="admin: everything; specialist: documents as its staff id and sees its own "
                   "records; auditor: reads dashboards and the audit log (ids and codes only); "
                   "supervisor: co-signs or returns its specialists' notes, documents its own.")
@click.option("--specialist-id", help="The staff id a specialist or supervisor account "
              "documents as.")
@click.option("--supervises", metavar="S-17,S-22",
              help="A supervisor's specialists (staff ids, comma-separated); default: all.")
def user_add(name: str, role: str, specialist_id: str | None, supervises: str | None) -> None:
    """Create a user; the password is prompted for (or read from standard input)."""
    from connector.accounts import add_user

    store = _store()
    password = _read_password()
    staff = [s.strip() for s in (supervises or "").split(",") if s.strip()]
    try:
        user = add_user(store, name, role=role, password=password, specialist_id=specialist_id,
                        supervises=staff, actor="cli:user")
    except AccountError as exc:
        raise click.ClickException(str(exc)) from None
    tied = f" (staff id {user.specialist_id})" if user.specialist_id else ""
    if user.role == "supervisor":
        tied += f", supervises {', '.join(staff) or 'all specialists'}"
    click.echo(f"user {user.name} created: {user.role}{tied}")


@user_group.command("passwd")
@click.argument("name")
def user_passwd(name: str) -> None:
    """Set a user's password (its open sessions end)."""
    from connector.accounts import set_password

    store = _store()
    try:
        set_password(store, name, _read_password(), actor="cli:user")
    except AccountError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"password of {name.lower()} changed")


@user_group.command("disable")
@click.argument("name")
@click.option("--enable", is_flag=True, help="Enable the user again instead.")
def user_disable(name: str, enable: bool) -> None:
    """Disable a user (its sessions end at once); --enable undoes it."""
    from connector.accounts import set_active

    try:
        set_active(_store(), name, enable, actor="cli:user")
    except AccountError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"user {name.lower()} {'enabled' if enable else 'disabled'}")


@user_group.command("list")
def user_list() -> None:
    """List users (name, role, staff id, a supervisor's specialists, active)."""
    from connector.accounts import list_users

    store = _store()
    for user in list_users(store):
        state = "" if user.active else "  (disabled)"
        if user.role == "supervisor":
            state = f"  supervises {', '.join(store.supervised(user.id)) or 'all'}{state}"
        click.echo(f"{user.name:<24} {user.role:<11} {user.specialist_id or '-'}{state}")


@click.group("token")
def token_group() -> None:
    """Bearer tokens for the JSON API (one per source) and for /metrics."""


@token_group.command("add")
@click.argument("source", required=False)
@click.option("--metrics", is_flag=True, help="A token for /metrics instead of a source.")
def token_add(source: str | None, metrics: bool) -> None:
    """Make a token for SOURCE (the records' source) or --metrics; it is printed once."""
    from connector.api_tokens import add_token

    if bool(source) == metrics:
        raise click.UsageError("give a SOURCE or --metrics (not both)")
    try:
        token, text = add_token(_store(), source=source, metrics=metrics, actor="cli:token")
    except AccountError as exc:
        raise click.ClickException(str(exc)) from None
    what = "/metrics" if metrics else f"source {source}"
    click.echo(f"token {token.id} for {what}; it is shown once, keep it now "
               "(send it as `Authorization: Bearer <token>`):")
    click.echo(text)


@token_group.command("list")
def token_list() -> None:
    """List tokens (id, kind, source, prefix, revoked), never the tokens themselves."""
    from connector.api_tokens import list_tokens

    for token in list_tokens(_store()):
        revoked = f"  revoked {token.revoked_at:%Y-%m-%d}" if token.revoked_at else ""
        click.echo(f"{token.id:>4}  {token.kind:<8} {token.source or '-':<24} "
                   f"{token.prefix}...{revoked}")


@token_group.command("revoke")
@click.argument("token_id", type=int)
def token_revoke(token_id: int) -> None:
    """Revoke a token by id (as `peersync token list` shows)."""
    from connector.api_tokens import revoke_token

    if not revoke_token(_store(), token_id, actor="cli:token"):
        raise click.ClickException(f"no live token with id {token_id}")
    click.echo(f"token {token_id} revoked")
