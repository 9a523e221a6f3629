"""The document form's machinery, shared by a new note, a draft, an amendment and a
resubmission (webapp.document, webapp.amend): its fields, its signed start, building
the contract object and checking it with the intake code every channel uses.

Documentation time is measured by the server, never the browser's clock. Opening
the form issues a start time signed with the app's key and tied to the account;
saving a draft or submitting ends the interval. The time of a note is the sum of
its intervals (a draft resumed is a new interval), each capped at
:data:`INTERVAL_CAP_S` (a form left open over lunch does not count as lunch), and
never counting a moment twice (see :func:`connector.store.drafts.counted_seconds`).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from typing import Any

from flask import current_app, request
from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer

from connector.errors import RecordInvalid
from connector.intake import validate_record
from connector.records import EncounterRecord, parse_datetime
from connector.store.drafts import counted_seconds
from webapp import WEB_SOURCE, get_store
from webapp.access import me
from webapp.views import agency_tz

SALT = "peersync.document.started"
INTERVAL_CAP_S = 2 * 3600  # one opening of the form counts at most this long
MAX_MINUTES = 600  # the contract's bound on note.documentation_minutes
CONSENT_CHOICES = ("active", "revoked", "none")
# A new note's status: "entered in error" only retracts a note already sent (Retract).
NEW_STATUSES = ("completed", "cancelled", "no_show")
TEXT_FIELDS = (
    "participant.id", "participant.mrn", "participant.given", "participant.family",
    "participant.birth_date", "date", "start_time", "end_time", "status",
    "service.modality", "service.setting", "service.group_size", "service.code", "goals",
    "note.text", "consent.status", "consent.id",
    "specialist.given", "specialist.family", "specialist.credential", "specialist.npi",
)
LABELS = {
    "participant.id": "Participant id", "participant.mrn": "MRN",
    "participant.given": "Given name", "participant.family": "Family name",
    "participant.birth_date": "Birth date", "date": "Date", "start_time": "Start",
    "end_time": "End", "status": "Status", "service.modality": "Modality",
    "service.setting": "Setting", "service.group_size": "Group size",
    "service.code": "Service code", "goals": "Goals", "note.text": "Note text",
    "part2": "42 CFR Part 2", "consent.status": "Consent to disclose",
    "consent.id": "Consent id", "specialist.given": "Your given name",
    "specialist.family": "Your family name", "specialist.credential": "Credential",
    "specialist.npi": "NPI",
}
# Contract paths shown at another field of the form.
SHOWN_AT = {"start": "start_time", "end": "end_time", "goals": "goals"}
# The date and time widgets (type=date/time) show the browser's own format (en-US: mm/dd/yyyy
# and 02:30 PM), so the messages name no format (never YYYY-MM-DD or HH:MM).
ENTER_DATE = "Enter a date"
ENTER_TIME = "Enter a time"


def now() -> datetime:
    """The server's clock (one place, so tests can move it)."""
    return datetime.now(UTC)


def today() -> date:
    return now().astimezone(agency_tz()).date()


@dataclass(frozen=True, slots=True)
class Start:
    started: datetime
    nonce: str
    draft_id: int | None = None
    record_id: str | None = None  # the record amended or resubmitted
    base_job: int | None = None  # its latest job when the form was opened


class StartInvalid(Exception):
    pass


def _signer() -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(current_app.config["SECRET_KEY"], salt=SALT)


def issue_start(user_id: int, *, nonce: str | None = None, draft_id: int | None = None,
                record_id: str | None = None, base_job: int | None = None) -> str:
    data: dict[str, Any] = {"u": user_id, "t": now().isoformat(timespec="milliseconds"),
                            "n": nonce or secrets.token_hex(8)}
    for key, value in (("d", draft_id), ("r", record_id), ("b", base_job)):
        if value is not None:
            data[key] = value
    return _signer().dumps(data)


def read_start(token: str, user_id: int) -> Start:
    """The signed start, or StartInvalid (forged, expired, not this account's)."""
    try:
        data = _signer().loads(token, max_age=current_app.config["DOCUMENT_FORM_MAX_AGE_S"])
    except SignatureExpired:
        raise StartInvalid("expired") from None
    except BadSignature:
        raise StartInvalid("invalid") from None
    if not isinstance(data, dict) or data.get("u") != user_id:
        raise StartInvalid("invalid")
    try:
        start = Start(datetime.fromisoformat(str(data["t"])), str(data["n"]),
                      data.get("d"), data.get("r"), data.get("b"))
    except (KeyError, ValueError):
        raise StartInvalid("invalid") from None
    if not start.nonce.isalnum() or len(start.nonce) > 32:
        raise StartInvalid("invalid")
    return start


