"""The PeerSync admin app (Flask). ``flask --app webapp run`` or ``peersync serve``.

Built like Flask's tutorial app: ``create_app()`` takes defaults, then the
PeerSync config named by PEERSYNC_CONFIG (or $PEERSYNC_HOME/peersync.toml),
then ``FLASK_*`` environment variables; the store lives on ``g`` for one
request. Pages read and write only through connector functions.

Safety, in one place (see :mod:`webapp.access`): every view declares who may
use it (a role, a bearer token, or nobody logged in); a view that declares
nothing is refused to everyone. Browser forms carry a CSRF token
(Flask-WTF); the token-authenticated JSON API is exempt. Sessions are signed
with a key that survives restarts (``PEERSYNC_SECRET_KEY`` or the
``peersync.secret`` file beside peersync.toml, made 0600 on first start).
"""

from __future__ import annotations

import logging
import os
import secrets
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from flask import Flask, g

log = logging.getLogger("peersync.webapp")

SECRET_ENV = "PEERSYNC_SECRET_KEY"
SECRET_FILE = "peersync.secret"
WEB_SOURCE = "web-form"  # the source name of records documented in the app's form

CSP = (
    "default-src 'none'; img-src 'self' data:; style-src 'self'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)


def create_app(test_config: dict[str, Any] | None = None) -> Flask:
    from connector.logging_setup import install as redact_logs

    redact_logs()  # no URL query value (werkzeug's access log), SQL parameter or row in logs
    app = Flask(__name__, instance_relative_config=False)
    app.config.from_mapping(
        SECRET_KEY=None,
        PEERSYNC_CONFIG=None,
        PAGE_SIZE=50,
        SESSION_COOKIE_NAME="peersync_session",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        # Secure by default: only `peersync serve --insecure-http` (the local demo) turns it off
        SESSION_COOKIE_SECURE=True,
        PERMANENT_SESSION_LIFETIME=timedelta(hours=8),
        REMEMBER_COOKIE_DURATION=timedelta(seconds=0),  # no "remember me"
        WTF_CSRF_TIME_LIMIT=None,  # valid as long as the session: a note can take a while
        # Pages send no Referer (Referrer-Policy: no-referrer), so Flask-WTF's HTTPS-only
        # Referer check would refuse every form behind a TLS proxy; the session-bound token
        # and SameSite=Lax cookies are the CSRF defence.
        WTF_CSRF_SSL_STRICT=False,
        MAX_CONTENT_LENGTH=8 * 1024 * 1024,  # any body, forms and API (413 beyond)
        API_MAX_RECORDS=1000,
        API_MAX_DEPTH=64,  # lists/objects nested deeper: 400
        API_MAX_ERRORS_PER_RECORD=20,  # errors listed per rejected record
        API_MAX_ERROR_RECORDS=100,  # rejected records whose errors are listed
        LOGIN_MAX_FAILURES=5,  # per (user name, address); then a growing delay
        LOGIN_MAX_FAILURES_PER_ADDRESS=20,
        LOGIN_WINDOW_S=15 * 60,
        SYNC_ON_ACTION=True,  # after a form, retry or link: one sync pass in the request
        EHR_CHECK_TTL_S=60,  # the dashboard's "EHR reachable" is cached this long
        EHR_CHECK_TIMEOUT_S=5,
        DOCUMENT_FORM_MAX_AGE_S=12 * 3600,
    )
    app.config.from_prefixed_env()
    if test_config:
        app.config.update(test_config)
    if not app.config.get("SECRET_KEY"):
        app.config["SECRET_KEY"] = _secret_key(app)
    _serving_config(app, given=set(test_config or {}))

    from webapp import access

    access.init_app(app)  # before CSRF: anonymous -> login, wrong role -> 403, then the token
    from webapp.sessions import ServerSessions

    app.session_interface = ServerSessions()  # logins live in web_sessions: revocable, idle-timed
    send_static = app.view_functions["static"]

    @access.public
    def static(filename: str) -> Any:
        return send_static(filename=filename)

    app.view_functions["static"] = static

    from flask_wtf.csrf import CSRFProtect

    csrf = CSRFProtect(app)

    from webapp import (
        api,
        audit,
        auth,
        dashboard,
        doctime,
        document,
        holds,
        matching,
        metrics,
        records,
        settings,
    )

    for module in (auth, dashboard, records, document, matching, holds, audit, doctime,
                   settings, api, metrics):
        app.register_blueprint(module.bp)
    from webapp import amend  # the document form's amend/retract/resubmit (issue 10)

    app.register_blueprint(amend.bp)
    from webapp import review  # the supervisor's review queue (issue 10)

    app.register_blueprint(review.bp)
    csrf.exempt(api.bp)  # bearer tokens, not cookies: no cross-site request can carry one
    csrf.exempt(metrics.bp)
    app.add_url_rule("/", endpoint="index", view_func=auth.index)
    app.teardown_appcontext(_close_store)

    from webapp import views

    views.init_app(app)

    @app.after_request
    def security_headers(response: Any) -> Any:
        from flask import request

        response.headers.setdefault("Content-Security-Policy", CSP)
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        response.headers.setdefault("Cross-Origin-Opener-Policy", "same-origin")
        response.headers.setdefault("Permissions-Policy",
                                    "camera=(), microphone=(), geolocation=()")
        if request.is_secure:  # HTTPS here, or at the trusted proxy (ProxyFix)
            response.headers.setdefault("Strict-Transport-Security", "max-age=31536000")
        if response.mimetype == "text/html":
            response.headers.setdefault("Cache-Control", "no-store")
        return response

    return app


def _serving_config(app: Flask, *, given: set[str]) -> None:
    """Cookie flags, proxy trust and the idle timeout, from ``[web]`` unless set explicitly.

    ``PEERSYNC_TRUSTED_PROXIES`` (N > 0: X-Forwarded-For/-Proto/-Host/-Port are
    taken from N proxy hops, werkzeug's ProxyFix) and ``PEERSYNC_IDLE_TIMEOUT_S``
    come from the test config, a ``FLASK_`` variable, or ``[web]`` in peersync.toml.
    """
    given = given | {k.removeprefix("FLASK_") for k in os.environ if k.startswith("FLASK_")}
    if not {"PEERSYNC_TRUSTED_PROXIES", "PEERSYNC_IDLE_TIMEOUT_S"} <= given:
        from connector.config import CONFIG_NAME, load_web_config

        configured = app.config.get("PEERSYNC_CONFIG")
        web = load_web_config(Path(configured) if configured
                              else _config_folder(app) / CONFIG_NAME)
        if "PEERSYNC_TRUSTED_PROXIES" not in given:
            app.config["PEERSYNC_TRUSTED_PROXIES"] = web.trusted_proxies
        if "PEERSYNC_IDLE_TIMEOUT_S" not in given:
            app.config["PEERSYNC_IDLE_TIMEOUT_S"] = web.idle_timeout_s
    if "REMEMBER_COOKIE_SECURE" not in given:
        app.config["REMEMBER_COOKIE_SECURE"] = bool(app.config["SESSION_COOKIE_SECURE"])
    hops = int(app.config["PEERSYNC_TRUSTED_PROXIES"])
    if hops > 0:
        from werkzeug.middleware.proxy_fix import ProxyFix

        app.wsgi_app = ProxyFix(  # type: ignore[method-assign]
            app.wsgi_app, x_for=hops, x_proto=hops, x_host=hops, x_port=hops)


def _config_folder(app: Flask) -> Path:
    configured = app.config.get("PEERSYNC_CONFIG")
    if configured:
        return Path(configured).resolve().parent
    from connector.config import home

    return home()


def _secret_key(app: Flask) -> str:
    """``PEERSYNC_SECRET_KEY``, else ``peersync.secret`` beside peersync.toml (made if missing).

    Never a random key per start: that would end every session at each restart
    and break sessions between worker processes.
    """
    from_env = os.environ.get(SECRET_ENV)
    if from_env:
        return from_env
    return ensure_secret_file(_config_folder(app))


def ensure_secret_file(folder: Path) -> str:
    """The session signing key in ``folder/peersync.secret``; created 0600 if missing."""
    path = folder / SECRET_FILE
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    except OSError as exc:
        raise RuntimeError(
            f"{path}: cannot create the session key ({exc.strerror}); set {SECRET_ENV}"
        ) from None
    else:
        try:
            os.write(fd, (secrets.token_hex(32) + "\n").encode("ascii"))
            os.fsync(fd)
        finally:
            os.close(fd)
    for _ in range(50):  # another process may have created it a moment ago
        text = path.read_text(encoding="ascii").strip()
        if text:
            if path.stat().st_mode & 0o077:
                log.warning("%s is readable by group or others: chmod 600 it", path)
            return text
        time.sleep(0.02)
    raise RuntimeError(f"{path}: empty session key file; delete it or set {SECRET_ENV}")


def peersync_config() -> Any:
    """The deployment config for this app (loaded once per app)."""
    from flask import current_app

    from connector.config import load_config

    cached = current_app.extensions.get("peersync_config")
    if cached is None:
        path = current_app.config.get("PEERSYNC_CONFIG")
        cached = load_config(Path(path) if path else None)
        current_app.extensions["peersync_config"] = cached
    return cached


def peersync_profile() -> Any:
    """The agency profile named by the config (loaded once per app)."""
    from flask import current_app

    from mappings.profile import load_profile

    cached = current_app.extensions.get("peersync_profile")
    if cached is None:
        cached = load_profile(peersync_config().profile_path())
        current_app.extensions["peersync_profile"] = cached
    return cached


def peersync_wiring() -> Any:
    """This deployment's wiring (config, profile, write plan, EHR client): the CLI's own."""
    from flask import current_app

    from connector.wiring import Wiring

    cached = current_app.extensions.get("peersync_wiring")
    if cached is None:
        cached = Wiring(config=peersync_config(), profile=peersync_profile())
        current_app.extensions["peersync_wiring"] = cached
    return cached


def get_store() -> Any:
    """The store for this request (one engine per app, kept on the app)."""
    from flask import current_app

    from connector.audit import load_audit_key
    from connector.store import Store

    if "store" not in g:
        store = current_app.extensions.get("peersync_store")
        if store is None:
            config = peersync_config()
            key = load_audit_key(config.folder, config.audit_key_file, os.environ)
            store = Store.from_url(config.database_url, audit_key=key)
            from connector.review import ReviewRule

            store.review_rule = ReviewRule.of(peersync_profile())  # [review]
            _serial_queries(store.engine)
            current_app.extensions["peersync_store"] = store
        g.store = store
    return g.store


def _serial_queries(engine: Any) -> None:
    """PostgreSQL: no parallel workers for the app's queries.

    A page's queries read indexes: a few thousand entries, or one pass over an
    index for the counts by state. Parallel workers cost more to start than they save
    there, and on a small host they take the cores the app's own processes need:
    on 2 cores with a 200,000-record store, the counts by state took 20-27 ms with
    them and 14 ms without, a month's records 21 ms and 8 ms (issue 9;
    scripts/bench.py pages). Only the web app's sessions.
    """
    if engine.dialect.name != "postgresql":
        return
    from sqlalchemy import event

    @event.listens_for(engine, "connect")
    def _no_parallel_workers(dbapi_conn: Any, _record: Any) -> None:
        with dbapi_conn.cursor() as cursor:
            cursor.execute("SET max_parallel_workers_per_gather = 0")
        dbapi_conn.commit()


def close_app(app: Flask) -> None:
    """Dispose of the app's database engine (tests, and a server shutting down)."""
    store = app.extensions.pop("peersync_store", None)
    if store is not None:
        store.close()


def _close_store(_exc: BaseException | None) -> None:
    g.pop("store", None)


def utcnow() -> datetime:
    return datetime.now(UTC)
