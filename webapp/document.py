"""Document once: a specialist's form for one encounter and its note, with its caseload
and drafts (amendments, retractions and resubmissions: webapp.amend).

The form is checked by the same intake code as files and the API
(:func:`connector.intake.validate_record`, source ``web-form``), and each error is
shown next to its field and in a summary that links to it. The specialist is the
account's own staff id, never a form field. The signed start (webapp.docform) carries
the record's id, so submitting the same form twice stores one record, and a draft's
id, so a resumed draft's time adds to what it had.

- Caseload: the specialist's participants, from its earlier records (the latest
  details of each) and whether an admin linked them; a search box (GET) by name or id;
  "Use <name>" fills the participant's fields on the server (``?participant=ID``).
  A participant not in the caseload is typed as before.
- Drafts: "Save draft" keeps the form on the server with the time counted so far;
  "Resume" opens it again (a new interval starts), "Delete" drops it; submitting a
  resumed draft deletes it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from flask import Blueprint, abort, flash, redirect, request, url_for

from connector.reports import record_states
from webapp import WEB_SOURCE, get_store
from webapp import docform as df
from webapp.access import AUTHORS, me, roles

bp = Blueprint("document", __name__, url_prefix="/document")
SALT = df.SALT  # the signed start's salt (tests sign starts with it)

CASELOAD_SIZE = 20


def _page_extras(query: str) -> dict[str, Any]:
    """The caseload (searched), the drafts and the recent notes shown beside a new note."""
    user = me()
    store = get_store()
    specialist = user.specialist_id or ""
    return {
        "query": query,
        "caseload": store.caseload(specialist, query, limit=CASELOAD_SIZE) if specialist
        else [],
        "drafts": [dict(d, label=draft_label(d), resume=resume_url(d))
                   for d in store.drafts_of(user.user.id)],
        "recent": store.recent_notes(specialist) if specialist else [],
    }


def draft_label(draft: dict[str, Any]) -> str:
    fields = draft["fields"]
    who = " ".join(x for x in (fields.get("participant.given"),
                               fields.get("participant.family")) if x)
    who = who or fields.get("participant.id") or "no participant yet"
    kind = {"amend": "amendment of ", "resubmit": "resubmission of "}.get(draft["mode"], "")
    return f"{kind}{who}" + (f", {fields['date']}" if fields.get("date") else "")


def resume_url(draft: dict[str, Any]) -> str:
    if draft["mode"] == "new":
        return url_for("document.form", draft=draft["id"])
    return url_for(f"amend.{draft['mode']}_form", record_id=draft["record_id"],
                   draft=draft["id"])


def save_draft(values: dict[str, str], start: df.Start, *, mode: str,
               record_id: str | None = None) -> Any:
    """Keep the form as a draft, counting this interval; back to the form page."""
    user = me()
    saved = get_store().save_draft(
        user_id=user.user.id, fields=values, started=start.started, now=df.now(),
        cap_s=df.INTERVAL_CAP_S, mode=mode, record_id=record_id, nonce=start.nonce,
        draft_id=start.draft_id)
    if saved is None:
        flash("That draft was deleted or submitted meanwhile; nothing was saved.", "error")
    else:
        flash(f"Draft saved ({saved['documentation_s'] / 60:.0f} min of documentation so "
              "far). Resume it from the list below.", "info")
    return redirect(url_for("document.form") + "#drafts")


@bp.get("/")
@roles(*AUTHORS)
def form() -> Any:
    user = me()
    values = df.blank_values()
    start_args: dict[str, Any] = {}
    query = (request.args.get("q") or "").strip()[:100]
    draft_id = request.args.get("draft", type=int)
    chosen = (request.args.get("participant") or "").strip()[:64]
    if draft_id is not None:
        draft = get_store().get_draft(user.user.id, draft_id)
        if draft is None or draft["mode"] != "new":
            abort(404)
        values.update(draft["fields"])
        start_args = {"nonce": draft["nonce"], "draft_id": draft["id"]}
    elif chosen and user.specialist_id:
        participant = get_store().participant_of(user.specialist_id, chosen)
        if participant is None:
            abort(404)  # only this specialist's own participants
        df.fill_participant(values, participant)
    return df.render_form(mode="new", action=url_for("document.submit"), values=values,
                          errors={}, general=[], resumed=draft_id, lists=True,
                          started=df.issue_start(user.user.id, **start_args),
                          **_page_extras(query))


@bp.post("/")
@roles(*AUTHORS)
def submit() -> Any:
    user = me()
    values = df.form_values()
    token = request.form.get("started", "")
    try:
        start = df.read_start(token, user.user.id)
    except df.StartInvalid as exc:  # keep what was typed; time it again from now
        return df.render_form(mode="new", action=url_for("document.submit"), values=values,
                              errors={}, general=[df.start_message(exc)],
                              started=df.issue_start(user.user.id), status=400)
    if start.record_id is not None:
        abort(400)  # an amendment's start, not a new note's
    if request.form.get("action") == "draft":
        return save_draft(values, start, mode="new")
    record_id = f"wf-{start.nonce}"
    saved = record_states(get_store(), WEB_SOURCE, [record_id]).get(record_id)
    if saved:  # this form was submitted already (a double click, a reload)
        flash("This form was already saved.", "info")
        return redirect(url_for("records.detail", job_id=saved[-1]["id"]))
    record, errors, general = checked(values, start, record_id, note_id=record_id,
                                      note_version=1)
    if record is not None:
        return df.save_record(record, draft_id=start.draft_id)
    return df.render_form(mode="new", action=url_for("document.submit"), values=values,
                          errors=errors, general=general, started=token, status=422,
                          resumed=start.draft_id)


def checked(values: dict[str, str], start: df.Start, record_id: str, *, note_id: str,
            note_version: int) -> tuple[Any, dict[str, list[str]], list[str]]:
    """The record from the form (or its errors): the form's own checks, then intake's."""
    finished: datetime = df.now()
    draft = get_store().get_draft(me().user.id, start.draft_id) \
        if start.draft_id is not None else None
    obj, errors = df.build(values, record_id, note_id=note_id, note_version=note_version,
                           finished=finished, timing=df.documentation(start, finished, draft))
    errors.update(df.new_status_error(values, df.NEW_STATUSES))
    record, general = df.check(obj, errors)
    return record, errors, general


@bp.post("/drafts/<int:draft_id>/delete")
@roles(*AUTHORS)
def delete_draft(draft_id: int) -> Any:
    if get_store().delete_draft(me().user.id, draft_id):
        flash("Draft deleted.", "info")
    else:
        flash("That draft was deleted or submitted already.", "error")
    return redirect(url_for("document.form") + "#drafts")
