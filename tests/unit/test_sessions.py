"""Server-side web sessions: logout revokes, idle and absolute timeouts, no cookie-only login."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from flask import Flask
from flask.sessions import SecureCookieSessionInterface
from sqlalchemy import inspect, select

from connector.accounts import set_active
from connector.schema import users, web_sessions
from tests.webapp_support import Home, csrf_token, logged_in, make_app

COOKIE = "peersync_session"


@pytest.fixture
def app(home: Home) -> Iterator[Flask]:
    from webapp import close_app

    application = make_app(home, SESSION_COOKIE_SECURE=False)
    yield application
    close_app(application)


class Clock:
    """webapp.sessions' clock, moved on by hand."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        import webapp.sessions

        self.now = datetime.now(UTC)
        monkeypatch.setattr(webapp.sessions, "_now", lambda: self.now)

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def _rows(home: Home) -> list[Any]:
    store = home.store()
    try:
        with store.engine.connect() as conn:
            return list(conn.execute(select(web_sessions)).all())
    finally:
        store.close()


def _cookie(client: Any) -> str:
    cookie = client.get_cookie(COOKIE)
    assert cookie is not None
    return str(cookie.value)


def _with_cookie(app: Flask, value: str) -> Any:
    client = app.test_client()
    client.set_cookie(COOKIE, value)
    return client


def _logs_out(client: Any) -> Any:
    return client.post("/logout", data={"csrf_token": csrf_token(client, "/dashboard/")})


def test_a_cookie_copied_before_logout_no_longer_works(app: Flask, home: Home) -> None:
    client = logged_in(app, "admin")
    copied = _cookie(client)
    assert _with_cookie(app, copied).get("/dashboard/").status_code == 200
    assert len(_rows(home)) == 1
    assert _logs_out(client).status_code == 302
    assert _rows(home) == []
    replay = _with_cookie(app, copied).get("/dashboard/")
    assert replay.status_code == 302 and replay.headers["Location"].startswith("/login")


def test_the_cookie_holds_a_token_and_the_store_only_its_digest(app: Flask, home: Home) -> None:
    client = logged_in(app, "alex")
    interface = app.session_interface
    assert isinstance(interface, SecureCookieSessionInterface)
    serializer = interface.get_signing_serializer(app)
    assert serializer is not None
    payload = serializer.loads(_cookie(client))
    assert set(payload) == {"_sid"}  # no user id, no CSRF token in the cookie
    [row] = _rows(home)
    assert row.id == hashlib.sha256(payload["_sid"].encode()).hexdigest()
    assert payload["_sid"] not in row.data and '"_user_id"' in row.data


def test_a_signed_cookie_session_cannot_carry_a_login(app: Flask, home: Home) -> None:
    """Flask's cookie sessions (the code before) logged in whoever held a signed `_user_id`."""
    from connector.accounts import find_user

    store = home.store()
    try:
        admin = find_user(store, "admin")
    finally:
        store.close()
    assert admin is not None
    for salt in ("cookie-session", "peersync-session"):
        interface = SecureCookieSessionInterface()
        interface.salt = salt
        serializer = interface.get_signing_serializer(app)
        assert serializer is not None
        forged = serializer.dumps({"_user_id": admin.session_id, "_fresh": True})
        response = _with_cookie(app, forged).get("/dashboard/")
        assert response.status_code == 302, salt


def test_an_idle_session_ends(app: Flask, home: Home, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock(monkeypatch)
    client = logged_in(app, "admin")
    clock.advance(1000)
    assert client.get("/dashboard/").status_code == 200  # activity keeps it alive
    clock.advance(1000)  # 2000 s after login, 1000 s idle
    assert client.get("/dashboard/").status_code == 200
    clock.advance(1801)
    response = client.get("/dashboard/")
    assert response.status_code == 302 and response.headers["Location"].startswith("/login")
    assert _rows(home) == []


def test_the_idle_timeout_comes_from_the_app_config(
        home: Home, monkeypatch: pytest.MonkeyPatch) -> None:
    from webapp import close_app

    application = make_app(home, SESSION_COOKIE_SECURE=False, PEERSYNC_IDLE_TIMEOUT_S=60)
    try:
        clock = Clock(monkeypatch)
        client = logged_in(application, "admin")
        clock.advance(59)
        assert client.get("/dashboard/").status_code == 200
        clock.advance(61)
        assert client.get("/dashboard/").status_code == 302
    finally:
        close_app(application)


def test_activity_does_not_renew_a_session_past_its_lifetime(
        app: Flask, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock(monkeypatch)
    client = logged_in(app, "admin")
    for _ in range(8 * 3):  # a request every 20 minutes for 8 hours
        clock.advance(20 * 60)
        assert client.get("/dashboard/").status_code == 200
    clock.advance(20 * 60)
    assert client.get("/dashboard/").status_code == 302


def test_disabling_a_user_deletes_its_sessions(app: Flask, home: Home) -> None:
    logged_in(app, "admin")
    logged_in(app, "audrey")
    store = home.store()
    try:
        set_active(store, "audrey", False, actor="test")
        with store.engine.connect() as conn:
            owners = conn.execute(
                select(users.c.name).join(web_sessions, web_sessions.c.user_id == users.c.id)
            ).scalars().all()
    finally:
        store.close()
    assert owners == ["admin"]


def test_anonymous_visits_make_no_rows(app: Flask, home: Home) -> None:
    for _ in range(3):
        assert app.test_client().get("/login").status_code == 200
    assert _rows(home) == []


def test_the_migration_makes_the_table(store: Any) -> None:
    with store.engine.connect() as conn:
        columns = {c["name"] for c in inspect(conn).get_columns("web_sessions")}
    assert columns == {"id", "user_id", "created_at", "last_seen", "data"}
