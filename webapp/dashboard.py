"""Dashboard: the sync at a glance (states, queue, last sync, oldest waiting, EHR, per day)."""

from __future__ import annotations

from flask import Blueprint, render_template

from connector import gate
from connector.reports import dashboard
from connector.states import ALL_STATES
from webapp import get_store
from webapp.access import roles
from webapp.charts import bar_chart
from webapp.ehr import ehr_status
from webapp.views import agency_tz

bp = Blueprint("dashboard", __name__, url_prefix="/dashboard")

# what each waiting state's link on the "Waiting" card says ("3 records waiting for ...")
WAITING_WORDS = {
    "waiting_patient": "waiting for a participant match",
    "waiting_staff": "waiting for a practitioner match",
    "waiting_consent": "waiting for the participant's consent",
    "waiting_encounter": "waiting for an EHR encounter",
    "waiting_review": "waiting for a supervisor's review",
}


@bp.get("/")
@roles("admin", "auditor")
def index() -> str:
    data = dashboard(get_store(), tz=agency_tz(), days=14)
    chart = bar_chart(
        [day.strftime("%d %b") for day, _ in data.synced_per_day],
        [("synced", [float(n) for _, n in data.synced_per_day])],
        title="Records synced per day",
        unit="records",
    )
    store = get_store()
    outage = gate.read(store)
    waiting = 0 if outage.is_open else gate.waiting_count(store)
    return render_template("dashboard.html", data=data, states=ALL_STATES, ehr=ehr_status(),
                           chart=chart, outage=outage, outage_waiting=waiting,
                           waiting_words=WAITING_WORDS)
