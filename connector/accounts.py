"""Accounts: the web app's users, the API's bearer tokens, and login throttling.

- A **user** has a name, one role (``admin``, ``specialist``, ``auditor``) and,
  for a specialist, the staff id the account documents as. Passwords are kept
  only as a scrypt hash (werkzeug.security); a changed password or a disabled
  account ends the sessions it had (see :attr:`User.session_id`).
- A **token** (``ps_`` + 43 random URL-safe characters) authenticates a peer
  support tool on the JSON API (its *source* is the records' source) or a
  Prometheus scraper (``metrics``). Only its SHA-256 is stored: it is shown
  once, when made.
- **Throttling** (:mod:`connector.login_throttle`): failed logins are counted
  per (user name, client address) and per address in the database, checked and
  counted in one transaction; past the limit the next attempt is delayed,
  progressively, for that pair (or address) only. A login always runs one
  password check, against a dummy hash for an unknown name, so its time does
  not tell which names exist.
- **Password rules** (:mod:`connector.password_rules`): length, and not one of
  the commonest passwords, a repeated character or run, or a simple sequence.

Every change, login and refusal appends an audit event: names, roles, staff
ids, token ids and prefixes, never a password or a token.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from connector import login_throttle as throttle
from connector.errors import ConnectorError
from connector.password_rules import (
    MAX_PASSWORD_LENGTH,
    PasswordRuleError,
)
from connector.password_rules import MIN_PASSWORD_LENGTH as MIN_PASSWORD_LENGTH
from connector.password_rules import check_password_rules as _check_rules
from connector.schema import users, web_sessions

if TYPE_CHECKING:
    from connector.store import Store

ROLES = ("admin", "specialist", "auditor", "supervisor")
STAFF_ROLES = ("specialist", "supervisor")  # tied to a staff id: they document notes
HASH_METHOD = "scrypt"

# Throttling defaults: per (user name, client address), per client address, and the window.
MAX_FAILURES_PER_USER = 5
MAX_FAILURES_PER_ADDRESS = 20
WINDOW_S = 15 * 60

_NAME_RE = re.compile(r"[a-z0-9][a-z0-9._@-]{0,63}")
_STAFF_ID_RE = re.compile(r"[^\x00-\x1f\x7f]{1,64}")


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
    """Raise AccountError for a password the rules refuse (:mod:`connector.password_rules`)."""
    try:
        _check_rules(password)
    except PasswordRuleError as exc:
        raise AccountError(str(exc)) from None


def hash_password(password: str) -> str:
    from werkzeug.security import generate_password_hash

    return generate_password_hash(password, method=HASH_METHOD)


def _password_ok(password_hash: str, password: str) -> bool:
    from werkzeug.security import check_password_hash

    return check_password_hash(password_hash, password)


def password_matches(user: User | None, password: str) -> bool:
    """A user's password (an unknown user: checked against a dummy hash, same time)."""
    ok = _password_ok(user.password_hash if user else _dummy_hash(),
                      password[:MAX_PASSWORD_LENGTH])
    return ok and user is not None and len(password) <= MAX_PASSWORD_LENGTH


_dummy_hashes: dict[str, str] = {}


