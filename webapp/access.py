"""Who may use which view: declared on the view, enforced once, before every request.

Every view function carries ``peersync_access``:

- :func:`public` (the login page, static files): anyone;
- :func:`roles` ``("admin", ...)``: a logged-in user with one of these roles
  (anonymous: redirected to ``/login``; another role: 403);
- :func:`bearer` ``("source" | "metrics")``: an ``Authorization: Bearer``
  token of that kind (none or unknown: 401; another kind: 403).

A view that declares nothing is refused to everyone (fail closed), so a new
route cannot be reachable by accident; the route-table test checks each one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from flask import Flask, abort, current_app, g, jsonify, request
from flask_login import LoginManager, UserMixin, current_user

from connector.accounts import ROLES, User, user_for_session
from connector.api_tokens import Token, check_token

F = TypeVar("F", bound=Callable[..., Any])

PUBLIC = "public"
# The roles tied to a staff id: they document notes as it (a supervisor documents its own
# notes too, and co-signs or returns those of the specialists it supervises: webapp.review).
AUTHORS = ("specialist", "supervisor")


@dataclass(frozen=True, slots=True)
class Bearer:
    kind: str  # "source" | "metrics"


def public(view: F) -> F:
    view.peersync_access = PUBLIC  # type: ignore[attr-defined]
    return view


def roles(*names: str) -> Callable[[F], F]:
    unknown = set(names) - set(ROLES)
    if unknown or not names:
        raise ValueError(f"unknown roles: {sorted(unknown)}")

    def mark(view: F) -> F:
        view.peersync_access = frozenset(names)  # type: ignore[attr-defined]
        return view

    return mark


def bearer(kind: str) -> Callable[[F], F]:
    def mark(view: F) -> F:
        view.peersync_access = Bearer(kind)  # type: ignore[attr-defined]
        return view

    return mark


def access_of(view: Any) -> Any:
    return getattr(view, "peersync_access", None)


class WebUser(UserMixin):  # type: ignore[misc]
    """The logged-in user, as Flask-Login wants it."""

    def __init__(self, user: User) -> None:
        self.user = user

    def get_id(self) -> str:
        return self.user.session_id

    @property
    def name(self) -> str:
        return self.user.name

    @property
    def role(self) -> str:
        return self.user.role

    @property
    def specialist_id(self) -> str | None:
        return self.user.specialist_id

    @property
    def actor(self) -> str:
        return self.user.actor

    @property
    def sees_phi(self) -> bool:
        """Names and note text: admins, a specialist for its own records, a supervisor for its
        own and its specialists' records (checked per page)."""
        return self.user.role in ("admin", "specialist", "supervisor")


def supervisor_staff(user: WebUser) -> tuple[str, ...] | None:
    """The staff ids whose records a supervisor sees: its own and those it supervises;
    None when it supervises every specialist."""
    from webapp import get_store

    limited = get_store().supervised(user.user.id)
    if not limited:
        return None
    return (user.specialist_id or "", *limited)


def me() -> WebUser:
    user: WebUser = current_user._get_current_object()
    return user


def init_app(app: Flask) -> None:
    manager = LoginManager()
    manager.login_view = "auth.login"
    manager.login_message = "Please log in."
    manager.login_message_category = "info"
    manager.session_protection = "basic"
    manager.init_app(app)

    @manager.user_loader
    def load_user(session_id: str) -> WebUser | None:
        from webapp import get_store

        user = user_for_session(get_store(), session_id)
        return WebUser(user) if user else None

    app.before_request(_gate)


def _gate() -> Any:
    if request.endpoint is None:  # no route: Flask answers 404 / 405 itself
        return None
    view = current_app.view_functions.get(request.endpoint)
    access = access_of(view)
    if access == PUBLIC:
        return None
    if isinstance(access, Bearer):
        return _check_bearer(access.kind)
    if isinstance(access, frozenset):
        if not current_user.is_authenticated:
            manager: LoginManager = current_app.login_manager  # type: ignore[attr-defined]
            return manager.unauthorized()
        if current_user.role not in access:
            abort(403)
        return None
    current_app.logger.error("view %s declares no access rule: refused", request.endpoint)
    abort(403)


def _check_bearer(kind: str) -> Any:
    from webapp import get_store

    header = request.headers.get("Authorization", "")
    scheme, _, text = header.partition(" ")
    token: Token | None = None
    if scheme.lower() == "bearer" and text.strip():
        token = check_token(get_store(), text.strip())
    if token is None:
        response = jsonify(error="unauthorized",
                           message="send a valid token as `Authorization: Bearer <token>`")
        response.status_code = 401
        response.headers["WWW-Authenticate"] = 'Bearer realm="peersync"'
        return response
    if token.kind != kind:
        response = jsonify(error="forbidden", message=f"this needs a {kind} token")
        response.status_code = 403
        return response
    g.token = token
    return None
