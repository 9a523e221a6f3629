"""Amend, retract or resubmit a note written in this app (source ``web-form``).

Only the record's own specialist acts on it, and only on its latest version; each
action stores a new record version through the intake path every channel uses
(:func:`connector.intake.validate_record`, then ``Store.add_records``):

- amend: the form prefilled from the latest version; the new version's
  ``note.version`` is the latest + 1 (the EHR keeps the old note as superseded);
- retract: the latest version again with ``status: entered_in_error`` (the EHR's
  resources are marked entered-in-error), with a required reason: a code from
  :data:`RETRACT_REASONS`, kept in the audit log (never free text, never in logs);
- resubmit: only when the latest version was returned by a supervisor; the same
  ``note.version`` with new content, a new record version.

Records from other sources are amended in the tool they came from, which owns their
versions: the record page offers no action for them.
"""

from __future__ import annotations

import json
from typing import Any

from flask import Blueprint, abort, flash, redirect, request, url_for

from connector.errors import RecordInvalid
from connector.intake import validate_record
from webapp import WEB_SOURCE, get_store
from webapp import docform as df
from webapp.access import AUTHORS, me, roles
from webapp.document import checked, save_draft
from webapp.outcomes import outcome

bp = Blueprint("amend", __name__, url_prefix="/document")

RETURNED = "returned"  # the job state of a version a supervisor returned (review)
RETRACTED = "entered_in_error"
RETRACT_REASONS = {
    "wrong-participant": "written for the wrong participant",
    "wrong-session": "the wrong date or time of the session",
    "duplicate": "a duplicate of another note",
    "did-not-happen": "the session did not take place",
    "other-error": "another error that an amendment cannot fix",
}
TITLES = {"amend": "Amend note", "resubmit": "Resubmit note"}


def _latest_own(record_id: str) -> dict[str, Any]:
    """The latest version of this specialist's own web-form record, or 404."""
    latest = get_store().latest_version(WEB_SOURCE, record_id)
    if latest is None or me().role not in AUTHORS \
            or latest["specialist_id"] != me().specialist_id:
        abort(404)
    return latest


def _allowed(mode: str, latest: dict[str, Any]) -> bool:
    if latest["status"] == RETRACTED:
        return False
    if mode == "resubmit":
        return bool(latest["state"] == RETURNED)
    return bool(latest["state"] != RETURNED)  # a returned note is resubmitted instead


def _refuse(mode: str, latest: dict[str, Any]) -> Any:
    if latest["status"] == RETRACTED:
        flash("This note was retracted; it cannot be changed.", "error")
    elif mode == "resubmit":
        flash("Only a note your supervisor returned can be resubmitted.", "error")
    else:
        flash("A returned note is resubmitted, not amended: use Resubmit.", "error")
    return redirect(url_for("records.detail", job_id=latest["job_id"]))


def _version(mode: str, latest: dict[str, Any]) -> int:
    current = int(latest["note_version"] or 0)
    return current + 1 if mode == "amend" else max(current, 1)


def _form(mode: str, record_id: str) -> Any:
    latest = _latest_own(record_id)
    if not _allowed(mode, latest):
        return _refuse(mode, latest)
    user = me()
    payload = json.loads(latest["payload"])
    values = df.payload_values(payload)
    start: dict[str, Any] = {"record_id": record_id, "base_job": latest["job_id"]}
    draft_id = request.args.get("draft", type=int)
    if draft_id is not None:
        draft = get_store().get_draft(user.user.id, draft_id)
        if draft is None or draft["mode"] != mode or draft["record_id"] != record_id:
            abort(404)
        values.update(draft["fields"])
        start.update(nonce=draft["nonce"], draft_id=draft_id)
    return _render(mode, record_id, latest, values, {}, [],
                   df.issue_start(user.user.id, **start))


def _render(mode: str, record_id: str, latest: dict[str, Any], values: dict[str, Any],
            errors: dict[str, list[str]], general: list[str], started: str,
            status: int = 200) -> Any:
    return df.render_form(
        mode=mode, action=url_for(f"amend.{mode}_submit", record_id=record_id),
        values=values, errors=errors, general=general, started=started, status=status,
        record_id=record_id, title=TITLES[mode], note_version=_version(mode, latest),
        latest_job=latest["job_id"], resumed=None)