def _dummy_hash() -> str:
    """A hash of nothing anyone knows, made like a real one: checked for an unknown name."""
    made = _dummy_hashes.get(HASH_METHOD)
    if made is None:
        made = _dummy_hashes[HASH_METHOD] = hash_password(secrets.token_urlsafe(16))
    return made


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
    supervises: Sequence[str] = (),
    actor: str,
) -> User:
    """Create a user. A specialist or supervisor needs its staff id; other roles take none.

    ``supervises``: the staff ids a supervisor co-signs for (none: every specialist).
    """
    name = normalise_name(name)
    if not _NAME_RE.fullmatch(name):
        raise AccountError(
            "the user name must be 1-64 characters of a-z 0-9 . _ @ - (starting with a letter "
            "or digit)"
        )
    if role not in ROLES:
        raise AccountError(f"the role must be one of {', '.join(ROLES)}")
    if role in STAFF_ROLES:
        if not specialist_id or not _STAFF_ID_RE.fullmatch(specialist_id):
            raise AccountError(f"a {role} account needs --specialist-id (the staff id)")
    elif specialist_id:
        raise AccountError("only a specialist or supervisor account is tied to a staff id")
    if supervises and role != "supervisor":
        raise AccountError("only a supervisor account supervises specialists")
    if any(not _STAFF_ID_RE.fullmatch(s) or s == specialist_id for s in supervises):
        raise AccountError("--supervises: staff ids, comma-separated, not the supervisor's own")
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
                    "specialist_id": specialist_id if role in STAFF_ROLES else None,
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
                    **({"specialist_id": specialist_id} if role in STAFF_ROLES else {}),
                    **({"supervises": list(supervises) or "all"}
                       if role == "supervisor" else {}),
                },
                at=now,
            )
            if role == "supervisor":
                store.set_supervised(conn, int(user_id), supervises)
    except IntegrityError:
        raise AccountError(f"a user named {name!r} already exists") from None
    return User(int(user_id), name, role, specialist_id if role in STAFF_ROLES else None,
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
        ended = _end_sessions(conn, name)
        store.audit(conn, actor=actor, action="user.password_set",
                    detail={"user": name, "sessions_ended": ended})


def set_active(store: Store, name: str, active: bool, *, actor: str) -> None:
    name = normalise_name(name)
    with store.begin() as conn:
        changed = conn.execute(
            update(users).where(users.c.name == name).values(active=active)
        ).rowcount
        if not changed:
            raise AccountError(f"no user named {name!r}")
        detail: dict[str, Any] = {"user": name}
        if not active:
            detail["sessions_ended"] = _end_sessions(conn, name)
        store.audit(conn, actor=actor, action="user.enabled" if active else "user.disabled",
                    detail=detail)


def _end_sessions(conn: Any, name: str) -> int:
    """Delete the web sessions of user ``name`` (a new password, a disabled account)."""
    owner = select(users.c.id).where(users.c.name == name).scalar_subquery()
    return int(conn.execute(delete(web_sessions).where(web_sessions.c.user_id == owner)).rowcount)


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
    """Check a name and password, throttled; audit the outcome (never the password).

    ``max_failures_per_user`` counts per (user, address): someone guessing
    elsewhere never delays the user's own logins. Known and unknown names take
    the same time: one password check either way, on at most
    MAX_PASSWORD_LENGTH characters.
    """
    now = now or _now()
    name = normalise_name(name)[:64]
    actor = web_actor(name)
    keys = throttle.keys_for(name, address, per_user=max_failures_per_user,
                             per_address=max_failures_per_address)
    retry_after = throttle.reserve(store, keys, window_s=window_s, now=now, actor=actor,
                                   address=address)
    if retry_after:
        return LoginResult(None, throttled=True, retry_after_s=retry_after)
    user = find_user(store, name) if _NAME_RE.fullmatch(name) else None
    matches = _password_ok(user.password_hash if user else _dummy_hash(),
                           password[:MAX_PASSWORD_LENGTH])
    if user is None:
        ok, why = False, "unknown-user"
    elif len(password) > MAX_PASSWORD_LENGTH or not matches:
        ok, why = False, "bad-password"
    elif not user.active:
        ok, why = False, "disabled"
    else:
        ok, why = True, ""
    with store.begin() as conn:
        if ok:
            throttle.settle(conn, keys)
            store.audit(conn, actor=actor, action="login.ok",
                        detail={"role": user.role if user else None, "address": address},
                        at=now)
        else:
            store.audit(conn, actor=actor, action="login.failed",
                        detail={"reason": why, "address": address}, at=now)
    return LoginResult(user if ok else None)


# -- tokens -----------------------------------------------------------------------


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
