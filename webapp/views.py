"""What every page shares: the navigation, time formatting, error pages."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

from flask import Flask, jsonify, render_template, request
from flask_login import current_user
from flask_wtf.csrf import CSRFError
from werkzeug.exceptions import HTTPException

from connector import reasons

# (endpoint, label, roles): the navigation, in order.
NAV = (
    ("dashboard.index", "Dashboard", {"admin", "auditor"}),
    ("records.index", "Records", {"admin", "auditor", "specialist", "supervisor"}),
    ("document.form", "Document", {"specialist", "supervisor"}),
    ("review.queue", "Review", {"supervisor"}),
    ("matching.index", "Waiting for a match", {"admin"}),
    ("holds.consent", "Waiting for consent", {"admin", "auditor"}),
    ("holds.encounter", "Waiting for an encounter", {"admin", "auditor"}),
    ("audit.index", "Audit log", {"admin", "auditor"}),
    ("doctime.index", "Documentation time", {"admin", "auditor", "specialist", "supervisor"}),
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


def _is_current(endpoint: str) -> bool:
    """The nav item of the page shown (its blueprint; the holds pages one by one)."""
    shown = request.endpoint or ""
    if endpoint.startswith("holds."):
        return shown == endpoint
    return shown.split(".")[0] == endpoint.split(".")[0]


def field_id(name: str, suffix: str | int = "") -> str:
    """A form field's element id from its name (``participant.id`` -> ``f-participant-id``)."""
    base = "f-" + "".join(c if c.isalnum() or c in "-_" else "-" for c in name)
    return f"{base}-{suffix}" if suffix != "" else base


def date_range_errors(raw: dict[str, str], since: Any, until: Any) -> dict[str, list[str]]:
    """A filter form's date errors (fields ``from`` and ``to``), tied to the fields on the page.

    ``raw``: the dates as typed; ``since``/``until``: as parsed (None: empty or not a date).
    """
    errors: dict[str, list[str]] = {}
    for name, parsed in (("from", since), ("to", until)):
        if (raw.get(name) or "").strip() and parsed is None:
            errors[name] = [f"Enter the {name.title()} date as a date, e.g. 2026-11-23."]
    if since is not None and until is not None and since > until:
        errors["to"] = ["The To date must be on or after the From date."]
    return errors


def date_filters(args: dict[str, str]) -> tuple[Any, Any, dict[str, list[str]]]:
    """A filter form's From and To days (``args["from"]``, ``args["to"]``) and their errors.

    Valid days are written back to ``args`` as ISO dates; with an error, the typed text stays
    in ``args`` (shown again in the field) and neither day narrows the list.
    """
    from webapp import params

    since, until = params.parse_day(args.get("from")), params.parse_day(args.get("to"))
    errors = date_range_errors(args, since, until)
    if errors:
        return None, None, errors
    args["from"] = since.isoformat() if since else ""
    args["to"] = until.isoformat() if until else ""
    return since, until, errors


def init_app(app: Flask) -> None:
    app.jinja_env.filters["local"] = local
    app.jinja_env.filters["ago"] = ago
    app.jinja_env.filters["minutes"] = minutes
    app.jinja_env.filters["when"] = when
    app.jinja_env.filters["reason"] = reasons.label  # "words (code)": the code stays for support
    app.jinja_env.filters["reason_words"] = reasons.describe
    app.jinja_env.filters["fid"] = field_id

    @app.context_processor
    def navigation() -> dict[str, Any]:
        items = []
        if current_user.is_authenticated:
            items = [(endpoint, label, _is_current(endpoint)) for endpoint, label, roles in NAV
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