def _submit(mode: str, record_id: str) -> Any:
    latest = _latest_own(record_id)
    if not _allowed(mode, latest):
        return _refuse(mode, latest)
    user = me()
    values = df.form_values()
    token = request.form.get("started", "")
    try:
        start = df.read_start(token, user.user.id)
    except df.StartInvalid as exc:
        return _render(mode, record_id, latest, values, {}, [df.start_message(exc)],
                       df.issue_start(user.user.id, record_id=record_id,
                                      base_job=latest["job_id"]), 400)
    if start.record_id != record_id:
        abort(400)  # a start issued for another form
    if request.form.get("action") == "draft":
        return save_draft(values, start, mode=mode, record_id=record_id)
    if start.base_job != latest["job_id"]:  # saved already, or changed elsewhere meanwhile
        flash("This note has a newer version than the one this form was opened on; "
              "nothing was saved. Open it again to change it.", "error")
        return redirect(url_for("records.detail", job_id=latest["job_id"]))
    note = json.loads(latest["payload"]).get("note") or {}
    record, errors, general = checked(values, start, record_id,
                                      note_id=note.get("id") or record_id,
                                      note_version=_version(mode, latest))
    if record is not None:
        return df.save_record(record, draft_id=start.draft_id)
    return _render(mode, record_id, latest, values, errors, general, token, 422)


def _routes(mode: str) -> None:
    """GET and POST /document/<record id>/<mode>: the form, and its submit or draft."""

    @roles(*AUTHORS)
    def form_view(record_id: str) -> Any:
        return _form(mode, record_id)

    @roles(*AUTHORS)
    def submit_view(record_id: str) -> Any:
        return _submit(mode, record_id)

    bp.add_url_rule(f"/<record_id>/{mode}", f"{mode}_form", form_view, methods=["GET"])
    bp.add_url_rule(f"/<record_id>/{mode}", f"{mode}_submit", submit_view, methods=["POST"])


for _mode in TITLES:  # amend, resubmit
    _routes(_mode)


@bp.post("/<record_id>/retract")
@roles(*AUTHORS)
def retract(record_id: str) -> Any:
    latest = _latest_own(record_id)
    reason = request.form.get("reason", "")
    if latest["status"] == RETRACTED:
        flash("This note was retracted already.", "error")
        return redirect(url_for("records.detail", job_id=latest["job_id"]))
    if reason not in RETRACT_REASONS:
        flash("Choose why the note is retracted; nothing was changed.", "error")
        return redirect(url_for("records.detail", job_id=latest["job_id"]) + "#retract")
    payload = json.loads(latest["payload"])
    payload["status"] = RETRACTED
    for key in ("documentation_minutes", "documentation_started", "documentation_finished"):
        (payload.get("note") or {}).pop(key, None)  # no second count of the note's time
    try:
        record = validate_record(payload, source=WEB_SOURCE)
    except RecordInvalid:  # a stored version is valid; its retraction too
        abort(500)
    store = get_store()
    user = me()
    store.add_records([record], actor=user.actor)
    retracted = store.latest_version(WEB_SOURCE, record_id)
    assert retracted is not None
    store.note_retraction(actor=user.actor, source=WEB_SOURCE, record_id=record_id,
                          record_version_id=retracted["record_version_id"],
                          job_id=retracted["job_id"], reason=reason)
    return df.save_record(record, draft_id=None)


@bp.app_template_global("record_actions")
def record_actions(job: dict[str, Any]) -> dict[str, Any]:
    """What the record page offers for this version: where it is (in words), and to its
    own specialist, on a web-form record's latest version, amend/retract/resubmit."""
    store = get_store()
    result = outcome(job["state"], job.get("reason"), job.get("status"))
    out: dict[str, Any] = {"outcome": result, "source": job["source"],
                           "web_form": job["source"] == WEB_SOURCE, "amend": False,
                           "retract": False, "resubmit": False, "reasons": RETRACT_REASONS,
                           "retractions": [], "newer": None}
    if not out["web_form"]:
        return out
    out["retractions"] = [dict(r, words=RETRACT_REASONS.get(r["reason"], r["reason"]))
                          for r in store.retractions(WEB_SOURCE, job["record_id"])]
    user = me()
    if user.role not in AUTHORS or job.get("specialist_id") != user.specialist_id:
        return out
    latest = store.latest_version(WEB_SOURCE, job["record_id"])
    if latest is None:
        return out
    if latest["job_id"] != job["id"]:
        out["newer"] = latest["job_id"]
        return out
    out["amend"] = _allowed("amend", latest)
    out["resubmit"] = _allowed("resubmit", latest)
    out["retract"] = latest["status"] != RETRACTED
    return out
