"""Every route in the app's URL map: who may open it, who may not, and CSRF on every form.

The table is the URL map itself, so a new route is covered the day it is
added: it must declare an access rule (webapp.access), anonymous users are
sent to /login (the API and /metrics answer 401), other roles get 403, and a
browser POST without a CSRF token gets 400.
"""

from __future__ import annotations

from typing import Any

import pytest
from flask import Flask

from connector.api_tokens import add_token
from tests.webapp_support import Home, import_examples, job_id, logged_in, make_app
from webapp.access import PUBLIC, Bearer, access_of

ROLES = ("admin", "specialist", "auditor", "supervisor")
SKIP_METHODS = {"HEAD", "OPTIONS"}


@pytest.fixture
def home(home: Home) -> Home:
    import_examples(home, "batch.jsonl")
    return home


def _url(app: Flask, rule: Any, home: Home) -> str:
    samples = {"job_id": job_id(home, "ps-2026-000124"),  # alex's (S-17) own record
               "record_id": "ps-2026-000124", "filename": "style.css", "draft_id": 1}
    with app.test_request_context():
        from flask import url_for

        return url_for(rule.endpoint, **{a: samples[a] for a in rule.arguments})


def _routes(app: Flask) -> list[tuple[Any, str, Any]]:
    out = []
    for rule in app.url_map.iter_rules():
        view = app.view_functions[rule.endpoint]
        for method in sorted((rule.methods or set()) - SKIP_METHODS):
            out.append((rule, method, access_of(view)))
    return out


def test_every_route_declares_who_may_use_it(app: Flask) -> None:
    routes = _routes(app)
    assert len(routes) >= 25
    undeclared = [r.endpoint for r, _, access in routes if access is None]
    assert undeclared == []
    public = sorted({r.endpoint for r, _, access in routes if access == PUBLIC})
    assert public == ["auth.login", "static"]


def test_anonymous_is_sent_to_login_and_the_api_answers_401(app: Flask, home: Home) -> None:
    client = app.test_client()
    checked = 0
    for rule, method, access in _routes(app):
        if access == PUBLIC:
            continue
        url = _url(app, rule, home)
        response = client.open(url, method=method)
        if isinstance(access, Bearer):
            assert response.status_code == 401, (method, url)
            assert response.headers["WWW-Authenticate"].startswith("Bearer")
        else:
            assert response.status_code == 302, (method, url, response.status_code)
            assert response.headers["Location"].startswith("/login?next="), (method, url)
        checked += 1
    assert checked >= 20


def test_wrong_role_gets_403(app: Flask, home: Home) -> None:
    clients = {role: logged_in(app, role) for role in ROLES}
    refused = 0
    for rule, method, access in _routes(app):
        if not isinstance(access, frozenset):
            continue
        url = _url(app, rule, home)
        for role in set(ROLES) - access:
            response = clients[role].open(url, method=method)
            assert response.status_code == 403, (role, method, url, response.status_code)
            refused += 1
    assert refused >= 15


def test_every_browser_post_without_a_csrf_token_is_rejected(app: Flask, home: Home) -> None:
    clients = {role: logged_in(app, role) for role in ROLES}
    posts = 0
    for rule, method, access in _routes(app):
        if method != "POST" or not isinstance(access, frozenset):
            continue
        url = _url(app, rule, home)
        for role in sorted(access):
            response = clients[role].post(url, data={"source": "peer-tool",
                                                     "participant": "P-1"})
            assert response.status_code == 400, (role, url, response.status_code)
            assert "security token" in response.get_data(as_text=True)
        posts += 1
    assert posts >= 8
    # the login form is protected too (login CSRF)
    assert app.test_client().post("/login", data={"name": "admin", "password": "x"}
                                  ).status_code == 400


def test_bearer_routes_refuse_session_cookies_and_the_wrong_kind_of_token(
        app: Flask, home: Home) -> None:
    store = home.store()
    try:
        _, source_token = add_token(store, source="peer-tool", actor="test")
        _, metrics_token = add_token(store, metrics=True, actor="test")
    finally:
        store.close()
    admin = logged_in(app, "admin")
    for rule, method, access in _routes(app):
        if not isinstance(access, Bearer):
            continue
        url = _url(app, rule, home)
        assert admin.open(url, method=method).status_code == 401  # a session is no token
        wrong = metrics_token if access.kind == "source" else source_token
        response = app.test_client().open(url, method=method,
                                          headers={"Authorization": f"Bearer {wrong}"})
        assert response.status_code == 403, (url, method)
        response = app.test_client().open(url, method=method,
                                          headers={"Authorization": "Bearer ps_" + "x" * 43})
        assert response.status_code == 401


def test_an_undeclared_view_is_refused_to_everyone(home: Home) -> None:
    from webapp import close_app

    application = make_app(home)
    application.add_url_rule("/forgotten", "forgotten", lambda: "secret")
    try:
        assert logged_in(application, "admin").get("/forgotten").status_code == 403
        assert application.test_client().get("/forgotten").status_code == 403
    finally:
        close_app(application)


def test_security_headers_on_every_page(app: Flask) -> None:
    client = logged_in(app, "admin")
    for path in ("/login", "/dashboard/", "/static/style.css"):
        response = client.get(path)
        response.close()
        assert response.headers["X-Frame-Options"] == "DENY"
        assert response.headers["Referrer-Policy"] == "no-referrer"
        csp = response.headers["Content-Security-Policy"]
        assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp
        assert "script-src" not in csp  # no script runs at all