def start_message(exc: StartInvalid) -> str:
    return ("This form was open too long for its time to count; check it and submit again."
            if str(exc) == "expired" else
            "This form's start time is not valid; check it and submit again.")


def form_values() -> dict[str, str]:
    """The form's values as posted (note text as typed, the rest trimmed)."""
    values = {name: request.form.get(name, "") for name in TEXT_FIELDS}
    values = {k: (v if k == "note.text" else v.strip()) for k, v in values.items()}
    values["part2"] = "on" if request.form.get("part2") == "on" else ""
    return values


def blank_values() -> dict[str, str]:
    """A new note: today, the specialist's known name; no Start or End (typed, never guessed)."""
    user = me()
    values = {name: "" for name in TEXT_FIELDS}
    values.update({"service.modality": "in_person", "status": "completed",
                   "date": today().isoformat(), "part2": ""})
    known = get_store().specialist_details(user.specialist_id) if user.specialist_id else None
    for key in ("given", "family", "credential", "npi"):
        if known and known.get(key):
            values[f"specialist.{key}"] = known[key]
    return values


def fill_participant(values: dict[str, str], participant: dict[str, Any]) -> None:
    for key in ("id", "mrn", "given", "family", "birth_date"):
        values[f"participant.{key}"] = str(participant.get(key) or "")


def payload_values(payload: dict[str, Any]) -> dict[str, str]:
    """The form's values from a stored record (an amendment or resubmission starts there)."""
    values = {name: "" for name in TEXT_FIELDS}
    fill_participant(values, payload.get("participant") or {})
    for group in ("specialist", "service", "consent"):
        for key, value in (payload.get(group) or {}).items():
            if f"{group}.{key}" in values and value is not None:
                values[f"{group}.{key}"] = str(value)
    tz = agency_tz()
    for key, name in (("start", "start_time"), ("end", "end_time")):
        if payload.get(key):
            moment = parse_datetime(payload[key]).astimezone(tz)
            values[name] = moment.strftime("%H:%M")
            if key == "start":
                values["date"] = moment.date().isoformat()
    values["status"] = payload.get("status") or "completed"
    values["service.modality"] = values["service.modality"] or "in_person"
    values["note.text"] = (payload.get("note") or {}).get("text", "")
    values["goals"] = ", ".join(payload.get("goals") or [])
    values["part2"] = "on" if payload.get("part2") else ""
    return values


def documentation(start: Start, finished: datetime, draft: dict[str, Any] | None
                  ) -> dict[str, Any]:
    """The note's documentation fields: the interval when it is the only one and under the
    cap; else the minutes counted (the draft's saved intervals and this one)."""
    if draft is None and (finished - start.started).total_seconds() <= INTERVAL_CAP_S:
        return {"documentation_started": start.started.isoformat(timespec="milliseconds"),
                "documentation_finished": finished.isoformat(timespec="milliseconds")}
    seconds = (draft["documentation_s"] if draft else 0.0) + counted_seconds(
        start.started, finished, draft["counted_until"] if draft else None, INTERVAL_CAP_S)
    return {"documentation_minutes": min(round(seconds / 60, 2), MAX_MINUTES)}


