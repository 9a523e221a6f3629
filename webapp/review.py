"""The review queue: a supervisor co-signs or returns the notes of the specialists they supervise.

Under the agency profile's ``[review] policy = "cosign"`` each new note version
waits (``waiting_review``) until a supervisor co-signs it here (or with
``peersync review approve``): it then goes on to the EHR, with the supervisor as
its authenticator where the EHR keeps one. A note returned with a comment is
never sent (``returned``); its author sees the comment on the record's page and
submits it again. A supervisor sees only the notes of the specialists they
supervise (all, when not limited), never their own. The page shows the note and
the participant's latest notes: PHI, to an authorised supervisor, in the page only.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from flask import Blueprint, abort, flash, redirect, render_template, request, url_for

from connector.review import MAX_COMMENT, ReviewRefused
from connector.store.review import Waiting
from webapp import get_store
from webapp.access import me, roles
from webapp.ehr import sync_pass
from webapp.views import agency_tz

bp = Blueprint("review", __name__, url_prefix="/review")


def supervised_ids(user_id: int) -> tuple[str, ...] | None:
    """The staff ids a supervisor account supervises; None: every specialist."""
    return get_store().supervised(user_id) or None


def may_review(specialist_id: str) -> bool:
    """The logged-in supervisor may co-sign (and see) this specialist's notes."""
    user = me()
    if user.role != "supervisor" or specialist_id == user.specialist_id:
        return False
    limited = supervised_ids(user.user.id)
    return limited is None or specialist_id in limited


def _name(payload: dict[str, Any]) -> str:
    person = payload.get("participant") or {}
    name = " ".join(p for p in (person.get("given"), person.get("family")) if p)
    return name or f"participant {person.get('id', '?')}"


def _day(value: datetime | None) -> str:
    return value.astimezone(agency_tz()).strftime("%-d %b") if value else ""


def _item(store: Any, waiting: Waiting, default_code: str) -> dict[str, Any]:
    payload = json.loads(waiting.payload)
    recent = []
    for row in store.recent_versions(waiting.source, waiting.participant_id,
                                     before=waiting.job_id):
        data = json.loads(row["payload"])
        recent.append({"job_id": row["job_id"], "day": _day(row["start_at"]),
                       "service": (data.get("service") or {}).get("code") or default_code,
                       "status": data.get("status", "completed"), "state": row["state"]})
    name = _name(payload)
    return {"job_id": waiting.job_id, "source": waiting.source, "record_id": waiting.record_id,
            "specialist_id": waiting.specialist_id, "participant": name,
            "day": _day(waiting.start_at), "start_at": waiting.start_at,
            "service": (payload.get("service") or {}).get("code") or default_code,
            "status": payload.get("status", "completed"), "note": payload.get("note") or {},
            "specialist": payload.get("specialist") or {}, "recent": recent,
            "label": f"{name}, {_day(waiting.start_at)}"}


@bp.get("/")
@roles("supervisor")
def queue() -> str:
    from webapp import peersync_profile

    user = me()
    store = get_store()
    limited = supervised_ids(user.user.id)
    waiting = [w for w in store.review_queue(specialist_ids=limited, limit=200)
               if w.specialist_id != user.specialist_id]
    default_code = peersync_profile().service_code
    items = [_item(store, w, default_code) for w in waiting]
    return render_template("review.html", items=items, supervises=limited,
                           max_comment=MAX_COMMENT)


def _waiting_job(job_id: int) -> Waiting:
    """The job's version if it waits for this supervisor's review; 404 otherwise."""
    found = [w for w in get_store().review_queue(limit=1000) if w.job_id == job_id]
    if not found or not may_review(found[0].specialist_id):
        abort(404)
    return found[0]


@bp.post("/<int:job_id>/cosign")
@roles("supervisor")
def cosign(job_id: int) -> Any:
    waiting = _waiting_job(job_id)
    user = me()
    try:
        signature = get_store().approve(waiting.record_version_id, user.user)
    except ReviewRefused as exc:
        flash(f"Not co-signed: {exc}.", "error")
        return redirect(url_for("review.queue"))
    flash(f"Co-signed record {waiting.record_id} at "
          f"{signature.at.astimezone(agency_tz()):%H:%M}: it goes to the EHR next.", "info")
    sync_pass(user.actor)
    return redirect(url_for("review.queue"))


@bp.post("/<int:job_id>/return")
@roles("supervisor")
def return_note(job_id: int) -> Any:
    waiting = _waiting_job(job_id)
    user = me()
    comment = request.form.get("comment", "").strip()
    if not comment:
        flash(f"Not returned: write a comment for the specialist of record "
              f"{waiting.record_id} (what should change).", "error")
        return redirect(url_for("review.queue") + f"#comment-{job_id}")
    try:
        get_store().return_note(waiting.record_version_id, user.user,
                                comment=comment[:MAX_COMMENT])
    except ReviewRefused as exc:
        flash(f"Not returned: {exc}.", "error")
        return redirect(url_for("review.queue"))
    flash(f"Returned record {waiting.record_id} to {waiting.specialist_id} with your comment: "
          "it will not be sent.", "info")
    return redirect(url_for("review.queue"))


@bp.app_template_global("review_box")
def review_box(job: dict[str, Any]) -> dict[str, Any] | None:
    """What the record page's review box shows (templates/_review_box.html), or None."""
    from connector.states import JobState

    store = get_store()
    decision = store.review_of(int(job["record_version_id"]))
    if decision is None and job["state"] != JobState.WAITING_REVIEW.value:
        return None
    box: dict[str, Any] = {"state": job["state"], "decision": decision}
    if decision is None:
        box["reviewers"] = _reviewers(store, job["specialist_id"])
    return box


def _reviewers(store: Any, specialist_id: str) -> list[str]:
    """The active supervisor accounts that may co-sign this specialist's notes."""
    from connector.accounts import list_users

    out = []
    for account in list_users(store):
        if account.role != "supervisor" or not account.active \
                or account.specialist_id == specialist_id:
            continue
        limited = store.supervised(account.id)
        if not limited or specialist_id in limited:
            out.append(account.name)
    return out
