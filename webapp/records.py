"""Records: every record version and its sync state."""

from __future__ import annotations

from flask import Blueprint, render_template, request

from connector.states import ALL_STATES
from webapp import get_store

bp = Blueprint("records", __name__, url_prefix="/records")


@bp.get("/")
def index() -> str:
    store = get_store()
    state = request.args.get("state") or None
    if state not in (None, *ALL_STATES):
        state = None
    page = max(1, request.args.get("page", 1, type=int) or 1)
    size = 50
    rows = store.jobs_overview(state=state, limit=size + 1, offset=(page - 1) * size)
    return render_template(
        "records.html",
        rows=rows[:size],
        has_next=len(rows) > size,
        page=page,
        state=state,
        states=ALL_STATES,
        counts=store.counts_by_state(),
    )
