"""Accounts: the web app's users, the API's bearer tokens, and login throttling.

- A **user** has a name, one role (``admin``, ``specialist``, ``auditor``) and,
  for a specialist, the staff id the account documents as. Passwords are kept
  only as a scrypt hash (werkzeug.security); a changed password or a disabled
  account ends the sessions it had (see :attr:`User.session_id`).
- A **token** (``ps_`` + 43 random URL-safe characters) authenticates a peer
  support tool on the JSON API (its *source* is the records' source) or a
  Prometheus scraper (``metrics``). Only its SHA-256 is stored: it is shown
  once, when made.
- **Throttling**: failed logins are counted per user name and per client
  address in the database (every worker process sees the same counts); past
  the limit, further attempts are refused without looking at the password
  until the window ends.

Every change, login and refusal appends an audit event: names, roles, staff
ids, token ids and prefixes, never a password or a token.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError

from connector.config import valid_source
from connector.errors import ConnectorError
from connector.schema import api_tokens, login_throttle, users

if TYPE_CHECKING:
    from sqlalchemy import Connection

    from connector.store import Store

ROLES = ("admin", "specialist", "auditor")
TOKEN_PREFIX = "ps_"
TOKEN_KINDS = ("source", "metrics")
MIN_PASSWORD_LENGTH = 12
MAX_PASSWORD_LENGTH = 1024  # hashing a megabyte on every guess is a denial of service
HASH_METHOD = "scrypt"

# Throttling defaults: per user name, per client address, and the window.
MAX_FAILURES_PER_USER = 5
MAX_FAILURES_PER_ADDRESS = 20
WINDOW_S = 15 * 60

_NAME_RE = re.compile(r"[a-z0-9][a-z0-9._@-]{0,63}")
_STAFF_ID_RE = re.compile(r"[^\x00-\x1f\x7f]{1,64}")
_TOKEN_RE = re.compile(r"ps_[A-Za-z0-9_-]{20,100}")


class AccountError(ConnectorError):
    """A user or token request that cannot be done as asked (bad name, role, password...)."""


@dataclass(frozen=True, slots=True)
class User:
    id: int
    name: str
    role: str
    specialist_id: str | None
    active: bool
    password_hash: str

    @property
    def session_id(self) -> str:
        """What a login session remembers: the id and a digest of the password hash.

        A new password (or a new hash of it) no longer matches, so the old
        sessions end without a session table.
        """
        digest = hashlib.sha256(self.password_hash.encode("utf-8")).hexdigest()[:16]
        return f"{self.id}.{digest}"

    @property
    def actor(self) -> str:
        return web_actor(self.name)


@dataclass(frozen=True, slots=True)
class Token:
    id: int
    kind: str
    source: str | None
    prefix: str
    created_at: datetime
    created_by: str
    revoked_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class LoginResult:
    user: User | None
    throttled: bool = False
    retry_after_s: int = 0


def web_actor(name: str) -> str:
    """The audit actor for a web user: ``web:<name>`` (``web:?`` for a name that is not valid)."""
    return f"web:{name}" if _NAME_RE.fullmatch(name) else "web:?"


def normalise_name(name: str) -> str:
    return name.strip().lower()


def _now() -> datetime:
    from connector.store import utcnow

    return utcnow()


def _aware(value: datetime | None) -> datetime | None:
    from datetime import UTC

    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


def check_password_rules(password: str) -> None:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise AccountError(f"the password must be at least {MIN_PASSWORD_LENGTH} characters")
    if len(password) > MAX_PASSWORD_LENGTH:
        raise AccountError(f"the password must be at most {MAX_PASSWORD_LENGTH} characters")


def hash_password(password: str) -> str:
    from werkzeug.security import generate_password_hash

    return generate_password_hash(password, method=HASH_METHOD)


def _password_ok(password_hash: str, password: str) -> bool:
    from werkzeug.security import check_password_hash

    return check_password_hash(password_hash, password)


_dummy_hash: str | None = None


def _spend_like_a_check(password: str) -> None:
    """Hash the guess for an unknown name too, so timing does not tell names apart."""
    global _dummy_hash
    if _dummy_hash is None:
        _dummy_hash = hash_password(secrets.token_urlsafe(16))
    _password_ok(_dummy_hash, password)


def _user(row: Any) -> User:
    return User(
        id=int(row.id),
        name=row.name,
        role=row.role,
        specialist_id=row.specialist_id,
        active=bool(row.active),
        password_hash=row.password_hash,
    )


# -- users ------------------------------------------------------------------------


def add_user(
    store: Store,
    name: str,
    *,
    role: str,
    password: str,
    specialist_id: str | None = None,
    actor: str,
) -> User:
    """Create a user. A specialist needs its staff id; other roles take none."""
    name = normalise_name(name)
    if not _NAME_RE.fullmatch(name):
        raise AccountError(
            "the user name must be 1-64 characters of a-z 0-9 . _ @ - (starting with a letter "
            "or digit)"
        )
    if role not in ROLES:
        raise AccountError(f"the role must be one of {', '.join(ROLES)}")
    if role == "specialist":
        if not specialist_id or not _STAFF_ID_RE.fullmatch(specialist_id):
            raise AccountError("a specialist account needs --specialist-id (the staff id)")
    elif specialist_id:
        raise AccountError("only a specialist account is tied to a staff id")
    check_password_rules(password)
    password_hash = hash_password(password)
    now = _now()
    try:
        with store.begin() as conn:
            user_id = conn.execute(
                insert(users).returning(users.c.id),
                {
                    "name": name,
                    "role": role,
                    "specialist_id": specialist_id if role == "specialist" else None,
                    "password_hash": password_hash,
                    "active": True,
                    "created_at": now,
                    "created_by": actor,
                },
            ).scalar_one()
            store.audit(
                conn,
                actor=actor,
                action="user.created",
                detail={
                    "user": name,
                    "role": role,
                    **({"specialist_id": specialist_id} if role == "specialist" else {}),
                },
                at=now,
            )
    except IntegrityError:
        raise AccountError(f"a user named {name!r} already exists") from None
    return User(int(user_id), name, role, specialist_id if role == "specialist" else None,
                True, password_hash)


def set_password(store: Store, name: str, password: str, *, actor: str) -> None:
    check_password_rules(password)
    name = normalise_name(name)
    with store.begin() as conn:
        changed = conn.execute(
            update(users).where(users.c.name == name)
            .values(password_hash=hash_password(password))
        ).rowcount
        if not changed:
            raise AccountError(f"no user named {name!r}")
        store.audit(conn, actor=actor, action="user.password_set", detail={"user": name})


def set_active(store: Store, name: str, active: bool, *, actor: str) -> None:
    name = normalise_name(name)
    with store.begin() as conn:
        changed = conn.execute(
            update(users).where(users.c.name == name).values(active=active)
        ).rowcount
        if not changed:
            raise AccountError(f"no user named {name!r}")
        store.audit(conn, actor=actor, action="user.enabled" if active else "user.disabled",
                    detail={"user": name})


def get_user(store: Store, user_id: int) -> User | None:
    with store.engine.connect() as conn:
        row = conn.execute(select(users).where(users.c.id == user_id)).first()
    return _user(row) if row else None


def find_user(store: Store, name: str) -> User | None:
    with store.engine.connect() as conn:
        row = conn.execute(select(users).where(users.c.name == normalise_name(name))).first()
    return _user(row) if row else None


def list_users(store: Store) -> list[User]:
    with store.engine.connect() as conn:
        return [_user(row) for row in conn.execute(select(users).order_by(users.c.name))]


def user_for_session(store: Store, session_id: str) -> User | None:
    """The active user a login session belongs to, or None (unknown, changed, disabled)."""
    head, _, _digest = session_id.partition(".")
    if not head.isdigit():
        return None
    user = get_user(store, int(head))
    if user is None or not user.active:
        return None
    return user if hmac.compare_digest(user.session_id, session_id) else None


# -- logging in -------------------------------------------------------------------


def login(
    store: Store,
    name: str,
    password: str,
    *,
    address: str | None,
    max_failures_per_user: int = MAX_FAILURES_PER_USER,
    max_failures_per_address: int = MAX_FAILURES_PER_ADDRESS,
    window_s: float = WINDOW_S,
    now: datetime | None = None,
) -> LoginResult:
    """Check a name and password, throttled; audit the outcome (never the password)."""
    now = now or _now()
    name = normalise_name(name)[:64]
    actor = web_actor(name)
    keys = {f"user:{name}": max_failures_per_user}
    if address:
        keys[f"ip:{address[:64]}"] = max_failures_per_address
    window = timedelta(seconds=window_s)
    blocked_until = _blocked_until(store, keys, window=window, now=now)
    if blocked_until is not None:
        with store.begin() as conn:
            store.audit(conn, actor=actor, action="login.throttled",
                        detail={"address": address}, at=now)
        return LoginResult(None, throttled=True,
                           retry_after_s=max(1, int((blocked_until - now).total_seconds())))
    user = find_user(store, name) if _NAME_RE.fullmatch(name) else None
    if user is None:
        _spend_like_a_check(password[:MAX_PASSWORD_LENGTH])
        ok, why = False, "unknown-user"
    elif len(password) > MAX_PASSWORD_LENGTH or not _password_ok(user.password_hash, password):
        ok, why = False, "bad-password"
    elif not user.active:
        ok, why = False, "disabled"
    else:
        ok, why = True, ""
    with store.begin() as conn:
        if ok:
            _clear(conn, f"user:{name}")
            store.audit(conn, actor=actor, action="login.ok",
                        detail={"role": user.role if user else None, "address": address},
                        at=now)
        else:
            for key in keys:
                _count_failure(conn, key, window=window, now=now)
            store.audit(conn, actor=actor, action="login.failed",
                        detail={"reason": why, "address": address}, at=now)
    return LoginResult(user if ok else None)


def _blocked_until(
    store: Store, keys: dict[str, int], *, window: timedelta, now: datetime
) -> datetime | None:
    with store.engine.connect() as conn:
        rows = conn.execute(
            select(login_throttle).where(login_throttle.c.key.in_(list(keys)))
        ).all()
    until: datetime | None = None
    for row in rows:
        start = _aware(row.window_start)
        assert start is not None
        if row.failures >= keys[row.key] and now - start < window:
            end = start + window
            until = end if until is None or end > until else until
    return until


def _count_failure(conn: Connection, key: str, *, window: timedelta, now: datetime) -> None:
    row = conn.execute(select(login_throttle).where(login_throttle.c.key == key)).first()
    if row is None:
        conn.execute(insert(login_throttle).values(key=key, failures=1, window_start=now))
        return
    start = _aware(row.window_start)
    assert start is not None
    if now - start >= window:  # a new window
        values: dict[str, Any] = {"failures": 1, "window_start": now}
    else:
        values = {"failures": login_throttle.c.failures + 1}
    conn.execute(update(login_throttle).where(login_throttle.c.key == key).values(**values))


def _clear(conn: Connection, key: str) -> None:
    conn.execute(
        update(login_throttle).where(login_throttle.c.key == key).values(failures=0)
    )


# -- tokens -----------------------------------------------------------------------


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def add_token(
    store: Store, *, source: str | None = None, metrics: bool = False, actor: str
) -> tuple[Token, str]:
    """Make a token for ``source`` (or for ``/metrics``); return it and its text, shown once."""
    if metrics == (source is not None):
        raise AccountError("a token is either for a source or for metrics")
    if source is not None and not valid_source(source):
        raise AccountError("the source must be 1-64 characters of A-Z a-z 0-9 . _ -")
    kind = "metrics" if metrics else "source"
    text = TOKEN_PREFIX + secrets.token_urlsafe(32)
    prefix = text[:10]
    now = _now()
    with store.begin() as conn:
        token_id = conn.execute(
            insert(api_tokens).returning(api_tokens.c.id),
            {
                "token_hash": _token_hash(text),
                "prefix": prefix,
                "kind": kind,
                "source": source,
                "created_at": now,
                "created_by": actor,
            },
        ).scalar_one()
        store.audit(conn, actor=actor, action="token.created", source=source,
                    detail={"token_id": int(token_id), "kind": kind, "prefix": prefix}, at=now)
    return Token(int(token_id), kind, source, prefix, now, actor), text


def check_token(store: Store, text: str) -> Token | None:
    """The live token with this text, or None."""
    if not _TOKEN_RE.fullmatch(text):
        return None
    digest = _token_hash(text)
    with store.engine.connect() as conn:
        row = conn.execute(
            select(api_tokens).where(api_tokens.c.token_hash == digest)
        ).first()
    if row is None or row.revoked_at is not None:
        return None
    if not hmac.compare_digest(row.token_hash, digest):
        return None
    return _token(row)


def _token(row: Any) -> Token:
    return Token(
        id=int(row.id),
        kind=row.kind,
        source=row.source,
        prefix=row.prefix,
        created_at=_aware(row.created_at) or row.created_at,
        created_by=row.created_by,
        revoked_at=_aware(row.revoked_at),
    )


def list_tokens(store: Store) -> list[Token]:
    with store.engine.connect() as conn:
        return [_token(row) for row in conn.execute(select(api_tokens).order_by(api_tokens.c.id))]


def revoke_token(store: Store, token_id: int, *, actor: str) -> bool:
    now = _now()
    with store.begin() as conn:
        changed = conn.execute(
            update(api_tokens)
            .where(api_tokens.c.id == token_id, api_tokens.c.revoked_at.is_(None))
            .values(revoked_at=now)
        ).rowcount
        if changed:
            store.audit(conn, actor=actor, action="token.revoked",
                        detail={"token_id": token_id}, at=now)
    return bool(changed)


# -- the demo -----------------------------------------------------------------------


def demo_accounts(store: Store, *, specialist_id: str = "S-17") -> list[tuple[str, str, str]]:
    """An admin ``admin`` and a specialist ``alex`` (staff id S-17) with fresh passwords.

    Returns (name, role, password) for printing: the demo's database is new
    at every start, so are these.
    """
    made = []
    for name, role, staff in (("admin", "admin", None), ("alex", "specialist", specialist_id)):
        password = secrets.token_urlsafe(12)
        add_user(store, name, role=role, password=password, specialist_id=staff, actor="demo")
        made.append((name, role, password))
    return made
