"""Settings (admins): the EHR connection and the capability profile, secrets masked;
"test connection" runs the same checks as ``peersync config check``."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, render_template

from connector.setup_check import check_setup, render_config
from webapp import get_store, peersync_config, peersync_profile, peersync_wiring
from webapp.access import roles
from webapp.ehr import ehr_client

bp = Blueprint("settings", __name__, url_prefix="/settings")


def _page(report: Any = None) -> str:
    from connector.writeplan import resolve_plan

    config = peersync_config()
    profile = peersync_profile()
    # the plan resolved against the EHR's statement after a test, else from the config alone
    plan = report.plan if report is not None and report.plan is not None else \
        resolve_plan(config.ehr, folder=config.folder)
    return render_template("settings.html", config_text=render_config(config),
                           profile=profile, config=config, report=report, plan=plan,
                           plan_rows=plan.rows(create_patients=profile.create_patients))


@bp.get("/")
@roles("admin")
def index() -> str:
    return _page()


@bp.post("/test")
@roles("admin")
def test_connection() -> str:
    config = peersync_config()
    report = check_setup(config, profile=peersync_profile(), store=get_store(),
                         client_factory=ehr_client, wiring=peersync_wiring())
    return _page(report)
