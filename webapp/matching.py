"""Waiting for a match: participants without an EHR Patient, specialists without a Practitioner.

An admin searches the EHR (name, birth date, MRN or staff id) and links one
of the results; the link is checked and stored, and the waiting records are
released, by the same function as ``peersync link`` (connector.actions).
"""

from __future__ import annotations

import json
from typing import Any

from flask import Blueprint, abort, flash, redirect, render_template, request, url_for

from connector.actions import link_patient, link_staff
from connector.errors import ConfigError, EhrError
from connector.reports import waiting_participants, waiting_specialists
from webapp import get_store, peersync_profile
from webapp.access import me, roles
from webapp.ehr import ehr_client, sync_pass

bp = Blueprint("matching", __name__, url_prefix="/matching")

MAX_RESULTS = 20


def _participant_details(rows: list[dict[str, Any]]) -> None:
    """Add the latest record's participant (name, birth date, MRN) to each row: admins only."""
    store = get_store()
    records = store.load_records([row["latest_version"] for row in rows])
    for row in rows:
        record = records.get(row["latest_version"])
        row["participant"] = record.participant if record else None


def _name(resource: dict[str, Any]) -> str:
    for name in resource.get("name") or []:
        if not isinstance(name, dict):
            continue
        if name.get("text"):
            return str(name["text"])
        given = " ".join(str(g) for g in name.get("given") or [])
        return " ".join(p for p in (given, str(name.get("family") or "")) if p)
    return ""


def _identifiers(resource: dict[str, Any]) -> list[str]:
    out = []
    for ident in resource.get("identifier") or []:
        if isinstance(ident, dict) and ident.get("value"):
            out.append(str(ident["value"]))
    return out


def _search(resource_type: str, params: dict[str, str]) -> tuple[list[dict[str, Any]], str | None]:
    """Search the EHR; each word of a name is its own ``name=`` (FHIR ANDs repeated parameters,
    and matches each against any part of the name)."""
    if not params:
        return [], None
    params = dict(params)
    pairs = [("name", word) for word in params.pop("name", "").split()]
    pairs += [*params.items(), ("_count", str(MAX_RESULTS))]
    try:
        with ehr_client() as client:
            found = client.search(resource_type, pairs, max_pages=1)
    except (EhrError, ConfigError) as exc:
        return [], f"The EHR search failed: {exc}"
    return [{"id": r.get("id"), "name": _name(r), "birth_date": r.get("birthDate"),
             "identifiers": _identifiers(r), "gender": r.get("gender")}
            for r in found[:MAX_RESULTS]], None


@bp.get("/")
@roles("admin")
def index() -> str:
    participants = waiting_participants(get_store())
    _participant_details(participants)
    staff = waiting_specialists(get_store())
    return render_template("matching.html", participants=participants, staff=staff)


def _waiting_participant(source: str, participant_id: str) -> dict[str, Any]:
    wanted = next((row for row in waiting_participants(get_store())
                   if row["source"] == source and row["participant_id"] == participant_id), None)
    if wanted is None:
        abort(404)
    _participant_details([wanted])
    return wanted


def _search_errors(asked: bool, params: dict[str, str], error: str | None,
                   nothing: str) -> dict[str, list[str]]:
    """The search form's errors, tied to its first field: nothing to search by, or the EHR's."""
    if asked and not params:
        return {"name": [nothing]}
    return {"name": [error]} if error else {}


def _patient_page(wanted: dict[str, Any], form: dict[str, str], *, asked: bool = False) -> str:
    params: dict[str, str] = {}
    if form["name"].strip():
        params["name"] = form["name"].strip()
    if form["birthdate"].strip():
        params["birthdate"] = form["birthdate"].strip()
    if form["mrn"].strip():
        params["identifier"] = f"{peersync_profile().mrn_system}|{form['mrn'].strip()}"
    results, error = _search("Patient", params)
    errors = _search_errors(asked, params, error, "Give a name, a birth date or an MRN to search.")
    return render_template("match_patient.html", row=wanted, form=form, results=results,
                           error=error, errors=errors, searched=bool(params) and not error)


