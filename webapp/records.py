"""Records: every record version and its sync state; one record's attempts; retry.

Specialists see only their own records (by the staff id their account is
tied to). Names, birth dates, MRNs, note text and the EHR's OperationOutcome
text are shown to admins and to the record's own specialist; auditors see ids
and codes.
"""

from __future__ import annotations

import json
from datetime import date, datetime, time, timedelta
from typing import Any

from flask import Blueprint, abort, flash, redirect, render_template, request, url_for

from connector import reasons
from connector.reports import (
    RecordDetail,
    RecordQuery,
    count_records,
    filter_choices,
    record_detail,
    records_page,
    state_counts,
)
from connector.states import ALL_STATES, WAITING_STATES, JobState
from webapp import get_store, params, peersync_config
from webapp.access import me, roles, supervisor_staff
from webapp.ehr import sync_pass
from webapp.views import agency_tz, date_filters

bp = Blueprint("records", __name__, url_prefix="/records")

FILTERS = ("state", "specialist", "source", "from", "to", "q")


def _bound(day: date | None, *, next_day: bool = False) -> datetime | None:
    if day is None:
        return None
    if next_day:
        day += timedelta(days=1)
    return datetime.combine(day, time.min, agency_tz())


@bp.get("/")
@roles("admin", "auditor", "specialist", "supervisor")
def index() -> str:
    user = me()
    args = {k: (request.args.get(k) or "").strip() for k in FILTERS}
    if args["state"] not in ALL_STATES:
        args["state"] = ""
    if user.role == "specialist":
        args["specialist"] = user.specialist_id or ""
    allowed = supervisor_staff(user) if user.role == "supervisor" else None
    if allowed is not None and args["specialist"] not in allowed:
        args["specialist"] = user.specialist_id or ""  # a supervisor: own and supervised only
    since, until, errors = date_filters(args)  # errors: shown beside the fields
    query = RecordQuery(
        state=args["state"] or None,
        specialist_id=args["specialist"] or None,
        source=args["source"] or None,
        since=_bound(since),
        until=_bound(until, next_day=True),
        text=args["q"][:200] or None,
        search_outcome_text=user.sees_phi,
    )
    # pages by cursor (the pager's links: ?before= / ?after= a job id); ?page=N still works
    page = params.page_arg()
    before, after = params.cursor_arg("before"), params.cursor_arg("after")
    store = get_store()
    counts = state_counts(store) if user.role != "specialist" else None
    listing = records_page(store, query, size=50, before=before, after=after, page=page)
    sources, staff = filter_choices(store)
    if user.role == "specialist":
        staff = [user.specialist_id or ""]
    elif allowed is not None:
        staff = list(allowed)
    filters = {k: v for k, v in args.items() if v}
    return render_template(
        "records.html",
        rows=listing.rows,
        # the pager's links: these filters and a cursor
        newer=dict(filters, **listing.newer) if listing.newer else None,
        older=dict(filters, **listing.older) if listing.older else None,
        # a state's total is its count above; a search's came with its first page
        total=listing.total if listing.total is not None else count_records(store, query, counts),
        args=args,
        filters=filters,
        states=ALL_STATES,
        sources=sources,
        staff=staff,
        counts=counts,
        errors=errors,
        # kept for the first page's template and its tests
        state=args["state"] or None,
    )


def _own_detail(job_id: int) -> RecordDetail:
    """The record, or 404 for one that does not exist or (to a specialist) is not its own."""
    detail = record_detail(get_store(), job_id)
    user = me()
    if detail is None or (user.role == "specialist"
                          and detail.job["specialist_id"] != user.specialist_id) or (
            user.role == "supervisor"
            and detail.job["specialist_id"] not in (supervisor_staff(user)
                                                    or (detail.job["specialist_id"],))):
        abort(404)
    return detail


def _redacted(payload: dict[str, Any]) -> dict[str, Any]:
    """Ids and codes only (for auditors): no names, birth dates, MRNs or note text."""
    participant = payload.get("participant") or {}
    specialist = payload.get("specialist") or {}
    note = payload.get("note") or {}
    return {
        "participant": {"id": participant.get("id")},
        "specialist": {"id": specialist.get("id"), "npi": specialist.get("npi"),
                       "credential": specialist.get("credential")},
        "service": payload.get("service") or {},
        "start": payload.get("start"),
        "end": payload.get("end"),
        "status": payload.get("status", "completed"),
        "note": {k: note[k] for k in ("id", "version", "content_type", "signed_at",
                                      "documentation_minutes") if k in note},
        "goals": payload.get("goals") or [],
        "part2": payload.get("part2", False),
        "consent": payload.get("consent") or {},
    }


@bp.get("/<int:job_id>")
@roles("admin", "auditor", "specialist", "supervisor")
def detail(job_id: int) -> str:
    record = _own_detail(job_id)
    user = me()
    payload = json.loads(record.job.pop("payload"))
    shown = dict(payload) if user.sees_phi else _redacted(payload)
    for key, empty in (("service", {}), ("consent", {}), ("goals", []), ("specialist", {})):
        if not shown.get(key):
            shown[key] = empty
    store = get_store()
    ledger = store.ledger_for_record(record.job["source"], record.job["record_id"])
    from connector.writeplan import resolve_plan

    base_url = peersync_config().ehr.base_url
    refresh = record.job["state"] in (JobState.PENDING.value, JobState.IN_FLIGHT.value)
    return render_template(
        "record.html",
        record=record,
        job=record.job,
        record_data=shown,
        sees_phi=user.sees_phi,
        outcome_text=record.outcome_text if user.sees_phi else None,
        attempts=record.attempts,
        ledger=ledger,
        base_url=base_url,
        # the preset's mode unless [ehr] mode overrides it (no EHR request for "auto")
        mode=resolve_plan(peersync_config().ehr, folder=peersync_config().folder).mode,
        can_retry=user.role in ("admin", "specialist")
        and record.job["state"] == JobState.NEEDS_ATTENTION.value,
        refresh=refresh,
    )


@bp.post("/<int:job_id>/retry")
@roles("admin", "specialist")
def retry(job_id: int) -> Any:
    _own_detail(job_id)
    user = me()
    count = get_store().requeue([job_id], actor=user.actor)
    if count:
        sync_pass(user.actor)
        after = record_detail(get_store(), job_id)
        flash(*_retry_outcome(after.job if after else {}))
    else:
        flash("Only a record that needs attention can be retried.", "error")
    return redirect(url_for("records.detail", job_id=job_id))


def _retry_outcome(job: dict[str, Any]) -> tuple[str, str]:
    """What a retry did, honestly: sent and taken, sent and refused again, or only queued."""
    state, why = job.get("state"), reasons.label(job.get("reason"))
    if state == JobState.SYNCED.value:
        return "Sent again: the EHR has it now.", "info"
    if state == JobState.NEEDS_ATTENTION.value:
        return f"Sent again and refused again: {why or 'see the EHR answer below'}.", "error"
    if state in WAITING_STATES:
        return f"Re-queued for the EHR; it waits again: {why}.", "info"
    if state == JobState.RETRY_SCHEDULED.value:
        return ("Re-queued for the EHR; the EHR did not take it now "
                f"({why or 'unreachable'}), it is tried again later."), "info"
    return "Re-queued for the EHR: the next sync sends it.", "info"
