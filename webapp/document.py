"""Document once: a specialist's form for one encounter and its note.

The form is checked by the same intake code as files and the API
(:func:`connector.intake.validate_record`, source ``web-form``), and each
error is shown next to its field. The specialist is the account's own staff
id, never a form field.

Documentation time is measured by the server: opening the form issues a start
time signed with the app's key (and tied to the account); submitting it ends
the interval. The browser's clock is never asked. The signed start also
carries the record's id, so submitting the same form twice stores one record.
"""

from __future__ import annotations

import secrets
from datetime import UTC, date, datetime, time
from typing import Any

from flask import Blueprint, current_app, flash, redirect, render_template, request, url_for
from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer

from connector.errors import RecordInvalid
from connector.intake import validate_record
from connector.records import MODALITIES, SETTINGS, STATUSES
from connector.reports import record_states
from webapp import WEB_SOURCE, get_store, peersync_profile
from webapp.access import me, roles
from webapp.ehr import sync_pass
from webapp.views import agency_tz

bp = Blueprint("document", __name__, url_prefix="/document")

SALT = "peersync.document.started"
CONSENT_CHOICES = ("active", "revoked", "none")
TEXT_FIELDS = (
    "participant.id", "participant.mrn", "participant.given", "participant.family",
    "participant.birth_date", "specialist.given", "specialist.family", "specialist.credential",
    "specialist.npi", "service.code", "service.modality", "service.setting",
    "service.group_size", "date", "start_time", "end_time", "status", "note.text", "goals",
    "consent.status", "consent.id",
)
# Contract paths shown at another field of the form.
SHOWN_AT = {"start": "start_time", "end": "end_time", "goals": "goals"}


def _signer() -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(current_app.config["SECRET_KEY"], salt=SALT)


def _issue_start(user_id: int) -> str:
    started = datetime.now(UTC).isoformat(timespec="milliseconds")
    return _signer().dumps({"u": user_id, "t": started, "n": secrets.token_hex(8)})


class StartInvalid(Exception):
    pass


def _read_start(token: str, user_id: int) -> tuple[datetime, str]:
    """The signed start time and record nonce, or StartInvalid (forged, expired, not ours)."""
    try:
        data = _signer().loads(token, max_age=current_app.config["DOCUMENT_FORM_MAX_AGE_S"])
    except SignatureExpired:
        raise StartInvalid("expired") from None
    except BadSignature:
        raise StartInvalid("invalid") from None
    if not isinstance(data, dict) or data.get("u") != user_id:
        raise StartInvalid("invalid")
    try:
        started = datetime.fromisoformat(str(data["t"]))
        nonce = str(data["n"])
    except (KeyError, ValueError):
        raise StartInvalid("invalid") from None
    if not nonce.isalnum() or len(nonce) > 32:
        raise StartInvalid("invalid")
    return started, nonce


def _defaults() -> dict[str, str]:
    user = me()
    now = datetime.now(agency_tz())
    values = {name: "" for name in TEXT_FIELDS}
    values.update({"service.modality": "in_person", "status": "completed",
                   "date": now.date().isoformat(), "end_time": now.strftime("%H:%M")})
    known = get_store().specialist_details(user.specialist_id) if user.specialist_id else None
    for key in ("given", "family", "credential", "npi"):
        if known and known.get(key):
            values[f"specialist.{key}"] = known[key]
    return values


def _render(values: dict[str, Any], errors: dict[str, list[str]], general: list[str],
            started: str, status: int = 200) -> Any:
    profile = peersync_profile()
    return render_template(
        "document.html", values=values, errors=errors, general=general, started=started,
        modalities=MODALITIES, settings=SETTINGS, statuses=STATUSES,
        consent_choices=CONSENT_CHOICES, service_code=profile.service_code,
        staff_id=me().specialist_id,
    ), status


@bp.get("/")
@roles("specialist")
def form() -> Any:
    return _render(_defaults(), {}, [], _issue_start(me().user.id))