@bp.get("/patient")
@roles("admin")
def patient() -> str:
    """Search the EHR's Patients for one waiting participant, with what its record says.

    The URL carries ids only (source, participant id): names, birth dates and MRNs would
    land in every access log on the way. The admin's own search is a POST (below).
    """
    wanted = _waiting_participant(request.args.get("source", ""),
                                  request.args.get("participant", ""))
    person = wanted["participant"]
    form = {
        "name": " ".join(p for p in (person.given, person.family) if p) if person else "",
        "birthdate": person.birth_date.isoformat() if person and person.birth_date else "",
        "mrn": (person.mrn or "") if person else "",
    }
    return _patient_page(wanted, form)


@bp.post("/patient/search")
@roles("admin")
def search_patient() -> str:
    """The admin's search (name, birth date, MRN): a CSRF-checked POST, never a query string."""
    wanted = _waiting_participant(request.form.get("source", ""),
                                  request.form.get("participant", ""))
    form = {key: request.form.get(key, "")[:200] for key in ("name", "birthdate", "mrn")}
    return _patient_page(wanted, form, asked=True)


@bp.post("/patient")
@roles("admin")
def link_patient_view() -> Any:
    source = request.form.get("source", "")
    participant_id = request.form.get("participant", "")
    patient_id = request.form.get("patient_id", "").strip()
    if not (source and participant_id and patient_id):
        abort(400)
    user = me()
    try:
        with ehr_client() as client:
            linked = link_patient(get_store(), client, source=source,
                                  participant_id=participant_id, patient_id=patient_id,
                                  actor=user.actor)
    except (EhrError, ConfigError) as exc:
        flash(f"Not linked: {exc}", "error")
        return redirect(url_for("matching.patient", source=source, participant=participant_id))
    flash(f"Linked participant {participant_id} ({source}) to {linked.reference}; "
          f"{linked.released} waiting record(s) released.", "info")
    sync_pass(user.actor)
    return redirect(url_for("matching.index"))


@bp.get("/staff")
@roles("admin")
def staff() -> str:
    """Search the EHR's Practitioners for one waiting staff id."""
    specialist_id = request.args.get("specialist", "")
    wanted = next((row for row in waiting_specialists(get_store())
                   if row["specialist_id"] == specialist_id), None)
    if wanted is None:
        abort(404)
    known = wanted.get("known") or {}
    if isinstance(known, str):
        known = json.loads(known)
    searched = "searched" in request.args
    form = {
        "name": request.args.get("name", "") if searched else " ".join(
            p for p in (known.get("given"), known.get("family")) if p),
        "staff": request.args.get("staff", "") if searched else specialist_id,
    }
    params: dict[str, str] = {}
    if form["name"].strip():
        params["name"] = form["name"].strip()
    if form["staff"].strip():
        params["identifier"] = f"{peersync_profile().staff_system}|{form['staff'].strip()}"
    results, error = _search("Practitioner", params)
    errors = _search_errors(searched, params, error, "Give a name or a staff id to search.")
    return render_template("match_staff.html", row=wanted, form=form, results=results,
                           error=error, errors=errors, searched=bool(params) and not error)


@bp.post("/staff")
@roles("admin")
def link_staff_view() -> Any:
    specialist_id = request.form.get("specialist", "")
    practitioner_id = request.form.get("practitioner_id", "").strip()
    if not (specialist_id and practitioner_id):
        abort(400)
    user = me()
    try:
        with ehr_client() as client:
            linked = link_staff(get_store(), client, specialist_id=specialist_id,
                                practitioner_id=practitioner_id, actor=user.actor)
    except (EhrError, ConfigError) as exc:
        flash(f"Not linked: {exc}", "error")
        return redirect(url_for("matching.staff", specialist=specialist_id))
    flash(f"Linked staff id {specialist_id} to {linked.reference}; "
          f"{linked.released} waiting record(s) released.", "info")
    sync_pass(user.actor)
    return redirect(url_for("matching.index"))
