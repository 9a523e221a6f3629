"""Logging in: sessions, throttling, safe redirects, cookie flags, and the audit trail."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from flask import Flask

from connector.accounts import set_active, set_password
from connector.reports import AuditQuery, audit_page
from tests.webapp_support import (
    PASSWORDS,
    Home,
    csrf_token,
    log_in,
    logged_in,
    make_app,
)


@pytest.fixture
def app(home: Home) -> Iterator[Flask]:
    from webapp import close_app

    application = make_app(home, LOGIN_MAX_FAILURES=3, LOGIN_MAX_FAILURES_PER_ADDRESS=6)
    yield application
    close_app(application)


def _events(home: Home, action: str) -> list[dict]:  # type: ignore[type-arg]
    store = home.store()
    try:
        return audit_page(store, AuditQuery(outcome=action))
    finally:
        store.close()


def test_login_page_and_a_good_login(app: Flask, home: Home) -> None:
    client = app.test_client()
    page = client.get("/login")
    assert page.status_code == 200 and 'name="password"' in page.get_data(as_text=True)
    response = log_in(client, "ADMIN", PASSWORDS["admin"])  # names are case-insensitive
    assert response.status_code == 302 and response.headers["Location"] == "/dashboard/"
    assert client.get("/dashboard/").status_code == 200
    cookie = response.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie
    assert ("Secure" in cookie) == bool(app.config["SESSION_COOKIE_SECURE"])
    [event] = _events(home, "login.ok")
    assert event["actor"] == "web:admin" and event["detail"]["role"] == "admin"


def test_specialist_lands_on_the_form(app: Flask) -> None:
    response = log_in(app.test_client(), "alex")
    assert response.headers["Location"] == "/document/"


def test_wrong_password_is_refused_and_audited_without_the_password(
        app: Flask, home: Home) -> None:
    client = app.test_client()
    response = log_in(client, "admin", "not-the-password")
    assert response.status_code == 401
    assert "Wrong user name or password" in response.get_data(as_text=True)
    assert client.get("/dashboard/").status_code == 302
    log_in(client, "nobody", "whatever-it-is")
    failed = _events(home, "login.failed")
    assert {e["detail"]["reason"] for e in failed} == {"bad-password", "unknown-user"}
    assert all("not-the-password" not in str(e) and "whatever" not in str(e) for e in failed)


def test_logins_are_throttled_per_user(app: Flask, home: Home) -> None:
    client = app.test_client()
    for _ in range(3):
        assert log_in(client, "admin", "wrong-password-x").status_code == 401
    response = log_in(client, "admin")  # the right password, but too late
    assert response.status_code == 429
    assert int(response.headers["Retry-After"]) > 0
    assert "Too many failed attempts" in response.get_data(as_text=True)
    assert _events(home, "login.throttled")
    # another user from the same address is not locked out yet
    assert log_in(app.test_client(), "audrey").status_code == 302


def test_logins_are_throttled_per_address(app: Flask) -> None:
    for name in ("u1", "u2", "u3", "u4", "u5", "u6"):
        log_in(app.test_client(), name, "wrong-password-x")
    assert log_in(app.test_client(), "audrey").status_code == 429


def test_no_open_redirect_after_login(app: Flask) -> None:
    for target in ("https://evil.example/", "//evil.example/x", "/\\evil.example",
                   "javascript:alert(1)", "http:/evil"):
        client = app.test_client()
        token = csrf_token(client)
        response = client.post("/login", data={
            "name": "admin", "password": PASSWORDS["admin"], "csrf_token": token,
            "next": target})
        assert response.status_code == 302
        assert response.headers["Location"] == "/dashboard/", target
    client = app.test_client()
    token = csrf_token(client, "/login?next=/records/?state=synced")
    response = client.post("/login", data={
        "name": "admin", "password": PASSWORDS["admin"], "csrf_token": token,
        "next": "/records/?state=synced"})
    assert response.headers["Location"] == "/records/?state=synced"


def test_anonymous_is_sent_to_login_with_next(app: Flask) -> None:
    response = app.test_client().get("/records/?state=synced")
    assert response.status_code == 302
    assert response.headers["Location"].startswith("/login?next=")


def test_logout_needs_a_post_with_the_token(app: Flask) -> None:
    client = logged_in(app, "admin")
    assert client.get("/logout").status_code == 405
    assert client.post("/logout").status_code == 400
    token = csrf_token(client, "/dashboard/")
    response = client.post("/logout", data={"csrf_token": token})
    assert response.status_code == 302
    assert client.get("/dashboard/").status_code == 302


def test_a_new_password_or_a_disabled_account_ends_sessions(app: Flask, home: Home) -> None:
    client = logged_in(app, "admin")
    other = logged_in(app, "audrey")
    store = home.store()
    try:
        set_password(store, "admin", "a-brand-new-password", actor="test")
        set_active(store, "audrey", False, actor="test")
    finally:
        store.close()
    assert client.get("/dashboard/").status_code == 302
    assert other.get("/dashboard/").status_code == 302
    assert log_in(app.test_client(), "audrey").status_code == 401
    assert log_in(app.test_client(), "admin", "a-brand-new-password").status_code == 302


def test_secure_cookie_flag_when_configured(home: Home) -> None:
    from webapp import close_app

    application = make_app(home, SESSION_COOKIE_SECURE=True)
    try:
        client = application.test_client()
        token = csrf_token(client)
        response = client.post("/login", base_url="https://localhost", data={
            "name": "admin", "password": PASSWORDS["admin"], "csrf_token": token})
        assert "Secure" in response.headers.get("Set-Cookie", "")
        assert "Strict-Transport-Security" in response.headers
    finally:
        close_app(application)


def test_the_session_key_survives_a_restart(home: Home, monkeypatch: pytest.MonkeyPatch) -> None:
    from webapp import SECRET_FILE, close_app, create_app

    first = create_app({"PEERSYNC_CONFIG": str(home.config)})
    second = create_app({"PEERSYNC_CONFIG": str(home.config)})
    try:
        assert first.config["SECRET_KEY"] == second.config["SECRET_KEY"]
        secret = home.path / SECRET_FILE
        assert secret.stat().st_mode & 0o777 == 0o600
        monkeypatch.setenv("PEERSYNC_SECRET_KEY", "from-the-environment")
        assert create_app({"PEERSYNC_CONFIG": str(home.config)}).config[
            "SECRET_KEY"] == "from-the-environment"
    finally:
        close_app(first)
        close_app(second)