def build(values: dict[str, str], record_id: str, *, note_id: str, note_version: int,
          finished: datetime, timing: dict[str, Any]
          ) -> tuple[dict[str, Any], dict[str, list[str]]]:
    """The contract object from the form, and errors for values that are not even
    well-formed or that the form refuses (a future birth date, Part 2 without consent)."""
    errors: dict[str, list[str]] = {}
    tz = agency_tz()

    def put(target: dict[str, Any], key: str, name: str) -> None:
        if values.get(name):
            target[key] = values[name]

    participant: dict[str, Any] = {"id": values["participant.id"]}
    for key in ("mrn", "given", "family", "birth_date"):
        put(participant, key, f"participant.{key}")
    born = values.get("participant.birth_date")
    if born:
        try:
            if date.fromisoformat(born) > today():
                errors["participant.birth_date"] = ["must not be in the future"]
        except ValueError:
            errors["participant.birth_date"] = [ENTER_DATE]
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
        day: date | None = date.fromisoformat(values["date"])
    except ValueError:
        errors["date"] = [ENTER_DATE]
        day = None
    for name, key in (("start_time", "start"), ("end_time", "end")):
        try:
            clock = time.fromisoformat(values[name])
        except ValueError:
            errors[name] = [ENTER_TIME]
            continue
        if day is not None:
            obj[key] = datetime.combine(day, clock, tz).isoformat(timespec="seconds")
    if values.get("status"):
        obj["status"] = values["status"]
    if values.get("note.text", "").strip():
        obj["note"] = {"id": note_id, "version": note_version,
                       "text": values["note.text"].replace("\r\n", "\n"),
                       "signed_at": finished.isoformat(timespec="milliseconds"), **timing}
    goals = [g.strip() for g in values.get("goals", "").split(",") if g.strip()]
    if goals:
        obj["goals"] = goals
    if values.get("part2"):
        obj["part2"] = True
        if not values.get("consent.status"):
            errors["consent.status"] = [
                "required for a Part 2 note: the participant's consent to disclose "
                "(a note without active consent is kept, not sent)"]
    if values.get("consent.status"):
        obj["consent"] = {"status": values["consent.status"]}
        if values.get("consent.id"):
            obj["consent"]["id"] = values["consent.id"]
    return obj, errors


def check(obj: dict[str, Any], errors: dict[str, list[str]]
          ) -> tuple[EncounterRecord | None, list[str]]:
    """The record, when the intake code accepts it and the form found nothing; else the
    intake's errors added to ``errors`` (by field) and those of no field."""
    general: list[str] = []
    had = set(errors)  # one message per field: the form's own comes first
    if "date" in had:  # no day: the times' "required" would say nothing true
        had |= {"start_time", "end_time"}
    try:
        record = validate_record(obj, source=WEB_SOURCE)
    except RecordInvalid as exc:
        for error in exc.errors:
            field = SHOWN_AT.get(error.path, error.path)
            if field in had:
                continue
            if field in LABELS:
                errors.setdefault(field, []).append(error.message)
            else:
                general.append(str(error))
        return None, general
    return (None if errors else record), general


def new_status_error(values: dict[str, str], allowed: tuple[str, ...]) -> dict[str, list[str]]:
    if values.get("status") and values["status"] not in allowed:
        return {"status": ["choose completed, cancelled or no show; to retract a note that "
                           "was sent, use Retract on its record page"]}
    return {}


# -- the page and the save, shared by every mode ---------------------------------------


def render_form(*, mode: str, action: str, values: dict[str, Any],
                errors: dict[str, list[str]], general: list[str], started: str,
                status: int = 200, lists: bool = False, **extra: Any) -> Any:
    """The form page; ``lists``: with the caseload, drafts and recent notes (a new note's
    page as opened; a page sent back with errors shows the form alone)."""
    from flask import render_template

    from connector.records import MODALITIES, SETTINGS
    from webapp import peersync_profile

    summary = [(name, LABELS[name], "; ".join(errors[name]))
               for name in (*LABELS,) if errors.get(name)]
    return render_template(
        "document.html", mode=mode, action=action, values=values, errors=errors,
        general=general, summary=summary, started=started, modalities=MODALITIES,
        settings=SETTINGS, statuses=NEW_STATUSES, consent_choices=CONSENT_CHOICES,
        service_code=peersync_profile().service_code, staff_id=me().specialist_id,
        today=today().isoformat(), cap_minutes=INTERVAL_CAP_S // 60, lists=lists, **extra,
    ), status


def save_record(record: EncounterRecord, *, draft_id: int | None) -> Any:
    """Store a checked record through the intake path (one version, one job), drop its
    draft, run a sync pass, and show the record with where its note is now."""
    from flask import flash, redirect, url_for

    from connector.reports import record_states
    from webapp.ehr import sync_pass
    from webapp.outcomes import flash_text, outcome

    user = me()
    store = get_store()
    store.add_records([record], actor=user.actor)
    if draft_id is not None:
        store.delete_draft(user.user.id, draft_id)
    sync_pass(user.actor)
    jobs = record_states(store, WEB_SOURCE, [record.id]).get(record.id) or []
    if not jobs:
        return redirect(url_for("records.index"))
    job = jobs[-1]
    flash(flash_text(outcome(job["state"], job["reason"], record.status)), "info")
    return redirect(url_for("records.detail", job_id=job["id"]))
