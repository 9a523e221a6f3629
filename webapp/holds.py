"""Held back: records waiting for a participant's consent, or for the EHR's own Encounter.

Each list says what would release its records. An admin may record an active
consent (the same store function as ``peersync consent``) or ask for an
encounter look-up at once; auditors see the lists with ids only.
"""

from __future__ import annotations

from itertools import groupby
from typing import Any

from flask import Blueprint, abort, flash, redirect, render_template, request, url_for

from connector.reports import held_records
from connector.states import JobState
from webapp import get_store
from webapp.access import me, roles
from webapp.ehr import sync_pass

bp = Blueprint("holds", __name__, url_prefix="/holds")

Errors = dict[str, list[str]]  # field name -> messages, shown beside the field


def _by_participant(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    groups = []
    for (source, participant_id), items in groupby(
            rows, key=lambda r: (r["source"], r["participant_id"])):
        records = list(items)
        groups.append({"source": source, "participant_id": participant_id, "records": records,
                       "consent_status": records[0]["consent_status"],
                       "consent_updated": records[0]["consent_updated"]})
    return groups


def _refused(template: str, state: JobState, key: tuple[str, str], errors: Errors,
             values: dict[str, str]) -> tuple[str, int]:
    """The page again, the form that was sent showing its errors beside its fields and the
    values entered kept (400): nothing was recorded."""
    groups = _by_participant(held_records(get_store(), state))
    return render_template(template, groups=groups, can_act=True, failed=key, errors=errors,
                           values=values), 400


@bp.get("/consent")
@roles("admin", "auditor")
def consent() -> str:
    rows = held_records(get_store(), JobState.WAITING_CONSENT)
    return render_template("holds_consent.html", groups=_by_participant(rows),
                           can_act=me().role == "admin", failed=None, errors={}, values={})


@bp.post("/consent")
@roles("admin")
def record_consent() -> Any:
    source = request.form.get("source", "")
    participant_id = request.form.get("participant", "")
    consent_id = request.form.get("consent_id", "").strip() or None
    if not (source and participant_id):
        abort(400)
    if consent_id is not None and len(consent_id) > 64:
        abort(400)
    if request.form.get("confirm") != "on":
        return _refused("holds_consent.html", JobState.WAITING_CONSENT,
                        (source, participant_id), {"confirm": [
                            "Tick the box to confirm that the participant's written consent "
                            "is on file."]}, {"consent_id": consent_id or ""})
    user = me()
    released = get_store().set_consent(source=source, participant_id=participant_id,
                                       status="active", actor=user.actor,
                                       consent_id=consent_id)
    flash(f"Consent recorded for participant {participant_id} ({source}); "
          f"{released} record(s) released.", "info")
    sync_pass(user.actor)
    return redirect(url_for("holds.consent"))


@bp.get("/encounter")
@roles("admin", "auditor")
def encounter() -> str:
    rows = held_records(get_store(), JobState.WAITING_ENCOUNTER)
    return render_template("holds_encounter.html", groups=_by_participant(rows),
                           can_act=me().role == "admin", failed=None, errors={}, values={})


@bp.post("/encounter")
@roles("admin")
def look_again() -> Any:
    source = request.form.get("source", "")
    participant_id = request.form.get("participant", "")
    if not (source and participant_id):
        abort(400)
    user = me()
    released = get_store().release_waiting(
        JobState.WAITING_ENCOUNTER, actor=user.actor, why="encounter look-up asked for",
        source=source, participant_id=participant_id)
    flash(f"{released} record(s) of participant {participant_id} put back in line.", "info")
    sync_pass(user.actor)
    return redirect(url_for("holds.encounter"))


@bp.post("/encounter/link")
@roles("admin")
def link_encounter() -> Any:
    """Attach one record's note to the EHR Encounter the admin names (as `peersync link
    encounter`): for sessions with several EHR Encounters, or none found by time."""
    from connector.actions import link
    from connector.errors import EhrError
    from webapp.ehr import ehr_client

    source = request.form.get("source", "")
    record_id = request.form.get("record", "")
    encounter_id = request.form.get("encounter_id", "").strip()
    if not (source and record_id) or len(encounter_id) > 64:
        abort(400)
    key = (source, record_id)
    if not encounter_id:
        return _refused("holds_encounter.html", JobState.WAITING_ENCOUNTER, key,
                        {"encounter_id": ["Enter the EHR's Encounter id."]}, {})
    user = me()
    try:
        with ehr_client() as client:
            linked = link(get_store(), client, "encounter", f"{source}|{record_id}",
                          "Encounter", encounter_id, JobState.WAITING_ENCOUNTER,
                          actor=user.actor, source=source, record_id=record_id)
    except (EhrError, ValueError) as exc:
        return _refused("holds_encounter.html", JobState.WAITING_ENCOUNTER, key,
                        {"encounter_id": [f"Encounter/{encounter_id} could not be linked: {exc}"]},
                        {"encounter_id": encounter_id})
    flash(f"Record {record_id} linked to {linked.reference}; {linked.released} record(s) "
          "released.", "info")
    sync_pass(user.actor)
    return redirect(url_for("holds.encounter"))
