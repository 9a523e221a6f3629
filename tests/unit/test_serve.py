"""`peersync serve` (gunicorn): option rules, gunicorn settings, [web], cookies, proxies, HSTS."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from flask import Flask

import connector.serve
from connector.cli import main
from connector.config import WebConfig, load_config, parse_web
from connector.errors import ConfigError
from tests.webapp_support import PASSWORDS, Home, csrf_token, make_app


@pytest.fixture
def started(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, Any]]:
    """Calls of connector.serve.run (no server is started)."""
    calls: list[tuple[Any, Any]] = []
    monkeypatch.setattr(connector.serve, "run", lambda config, options: calls.append(
        (config, options)))
    return calls


def _serve(*args: str) -> Any:
    return CliRunner().invoke(main, ["serve", *args])


def _add_to_config(home: Home, text: str) -> None:
    with home.config.open("a", encoding="utf-8") as out:
        out.write(text)


def _drop_web_table(home: Home) -> None:
    text = home.config.read_text(encoding="utf-8")
    start = text.index("[web]")
    home.config.write_text(text[:start], encoding="utf-8")


# -- the command line --------------------------------------------------------------------------


def test_behind_proxy_with_insecure_http_exits_2(home: Home,
                                                  started: list[tuple[Any, Any]]) -> None:
    result = _serve("--behind-proxy", "--insecure-http")
    assert result.exit_code == 2
    assert "exclude each other" in result.output
    assert started == []


def test_insecure_http_with_trusted_proxies_in_the_config_exits_2(
        home: Home, started: list[tuple[Any, Any]]) -> None:
    _drop_web_table(home)
    _add_to_config(home, "\n[web]\ntrusted_proxies = 2\n")
    result = _serve("--insecure-http")
    assert result.exit_code == 2 and "trusted_proxies = 2" in result.output
    assert started == []


def test_insecure_http_only_on_loopback(home: Home, started: list[tuple[Any, Any]]) -> None:
    result = _serve("--insecure-http", "--host", "0.0.0.0")
    assert result.exit_code == 2 and "loopback" in result.output
    assert started == []
    assert _serve("--insecure-http", "--host", "::1").exit_code == 0


def test_workers_out_of_range_exits_2(home: Home, started: list[tuple[Any, Any]]) -> None:
    assert _serve("--workers", "0").exit_code == 2
    assert started == []


def test_defaults_are_secure_cookies_no_proxy_two_workers(
        home: Home, started: list[tuple[Any, Any]]) -> None:
    result = _serve()
    assert result.exit_code == 0, result.output
    [(config, options)] = started
    assert (options.host, options.port, options.workers) == ("127.0.0.1", 8080, 2)
    assert options.trusted_proxies == 0 and options.insecure_http is False
    assert config.path == home.config.resolve()


def test_behind_proxy_means_one_trusted_hop(home: Home, started: list[tuple[Any, Any]]) -> None:
    result = _serve("--behind-proxy", "--workers", "3", "--host", "::1", "--port", "9000")
    assert result.exit_code == 0, result.output
    [(_, options)] = started
    assert options.trusted_proxies == 1 and options.workers == 3
    assert (options.host, options.port) == ("::1", 9000)


def test_web_table_gives_trusted_proxies_and_workers(home: Home,
                                                     started: list[tuple[Any, Any]]) -> None:
    _drop_web_table(home)
    _add_to_config(home, "\n[web]\ntrusted_proxies = 2\nworkers = 5\nidle_timeout_s = 600\n")
    assert _serve().exit_code == 0
    assert _serve("--workers", "1").exit_code == 0
    (config, first), (_, second) = started
    assert (first.trusted_proxies, first.workers) == (2, 5)
    assert second.workers == 1  # the command line wins
    assert config.web.idle_timeout_s == 600.0


# -- what gunicorn and the app are given -------------------------------------------------------


def _cfg(home: Home, **options: Any) -> tuple[Any, Any]:
    config = load_config(home.config)
    opts = connector.serve.ServeOptions(**options)
    return config, connector.serve.application(config, opts)


def test_gunicorn_settings(home: Home) -> None:
    config, app = _cfg(home, port=8123, workers=3, trusted_proxies=1)
    cfg = app.cfg
    assert cfg.bind == ["127.0.0.1:8123"]
    assert cfg.workers == 3 and cfg.worker_class_str == "gthread"
    assert cfg.timeout > 2 * config.ehr.timeout_s
    assert cfg.forwarded_allow_ips == []  # gunicorn itself trusts no X-Forwarded-*
    assert cfg.accesslog == "-"
    assert cfg.control_socket_disable is True


def test_access_log_format_carries_no_query_and_no_referrer(home: Home) -> None:
    _, app = _cfg(home)
    fmt = app.cfg.access_log_format
    for atom in ("%(q)s", "%(r)s", "%(f)s", "%({raw_uri}e)s"):  # query, request line, referrer
        assert atom not in fmt
    assert "%(U)s" in fmt and "%(m)s" in fmt and "%(s)s" in fmt


def test_worker_timeout_follows_the_ehr_timeout(home: Home) -> None:
    text = home.config.read_text(encoding="utf-8").replace("timeout_s = 30", "timeout_s = 200")
    home.config.write_text(text, encoding="utf-8")
    config, app = _cfg(home)
    assert config.ehr.timeout_s == 200
    assert app.cfg.timeout > 400


def test_ipv6_bind_address() -> None:
    assert connector.serve.bind_address("::1", 8080) == "[::1]:8080"
    assert connector.serve.bind_address("127.0.0.1", 80) == "127.0.0.1:80"


def test_the_workers_app(home: Home) -> None:
    from werkzeug.middleware.proxy_fix import ProxyFix

    from webapp import close_app

    _drop_web_table(home)
    _add_to_config(home, "\n[web]\nidle_timeout_s = 900\n")
    _, app = _cfg(home, trusted_proxies=1)
    flask_app = app.load()
    try:
        assert flask_app.config["SESSION_COOKIE_SECURE"] is True
        assert flask_app.config["PEERSYNC_TRUSTED_PROXIES"] == 1
        assert flask_app.config["PEERSYNC_IDLE_TIMEOUT_S"] == 900.0
        assert isinstance(flask_app.wsgi_app, ProxyFix)
    finally:
        close_app(flask_app)
    _, insecure = _cfg(home, insecure_http=True)
    flask_app = insecure.load()
    try:
        assert flask_app.config["SESSION_COOKIE_SECURE"] is False
        assert flask_app.config["REMEMBER_COOKIE_SECURE"] is False
        assert not isinstance(flask_app.wsgi_app, ProxyFix)
    finally:
        close_app(flask_app)


# -- [web] in peersync.toml --------------------------------------------------------------------


def test_web_table_defaults_and_template(home: Home) -> None:
    config = load_config(home.config)
    assert config.web == WebConfig(trusted_proxies=0, idle_timeout_s=1800.0, workers=2)
    assert "[web]" in home.config.read_text(encoding="utf-8")  # `peersync init` writes it
    _drop_web_table(home)
    assert load_config(home.config).web == WebConfig()  # older configs have no [web]


@pytest.mark.parametrize(("table", "key"), [
    ({"port": 1}, "web.port"),
    ({"trusted_proxies": -1}, "web.trusted_proxies"),
    ({"trusted_proxies": True}, "web.trusted_proxies"),
    ({"trusted_proxies": 11}, "web.trusted_proxies"),
    ({"idle_timeout_s": math.nan}, "web.idle_timeout_s"),
    ({"idle_timeout_s": 10}, "web.idle_timeout_s"),
    ({"idle_timeout_s": "1800"}, "web.idle_timeout_s"),
    ({"workers": 0}, "web.workers"),
])
def test_web_table_is_validated(table: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        parse_web(table, Path("peersync.toml"))


def test_a_bad_web_table_refuses_to_load(home: Home) -> None:
    _drop_web_table(home)
    _add_to_config(home, "\n[web]\ntrusted_proxies = -1\n")
    with pytest.raises(ConfigError, match=r"web\.trusted_proxies"):
        load_config(home.config)


# -- cookies, HSTS, proxies in create_app ------------------------------------------------------


@pytest.fixture
def apps(home: Home) -> Iterator[list[Flask]]:
    from webapp import close_app

    made: list[Flask] = []
    yield made
    for app in made:
        close_app(app)


def _app(home: Home, apps: list[Flask], **config: Any) -> Flask:
    app = make_app(home, **config)
    apps.append(app)
    return app


def test_session_cookie_is_secure_by_default(home: Home, apps: list[Flask]) -> None:
    from webapp import create_app

    app = create_app({"PEERSYNC_CONFIG": str(home.config), "TESTING": True})
    apps.append(app)
    response = app.test_client().get("/login")
    assert "Secure" in response.headers["Set-Cookie"]
    insecure = _app(home, apps, SESSION_COOKIE_SECURE=False)
    assert "Secure" not in insecure.test_client().get("/login").headers["Set-Cookie"]


def test_hsts_only_on_https(home: Home, apps: list[Flask]) -> None:
    app = _app(home, apps, SESSION_COOKIE_SECURE=True)
    client = app.test_client()
    assert "Strict-Transport-Security" not in client.get("/login").headers
    assert "Strict-Transport-Security" in client.get(
        "/login", base_url="https://localhost").headers


def test_forwarded_headers_ignored_without_trusted_proxies(home: Home,
                                                           apps: list[Flask]) -> None:
    app = _app(home, apps)
    assert app.config["PEERSYNC_TRUSTED_PROXIES"] == 0
    response = app.test_client().get("/login", headers={"X-Forwarded-Proto": "https"})
    assert "Strict-Transport-Security" not in response.headers


def _whoami(app: Flask) -> None:
    from flask import jsonify, request

    from webapp.access import public

    @public
    def whoami() -> Any:
        return jsonify(addr=request.remote_addr, scheme=request.scheme, host=request.host)

    app.add_url_rule("/_whoami", view_func=whoami)


def test_trusted_proxy_hops_from_the_web_table(home: Home, apps: list[Flask]) -> None:
    _drop_web_table(home)
    _add_to_config(home, "\n[web]\ntrusted_proxies = 1\nidle_timeout_s = 120\n")
    app = _app(home, apps)
    assert app.config["PEERSYNC_TRUSTED_PROXIES"] == 1
    assert app.config["PEERSYNC_IDLE_TIMEOUT_S"] == 120.0
    _whoami(app)
    answer = app.test_client().get("/_whoami", headers={
        "X-Forwarded-Proto": "https", "X-Forwarded-For": "198.51.100.7, 203.0.113.9",
        "X-Forwarded-Host": "peersync.example.org"}).get_json()
    # one hop: the address the proxy saw, not what the client claimed before it
    assert answer == {"addr": "203.0.113.9", "scheme": "https", "host": "peersync.example.org"}


def test_login_through_a_tls_proxy(home: Home, apps: list[Flask]) -> None:
    """HTTPS at the proxy: Secure cookie, HSTS, and the CSRF referrer check passes."""
    app = _app(home, apps, PEERSYNC_TRUSTED_PROXIES=1)
    client = app.test_client()
    proxied = {"X-Forwarded-Proto": "https", "X-Forwarded-For": "198.51.100.7",
               "X-Forwarded-Host": "peersync.example.org"}
    page = client.get("/login", headers=proxied)
    assert "Strict-Transport-Security" in page.headers
    assert "Secure" in page.headers["Set-Cookie"]
    assert page.headers["Referrer-Policy"] == "no-referrer"  # so the browser sends none
    token = csrf_token(client)
    response = client.post("/login", headers=proxied, data={
        "name": "admin", "password": PASSWORDS["admin"], "csrf_token": token})
    assert response.status_code == 302, response.get_data(as_text=True)[:300]
