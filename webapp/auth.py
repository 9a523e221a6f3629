"""Logging in and out. The one page anyone may open.

A good login starts a server-side session (:mod:`webapp.sessions`); logout
deletes it, so a copy of the cookie taken before no longer works.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from flask import (
    Blueprint,
    current_app,
    flash,
    redirect,
    render_template,
    request,
    url_for,
)
from flask_login import current_user, login_user, logout_user

from connector.accounts import login as check_login
from webapp import get_store, sessions
from webapp.access import WebUser, me, public, roles

bp = Blueprint("auth", __name__)


def safe_next(target: str | None) -> str | None:
    """A local path to go to after login, or None: never another site (no open redirect)."""
    if not target or len(target) > 2000:
        return None
    if not target.startswith("/") or target.startswith("//") or "\\" in target:
        return None
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or any(ord(ch) < 32 for ch in target):
        return None
    return target


def home_for(role: str) -> str:
    if role == "specialist":
        return url_for("document.form")
    if role == "supervisor":
        return url_for("review.queue")
    return url_for("dashboard.index")


@roles("admin", "specialist", "auditor", "supervisor")
def index() -> Any:
    return redirect(home_for(me().role))


@bp.route("/login", methods=["GET", "POST"])
@public
def login() -> Any:
    next_url = safe_next(request.values.get("next"))
    if current_user.is_authenticated:
        return redirect(next_url or home_for(me().role))
    if request.method == "GET":
        return render_template("login.html", next=next_url, name="")
    name = request.form.get("name", "")
    password = request.form.get("password", "")
    cfg = current_app.config
    result = check_login(
        get_store(), name, password,
        address=request.remote_addr,
        max_failures_per_user=cfg["LOGIN_MAX_FAILURES"],
        max_failures_per_address=cfg["LOGIN_MAX_FAILURES_PER_ADDRESS"],
        window_s=cfg["LOGIN_WINDOW_S"],
    )
    if result.throttled:
        minutes = max(1, round(result.retry_after_s / 60))
        flash(f"Too many failed attempts. Try again in about {minutes} minute(s).", "error")
        response = current_app.make_response(
            (render_template("login.html", next=next_url, name=name), 429))
        response.headers["Retry-After"] = str(result.retry_after_s)
        return response
    if result.user is None:
        flash("Wrong user name or password.", "error")
        return render_template("login.html", next=next_url, name=name), 401
    sessions.start(current_app, result.user.id)  # a new server-side session: no fixation
    login_user(WebUser(result.user))
    return redirect(next_url or home_for(result.user.role))


@bp.post("/logout")
@roles("admin", "specialist", "auditor", "supervisor")
def logout() -> Any:
    logout_user()
    sessions.end()  # the row is deleted: the cookie names nothing any more
    flash("Logged out.", "info")
    return redirect(url_for("auth.login"))
