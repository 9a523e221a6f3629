"""What every page shares: the navigation, time formatting, error pages."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

from flask import Flask, jsonify, render_template, request
from flask_login import current_user
from flask_wtf.csrf import CSRFError
from werkzeug.exceptions import HTTPException

# (endpoint, label, roles): the navigation, in order.
NAV = (
    ("dashboard.index", "Dashboard", {"admin", "auditor"}),
    ("records.index", "Records", {"admin", "auditor", "specialist"}),
    ("document.form", "Document", {"specialist"}),
    ("matching.index", "Waiting for a match", {"admin"}),
    ("holds.consent", "Waiting for consent", {"admin", "auditor"}),
    ("holds.encounter", "Waiting for an encounter", {"admin", "auditor"}),
    ("audit.index", "Audit log", {"admin", "auditor"}),
    ("doctime.index", "Documentation time", {"admin", "auditor", "specialist"}),
    ("settings.index", "Settings", {"admin"}),
)

MESSAGES = {
    400: "The request could not be understood.",
    403: "Your account's role does not give access to this page.",
    404: "There is nothing here.",
    405: "That action is not allowed here.",
    413: "The request is too large.",
    429: "Too many attempts; wait a while and try again.",
}


def agency_tz() -> ZoneInfo:
    from webapp import peersync_profile

    try:
        tz: ZoneInfo = peersync_profile().tz
    except Exception:  # noqa: BLE001 - a broken profile must not break every page
        return ZoneInfo("UTC")
    return tz


def local(value: datetime | None, fmt: str = "%Y-%m-%d %H:%M") -> str:
    if value is None:
        return ""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(agency_tz()).strftime(fmt)


def ago(value: datetime | None) -> str:
    if value is None:
        return "never"
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    seconds = max(0, int((datetime.now(UTC) - value).total_seconds()))
    for size, unit in ((86400, "day"), (3600, "hour"), (60, "minute")):
        if seconds >= size:
            n = seconds // size
            return f"{n} {unit}{'s' if n != 1 else ''} ago"
    return "just now"


def when(value: str | None) -> str:
    """A record's RFC 3339 time, shown in the agency's zone (the offset it was written with too)."""
    if not value:
        return ""
    from connector.records import parse_datetime

    try:
        moment = parse_datetime(value)
    except ValueError:
        return value
    shown = local(moment, "%Y-%m-%d %H:%M")
    offset = moment.strftime("%z")
    return shown if moment.utcoffset() == moment.astimezone(agency_tz()).utcoffset() \
        else f"{shown} (written {moment:%H:%M} UTC{offset[:3]}:{offset[3:]})"


def minutes(value: float | None) -> str:
    if value is None:
        return ""
    return f"{value:.0f}" if value >= 10 else f"{round(value, 1):g}"


def init_app(app: Flask) -> None:
    app.jinja_env.filters["local"] = local
    app.jinja_env.filters["ago"] = ago
    app.jinja_env.filters["minutes"] = minutes
    app.jinja_env.filters["when"] = when

    @app.context_processor
    def navigation() -> dict[str, Any]:
        items = []
        if current_user.is_authenticated:
            items = [(endpoint, label) for endpoint, label, roles in NAV
                     if current_user.role in roles]
        return {"nav_items": items, "tz_name": agency_tz().key}

    @app.errorhandler(CSRFError)
    def csrf_error(exc: CSRFError) -> Any:
        return render_template("error.html", code=400, title="Form expired",
                               message="This form was missing its security token or the token "
                               "has expired. Go back, reload the page and try again."), 400

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Any:
        code = exc.code or 500
        if request.path.startswith(("/api/", "/metrics")):
            response = jsonify(error=exc.name.lower().replace(" ", "_"),
                               message=exc.description)
            response.status_code = code
            return response
        if code in (301, 302, 303, 307, 308):
            return exc
        return render_template("error.html", code=code, title=exc.name,
                               message=MESSAGES.get(code, exc.description)), code