def _build(values: dict[str, str], part2: bool, record_id: str, started: datetime,
           finished: datetime) -> tuple[dict[str, Any], dict[str, list[str]]]:
    """The contract object from the form, and errors for values that are not even well-formed."""
    errors: dict[str, list[str]] = {}
    tz = agency_tz()

    def put(target: dict[str, Any], key: str, name: str) -> None:
        if values.get(name):
            target[key] = values[name]

    participant: dict[str, Any] = {"id": values["participant.id"]}
    for key in ("mrn", "given", "family", "birth_date"):
        put(participant, key, f"participant.{key}")
    specialist: dict[str, Any] = {"id": me().specialist_id}
    for key in ("given", "family", "credential", "npi"):
        put(specialist, key, f"specialist.{key}")
    service: dict[str, Any] = {}
    for key in ("code", "modality", "setting"):
        put(service, key, f"service.{key}")
    if values.get("service.group_size"):
        try:
            service["group_size"] = int(values["service.group_size"])
        except ValueError:
            errors["service.group_size"] = ["must be a whole number"]
    obj: dict[str, Any] = {"id": record_id, "participant": participant,
                           "specialist": specialist}
    if service:
        obj["service"] = service
    try:
        day = date.fromisoformat(values["date"])
    except ValueError:
        errors["date"] = ["required: the day of the encounter (YYYY-MM-DD)"]
        day = None
    for name, key in (("start_time", "start"), ("end_time", "end")):
        try:
            clock = time.fromisoformat(values[name])
        except ValueError:
            errors[name] = ["required: a time of day (HH:MM)"]
            continue
        if day is not None:
            obj[key] = datetime.combine(day, clock, tz).isoformat(timespec="seconds")
    if values.get("status"):
        obj["status"] = values["status"]
    if values.get("note.text", "").strip():
        obj["note"] = {
            "id": record_id,
            "text": values["note.text"].replace("\r\n", "\n"),
            "signed_at": finished.isoformat(timespec="milliseconds"),
            "documentation_started": started.isoformat(timespec="milliseconds"),
            "documentation_finished": finished.isoformat(timespec="milliseconds"),
        }
    goals = [g.strip() for g in values.get("goals", "").split(",") if g.strip()]
    if goals:
        obj["goals"] = goals
    if part2:
        obj["part2"] = True
    if values.get("consent.status"):
        obj["consent"] = {"status": values["consent.status"]}
        if values.get("consent.id"):
            obj["consent"]["id"] = values["consent.id"]
    return obj, errors


@bp.post("/")
@roles("specialist")
def submit() -> Any:
    user = me()
    values = {name: request.form.get(name, "") for name in TEXT_FIELDS}
    values = {k: (v if k == "note.text" else v.strip()) for k, v in values.items()}
    part2 = request.form.get("part2") == "on"
    values["part2"] = "on" if part2 else ""
    token = request.form.get("started", "")
    try:
        started, nonce = _read_start(token, user.user.id)
    except StartInvalid as exc:
        # Keep what was typed; time it again from now.
        message = ("This form was open too long for its time to count; check it and submit "
                   "again." if str(exc) == "expired" else
                   "This form's start time is not valid; check it and submit again.")
        return _render(values, {}, [message], _issue_start(user.user.id), 400)
    finished = datetime.now(UTC)
    record_id = f"wf-{nonce}"
    saved = record_states(get_store(), WEB_SOURCE, [record_id]).get(record_id)
    if saved:  # this form was submitted already (a double click, a reload)
        flash("This form was already saved.", "info")
        return redirect(url_for("records.detail", job_id=saved[-1]["id"]))
    obj, errors = _build(values, part2, record_id, started, finished)
    general: list[str] = []
    if not errors:
        try:
            record = validate_record(obj, source=WEB_SOURCE)
        except RecordInvalid as exc:
            for error in exc.errors:
                field = SHOWN_AT.get(error.path, error.path)
                if field in TEXT_FIELDS or field == "part2":
                    errors.setdefault(field, []).append(error.message)
                else:
                    general.append(str(error))
        else:
            store = get_store()
            store.add_records([record], actor=user.actor)
            sync_pass(user.actor)
            jobs = record_states(store, WEB_SOURCE, [record_id]).get(record_id) or []
            flash("Encounter documented.", "info")
            if jobs:
                return redirect(url_for("records.detail", job_id=jobs[-1]["id"]))
            return redirect(url_for("records.index"))
    return _render(values, errors, general, token, 422)
