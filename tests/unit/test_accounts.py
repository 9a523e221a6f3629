"""Accounts: users, tokens and login throttling (SQLite and PostgreSQL), and their commands."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from connector.accounts import (
    AccountError,
    add_token,
    add_user,
    check_token,
    find_user,
    login,
    user_for_session,
)
from connector.cli import main
from connector.schema import api_tokens, users
from connector.store import utcnow
from tests.webapp_support import cheap_hashes


@pytest.fixture(autouse=True)
def _cheap(monkeypatch: pytest.MonkeyPatch) -> None:
    cheap_hashes(monkeypatch)


def test_users_are_stored_with_a_password_hash(store: Any) -> None:
    user = add_user(store, "Alex", role="specialist", specialist_id="S-17",
                    password="a-long-password", actor="test")
    assert user.name == "alex" and user.specialist_id == "S-17"
    with store.engine.connect() as conn:
        stored = conn.execute(select(users.c.password_hash)).scalar_one()
    assert stored.startswith("scrypt:") and "a-long-password" not in stored
    assert login(store, "ALEX", "a-long-password", address="10.0.0.1").user == user
    assert login(store, "alex", "wrong-password!", address="10.0.0.1").user is None
    assert user_for_session(store, user.session_id) == user
    assert user_for_session(store, f"{user.id}.0000") is None
    assert user_for_session(store, "x") is None


@pytest.mark.parametrize(("args", "message"), [
    ({"name": "bad name", "role": "admin"}, "user name"),
    ({"name": "x", "role": "root"}, "role"),
    ({"name": "x", "role": "specialist"}, "specialist-id"),
    ({"name": "x", "role": "auditor", "specialist_id": "S-1"}, "only a specialist"),
    ({"name": "x", "role": "admin", "password": "short"}, "at least 12"),
])
def test_bad_users_are_refused(store: Any, args: dict[str, Any], message: str) -> None:
    args.setdefault("password", "a-long-password")
    with pytest.raises(AccountError, match=message):
        add_user(store, actor="test", **args)


def test_a_name_is_taken_once(store: Any) -> None:
    add_user(store, "sam", role="admin", password="a-long-password", actor="test")
    with pytest.raises(AccountError, match="already exists"):
        add_user(store, "SAM", role="auditor", password="a-long-password", actor="test")


def test_throttling_window(store: Any) -> None:
    add_user(store, "sam", role="admin", password="a-long-password", actor="test")
    now = utcnow()
    for i in range(3):
        result = login(store, "sam", "nope-nope-nope", address="1.2.3.4",
                       max_failures_per_user=3, now=now + timedelta(seconds=i))
        assert not result.throttled
    blocked = login(store, "sam", "a-long-password", address="1.2.3.4",
                    max_failures_per_user=3, now=now + timedelta(seconds=10))
    assert blocked.throttled and blocked.user is None and 0 < blocked.retry_after_s <= 900
    later = login(store, "sam", "a-long-password", address="1.2.3.4",
                  max_failures_per_user=3, now=now + timedelta(minutes=16))
    assert later.user is not None
    actions = [e["action"] for e in store.audit_events() if e["action"].startswith("login.")]
    assert actions == ["login.failed"] * 3 + ["login.throttled", "login.ok"]
    assert all("a-long-password" not in json.dumps(e["detail"]) for e in store.audit_events())


def test_tokens_are_stored_hashed(store: Any) -> None:
    token, text = add_token(store, source="tool-a", actor="test")
    assert text.startswith("ps_") and len(text) == 46
    with store.engine.connect() as conn:
        row = conn.execute(select(api_tokens)).one()
    assert text not in (row.token_hash, row.prefix) and len(row.token_hash) == 64
    found = check_token(store, text)
    assert found is not None and found.source == "tool-a" and found.kind == "source"
    assert check_token(store, text[:-1] + ("A" if text[-1] != "A" else "B")) is None
    assert check_token(store, "not a token") is None
    with pytest.raises(AccountError):
        add_token(store, source="bad source!", actor="test")
    with pytest.raises(AccountError):
        add_token(store, actor="test")
    events = [e for e in store.audit_events() if e["action"] == "token.created"]
    assert events[0]["detail"]["prefix"] == token.prefix
    assert text not in json.dumps(events, default=str)


# -- the commands -----------------------------------------------------------------------


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("PEERSYNC_HOME", str(tmp_path))
    for name in ("PEERSYNC_EHR_URL", "PEERSYNC_DATABASE_URL", "PEERSYNC_AUDIT_KEY"):
        monkeypatch.delenv(name, raising=False)
    assert CliRunner().invoke(main, ["init"]).exit_code == 0
    return tmp_path


def _run(*args: str, input: str | None = None) -> Any:
    return CliRunner().invoke(main, list(args), input=input, catch_exceptions=False)


def test_user_add_reads_the_password_from_standard_input(home: Path) -> None:
    result = _run("user", "add", "alex", "--role", "specialist", "--specialist-id", "S-17",
                  input="alex-password-17\nignored\n")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "user alex created: specialist (staff id S-17)"
    result = _run("user", "add", "dana", "--role", "admin", input="")
    assert result.exit_code == 1 and "no password" in result.output
    result = _run("user", "add", "dana", "--role", "specialist", input="a-long-password\n")
    assert result.exit_code == 1 and "--specialist-id" in result.output
    assert _run("user", "add", "dana", "--role", "boss", input="x\n").exit_code == 2
    listing = _run("user", "list").stdout
    assert "alex" in listing and "S-17" in listing and "dana" not in listing


def test_user_passwd_and_disable(home: Path) -> None:
    _run("user", "add", "sam", "--role", "admin", input="first-password-1\n")
    assert _run("user", "passwd", "sam", input="second-password-2\n").exit_code == 0
    assert _run("user", "disable", "sam").exit_code == 0
    assert "(disabled)" in _run("user", "list").stdout
    assert _run("user", "disable", "nobody").exit_code == 1


def test_token_add_prints_the_token_alone_on_the_last_line(home: Path) -> None:
    from connector.config import load_config
    from connector.store import Store

    result = _run("token", "add", "tool-a")
    assert result.exit_code == 0
    token = result.stdout.splitlines()[-1]
    assert token.startswith("ps_") and " " not in token
    metrics = _run("token", "add", "--metrics").stdout.splitlines()[-1]
    assert metrics.startswith("ps_") and metrics != token
    assert _run("token", "add").exit_code == 2
    assert _run("token", "add", "tool-a", "--metrics").exit_code == 2
    listing = _run("token", "list").stdout
    assert "tool-a" in listing and "metrics" in listing and token not in listing
    store = Store.from_url(load_config(home / "peersync.toml").database_url)
    try:
        assert check_token(store, token) is not None
        assert find_user(store, "nobody") is None
    finally:
        store.close()
    assert _run("token", "revoke", "1").exit_code == 0
    assert _run("token", "revoke", "1").exit_code == 1
    assert "revoked" in _run("token", "list").stdout
