"""Server-side, revocable login sessions (the ``web_sessions`` table).

A logged-in browser holds one signed cookie naming a random token (256 bits);
the store holds the token's SHA-256, the user, and the session's data (Flask-
Login's user id, the CSRF token, flashed messages: never PHI). So:

- **logout ends the session**: the row is deleted, and a cookie copied before
  logout names nothing any more;
- a **new password** or a **disabled account** deletes the user's rows
  (:mod:`connector.accounts`);
- a session **idle** longer than ``PEERSYNC_IDLE_TIMEOUT_S`` (default 1800 s,
  ``[web] idle_timeout_s``) or older than ``PERMANENT_SESSION_LIFETIME``
  (8 h, from login, however active) is refused and deleted: nothing renews it.

Before login (the login page's CSRF token, "Please log in.") the session stays
a signed cookie, as Flask's own: no row per anonymous visitor. A cookie
session can never carry a login: a user id found in one is dropped.

Last activity is written at most every :data:`TOUCH_EVERY_S` seconds (or a
quarter of the idle timeout, if shorter) unless the data changed.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import UTC, datetime, timedelta
from typing import Any

from flask import Flask, Request, Response, session
from flask.sessions import SecureCookieSession, SecureCookieSessionInterface
from itsdangerous import BadSignature
from sqlalchemy import delete, insert, or_, select, update

from connector.schema import web_sessions

SID_KEY = "_sid"
LOGIN_KEY = "_user_id"  # Flask-Login's key: only ever in a server-side session
DEFAULT_IDLE_TIMEOUT_S = 1800
TOUCH_EVERY_S = 60.0


def _now() -> datetime:
    return datetime.now(UTC)


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def idle_timeout_s(app: Flask) -> float:
    return float(app.config.get("PEERSYNC_IDLE_TIMEOUT_S", DEFAULT_IDLE_TIMEOUT_S))


def max_age_s(app: Flask) -> float:
    return app.permanent_session_lifetime.total_seconds()


def _store() -> Any:
    from webapp import get_store

    return get_store()


class WebSession(SecureCookieSession):
    """A Flask session; ``sid`` set when it lives in the store (a logged-in session)."""

    def __init__(self, initial: Any = None) -> None:
        super().__init__(initial)
        self.sid: str | None = None
        self.last_seen: datetime | None = None
        self.new_sid = False  # made in this request: the cookie must be set
        self.stale = False  # the cookie named a session that has ended: replace it


class ServerSessions(SecureCookieSessionInterface):
    """Install with ``app.session_interface = ServerSessions()``."""

    salt = "peersync-session"  # not Flask's: cookie-only logins from before do not load
    session_class = WebSession

    def open_session(self, app: Flask, request: Request) -> WebSession | None:
        serializer = self.get_signing_serializer(app)
        if serializer is None:
            return None
        value = request.cookies.get(self.get_cookie_name(app))
        if not value:
            return WebSession()
        try:
            data = serializer.loads(value, max_age=int(max_age_s(app)))
        except BadSignature:
            return WebSession()
        if not isinstance(data, dict):
            return WebSession()
        token = data.get(SID_KEY)
        if not isinstance(token, str):
            data.pop(LOGIN_KEY, None)
            return WebSession(data)
        found = _load(app, token)
        if found is None:
            ended = WebSession()
            ended.stale = True
            return ended
        stored, last_seen = found
        live = WebSession(stored)
        live.sid, live.last_seen = token, last_seen
        return live

    def save_session(self, app: Flask, session: Any, response: Response) -> None:
        if not isinstance(session, WebSession) or session.sid is None:
            if LOGIN_KEY in session:
                del session[LOGIN_KEY]  # a login without a server-side session: never
            if getattr(session, "stale", False):
                session.modified = True  # empty: the dead cookie is deleted
            super().save_session(app, session, response)
            return
        if session.accessed:
            response.vary.add("Cookie")
        now = _now()
        touch = min(TOUCH_EVERY_S, idle_timeout_s(app) / 4)
        due = session.last_seen is None or (now - session.last_seen).total_seconds() >= touch
        if session.modified or session.new_sid or due:
            values: dict[str, Any] = {"last_seen": now}
            if session.modified or session.new_sid:
                values["data"] = self._dump(session)
            with _store().begin(audited=False) as conn:
                conn.execute(update(web_sessions)
                             .where(web_sessions.c.id == _digest(session.sid)).values(**values))
        if session.new_sid:
            serializer = self.get_signing_serializer(app)
            assert serializer is not None
            response.set_cookie(
                self.get_cookie_name(app),
                serializer.dumps({SID_KEY: session.sid}),
                domain=self.get_cookie_domain(app),
                path=self.get_cookie_path(app),
                httponly=self.get_cookie_httponly(app),
                secure=self.get_cookie_secure(app),
                samesite=self.get_cookie_samesite(app),
                partitioned=self.get_cookie_partitioned(app),
            )
            response.vary.add("Cookie")

    @staticmethod
    def _dump(session: WebSession) -> str:
        from flask.sessions import session_json_serializer

        return session_json_serializer.dumps(dict(session))


def _load(app: Flask, token: str) -> tuple[dict[str, Any], datetime] | None:
    """The data and last activity of a live session, or None (unknown, idle, too old: deleted)."""
    from flask.sessions import session_json_serializer

    digest = _digest(token)
    store = _store()
    with store.engine.connect() as conn:
        row = conn.execute(select(web_sessions).where(web_sessions.c.id == digest)).first()
    if row is None:
        return None
    now = _now()
    last_seen, created = _aware(row.last_seen), _aware(row.created_at)
    if (now - last_seen).total_seconds() > idle_timeout_s(app) or (
            now - created).total_seconds() > max_age_s(app):
        with store.begin(audited=False) as conn:
            conn.execute(delete(web_sessions).where(web_sessions.c.id == digest))
        return None
    data = session_json_serializer.loads(row.data)
    return (data if isinstance(data, dict) else {}), last_seen


def start(app: Flask, user_id: int) -> None:
    """After a good login: a new server-side session for ``user_id`` (and expired ones purged).

    Call before ``login_user``; whatever the request's session held before is dropped
    (a new token: no fixation).
    """
    current: Any = session
    now = _now()
    token = secrets.token_urlsafe(32)
    idle = timedelta(seconds=idle_timeout_s(app))
    oldest = now - timedelta(seconds=max_age_s(app))
    with _store().begin(audited=False) as conn:
        expired = or_(web_sessions.c.last_seen < now - idle, web_sessions.c.created_at < oldest)
        if isinstance(current, WebSession) and current.sid:
            expired = or_(expired, web_sessions.c.id == _digest(current.sid))
        conn.execute(delete(web_sessions).where(expired))
        conn.execute(insert(web_sessions).values(
            id=_digest(token), user_id=user_id, created_at=now, last_seen=now, data="{}"))
    current.clear()
    if isinstance(current, WebSession):
        current.sid, current.last_seen, current.new_sid = token, now, True


def end() -> bool:
    """Logout: delete this session's row and empty the session. True if there was one."""
    current: Any = session
    ended = False
    if isinstance(current, WebSession) and current.sid:
        with _store().begin(audited=False) as conn:
            ended = bool(conn.execute(
                delete(web_sessions).where(web_sessions.c.id == _digest(current.sid))
            ).rowcount)
        current.sid = None
    current.clear()
    return ended
