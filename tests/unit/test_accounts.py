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
    add_user,
    find_user,
    login,
    set_password,
    user_for_session,
)
from connector.api_tokens import add_token, check_token
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


# -- throttling under concurrency, per (user, address), progressive -----------------------


def _slow_checks(monkeypatch: pytest.MonkeyPatch, seconds: float = 0.05) -> None:
    """A password check as slow as a production scrypt: the window a racing guess needs."""
    import time

    import connector.accounts

    real = connector.accounts._password_ok

    def slow(password_hash: str, password: str) -> bool:
        time.sleep(seconds)
        return real(password_hash, password)

    monkeypatch.setattr(connector.accounts, "_password_ok", slow)


def _concurrently(calls: list[Any]) -> list[Any]:
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=len(calls)) as pool:
        return list(pool.map(lambda call: call(), calls))


def test_concurrent_guesses_for_one_user_try_at_most_the_limit(
        store: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    add_user(store, "sam", role="admin", password="a-long-password", actor="test")
    _slow_checks(monkeypatch)
    results = _concurrently([
        lambda i=i: login(store, "sam", f"wrong-guess-{i:03d}", address="10.0.0.1",
                          max_failures_per_user=5)
        for i in range(30)
    ])
    tried = [r for r in results if not r.throttled]
    assert len(tried) <= 5
    failed = [e for e in store.audit_events() if e["action"] == "login.failed"]
    assert len(failed) == len(tried)


def test_concurrent_guesses_from_one_address_stay_within_its_limit(
        store: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    _slow_checks(monkeypatch)
    results = _concurrently([
        lambda i=i: login(store, f"user{i}", "wrong-guess-x", address="10.0.0.2",
                          max_failures_per_address=10)
        for i in range(30)
    ])
    assert sum(not r.throttled for r in results) <= 10


def test_guesses_elsewhere_never_lock_the_user_out(store: Any) -> None:
    add_user(store, "sam", role="admin", password="a-long-password", actor="test")
    now = utcnow()
    for i in range(12):
        login(store, "sam", "wrong-guess-x", address="203.0.113.9",
              now=now + timedelta(seconds=i))
    assert login(store, "sam", "a-long-password", address="203.0.113.9",
                 now=now + timedelta(seconds=20)).throttled
    mine = login(store, "sam", "a-long-password", address="10.0.0.1",
                 now=now + timedelta(seconds=21))
    assert mine.user is not None and not mine.throttled


def test_the_delay_grows_with_each_failure_past_the_limit(store: Any) -> None:
    now = utcnow()

    def attempt(at_s: float) -> Any:
        return login(store, "sam", "wrong-guess-x", address="10.0.0.1",
                     max_failures_per_user=3, now=now + timedelta(seconds=at_s))

    for i in range(3):
        assert not attempt(i).throttled
    assert attempt(30).retry_after_s == 32  # 60 s after the last failure (at 2 s)
    assert not attempt(63).throttled  # tried: a 4th failure, now 120 s
    held = attempt(63 + 100)
    assert held.throttled and held.retry_after_s == 20
    assert not attempt(63 + 121).throttled  # tried: a 5th failure, now 240 s
    assert attempt(63 + 121 + 200).throttled


def test_a_success_gives_the_address_its_attempt_back(store: Any) -> None:
    add_user(store, "sam", role="admin", password="a-long-password", actor="test")
    for _ in range(6):
        result = login(store, "sam", "a-long-password", address="10.0.0.1",
                       max_failures_per_address=3)
        assert result.user is not None


def test_known_and_unknown_names_cost_one_password_check_each(
        store: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Before, a known name with an over-long password skipped the hash: 6 ms against 130."""
    import connector.accounts

    add_user(store, "sam", role="admin", password="a-long-password", actor="test")
    checked: list[tuple[str, int]] = []
    real = connector.accounts._password_ok

    def spy(password_hash: str, password: str) -> bool:
        checked.append((password_hash.split("$")[0], len(password)))
        return real(password_hash, password)

    monkeypatch.setattr(connector.accounts, "_password_ok", spy)
    long_guess = "x" * 5000
    for name, password in (("sam", long_guess), ("nobody", long_guess),
                           ("sam", "wrong-guess-x"), ("nobody", "wrong-guess-x"),
                           ("bad name!", "wrong-guess-x")):
        before = len(checked)
        assert login(store, name, password, address=None, max_failures_per_user=99).user is None
        assert len(checked) == before + 1, name
    methods = {method for method, _ in checked}
    assert len(methods) == 1  # the dummy hash is made like the real ones
    assert {size for _, size in checked} == {1024, len("wrong-guess-x")}


# -- password rules -----------------------------------------------------------------------


@pytest.mark.parametrize("password", [
    "Password2024!", "qwerty123456", "iloveyou!!!!", "P@ssw0rd1234", "passwordpassword",
    "aaaaaaaaaaaa", "abcabcabcabc", "ababababab12", "abcdefghijkl", "123456789012",
    "lkjihgfedcba", "qwertyuiopas", "1q2w3e4r5t6y7u",
])
def test_weak_passwords_are_refused(store: Any, password: str) -> None:
    with pytest.raises(AccountError, match="too easy to guess") as caught:
        add_user(store, "sam", role="admin", password=password, actor="test")
    assert password not in str(caught.value)
    add_user(store, "sam", role="admin", password="a-long-password", actor="test")
    with pytest.raises(AccountError, match="too easy to guess"):
        set_password(store, "sam", password, actor="test")


def test_the_commands_apply_the_rules(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    result = _run("user", "add", "sam", "--role", "admin", input="qwerty123456\n")
    assert result.exit_code == 1 and "too easy to guess" in result.output
    assert "qwerty123456" not in result.output
    import connector.accounts_cli

    monkeypatch.setattr(connector.accounts_cli, "_is_terminal", lambda: True)
    typed = "aaaaaaaaaaaa\nsam-password-77\nsam-password-77\n"  # refused, then asked again
    result = _run("user", "add", "sam", "--role", "admin", input=typed)
    assert result.exit_code == 0, result.output
    assert "too easy to guess" in result.output
    assert result.stdout.strip().endswith("user sam created: admin")
