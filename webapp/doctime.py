"""Documentation time: per specialist and ISO week, in the agency's time zone.

Minutes spent documenting (the documentation interval or stated minutes of
each note version), notes written, and minutes saved: every note version that
reached the EHR x the profile's re-entry minutes, the time it would have taken
to type it again into the EHR. Specialists see their own rows.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta

from flask import Blueprint, render_template, request

from connector.reports import documentation_time, weekly_totals
from webapp import get_store, params, peersync_profile
from webapp.access import AUTHORS, me, roles
from webapp.charts import bar_chart
from webapp.views import agency_tz

bp = Blueprint("doctime", __name__, url_prefix="/documentation-time")

DEFAULT_WEEKS = 12


def _day(value: str | None) -> date | None:
    return params.parse_day(value)  # clamped into a range every page can compute with


@bp.get("/")
@roles("admin", "auditor", *AUTHORS)
def index() -> str:
    user = me()
    tz = agency_tz()
    today = datetime.now(tz).date()
    until = _day(request.args.get("to")) or today
    since = _day(request.args.get("from")) or (
        until - timedelta(days=until.weekday()) - timedelta(weeks=DEFAULT_WEEKS - 1))
    if since > until:
        since, until = until, since
    specialist = (request.args.get("specialist") or "").strip() or None
    if user.role in AUTHORS:
        specialist = user.specialist_id
    profile = peersync_profile()
    rows = documentation_time(get_store(), tz=tz, reentry_minutes=profile.reentry_minutes,
                              since=since, until=until, specialist_id=specialist)
    weeks = weekly_totals(rows)
    chart = bar_chart(
        [w.week for w in weeks],
        [("minutes documenting", [w.minutes for w in weeks]),
         ("minutes saved (no re-entry)", [w.saved for w in weeks])],
        title="Documentation time per week", unit="minutes",
    )
    totals = weekly_totals([*rows])
    grand = {
        "notes": sum(w.notes for w in totals), "timed": sum(w.timed for w in totals),
        "minutes": sum(w.minutes for w in totals), "synced": sum(w.synced for w in totals),
        "saved": sum(w.saved for w in totals),
    }
    return render_template("doctime.html", rows=rows, weeks=weeks, chart=chart, grand=grand,
                           since=since, until=until, specialist=specialist or "",
                           reentry=profile.reentry_minutes, tz_key=tz.key,
                           fixed_specialist=user.role in AUTHORS)
