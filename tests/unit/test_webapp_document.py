"""Document once: the specialist's form, checked by the intake code, timed by the server."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

from flask import Flask

from tests.webapp_support import DOCUMENT_FORM as GOOD
from tests.webapp_support import Home, document_form, logged_in
from webapp import WEB_SOURCE


def _records(home: Home) -> list[Any]:
    store = home.store()
    try:
        from sqlalchemy import select

        from connector.schema import record_versions

        with store.engine.connect() as conn:
            ids = conn.execute(select(record_versions.c.id)).scalars().all()
        loaded = store.load_records(ids)
        return [loaded[i] for i in sorted(loaded)]
    finally:
        store.close()


def test_a_specialist_documents_an_encounter(app: Flask, home: Home) -> None:
    alex = logged_in(app, "specialist")
    page = alex.get("/document/").get_data(as_text=True)
    assert "You document as staff id <b>S-17</b>" in page and 'name="started"' in page
    response = alex.post("/document/", data={**document_form(alex), **GOOD,
                                             "specialist.id": "S-22"})  # ignored
    assert response.status_code == 302 and response.headers["Location"].startswith("/records/")
    [record] = _records(home)
    assert record.source == WEB_SOURCE and record.specialist.id == "S-17"
    assert record.id.startswith("wf-") and record.note.id == record.id
    assert record.note.text == GOOD["note.text"]
    assert record.goals == ("housing", "wellness") and record.service.modality == "video"
    assert record.start.utcoffset() == timedelta(hours=-5)  # the agency's zone (New York)
    assert record.minutes == 45
    spent = record.note.minutes_spent
    assert spent is not None and 0 < spent < 1  # opened a moment ago
    detail = alex.get(response.headers["Location"]).get_data(as_text=True)
    # honest: not sent yet (no sync in this app), never "Encounter documented."
    assert "Saved, not sent yet" in detail and record.id in detail
    assert "Encounter documented" not in detail


def test_documentation_time_runs_from_the_signed_start_not_the_browser(
        app: Flask, home: Home) -> None:
    from itsdangerous import URLSafeTimedSerializer

    from webapp.docform import SALT

    alex = logged_in(app, "specialist")
    form = document_form(alex)
    user_id = URLSafeTimedSerializer(app.config["SECRET_KEY"], salt=SALT).loads(
        form["started"])["u"]
    opened = (datetime.now(UTC) - timedelta(minutes=9)).isoformat()
    form["started"] = URLSafeTimedSerializer(app.config["SECRET_KEY"], salt=SALT).dumps(
        {"u": user_id, "t": opened, "n": "abc123"})
    # a browser-sent time is not a field of the form and changes nothing
    alex.post("/document/", data={**form, **GOOD,
                                  "note.documentation_minutes": "1",
                                  "documentation_started": "2026-01-01T00:00:00Z"})
    [record] = _records(home)
    assert record.id == "wf-abc123"
    assert 9 <= (record.note.minutes_spent or 0) < 9.5


def test_a_forged_or_foreign_start_is_refused(app: Flask, home: Home) -> None:
    alex = logged_in(app, "specialist")
    form = document_form(alex)
    response = alex.post("/document/", data={**form, **GOOD, "started": form["started"] + "x"})
    assert response.status_code == 400
    html = response.get_data(as_text=True)
    assert "start time is not valid" in html and "Talked through the lease" in html  # kept
    priya = logged_in(app, "priya")
    response = priya.post("/document/", data={**document_form(priya), **GOOD,
                                              "started": form["started"]})  # alex's
    assert response.status_code == 400
    assert _records(home) == []


def test_an_expired_start_keeps_the_text_and_restarts_the_clock(app: Flask) -> None:
    app.config["DOCUMENT_FORM_MAX_AGE_S"] = -1
    alex = logged_in(app, "specialist")
    form = document_form(alex)
    response = alex.post("/document/", data={**form, **GOOD})
    html = response.get_data(as_text=True)
    assert response.status_code == 400 and "open too long" in html
    assert "Talked through the lease" in html
    new_start = re.search(r'name="started" value="([^"]+)"', html).group(1)  # type: ignore[union-attr]
    assert new_start != form["started"]


def test_errors_are_shown_next_to_their_fields(app: Flask, home: Home) -> None:
    alex = logged_in(app, "specialist")
    form = document_form(alex)
    bad = {**GOOD, "participant.id": "", "end_time": "09:00", "participant.birth_date":
           "1988-02-30", "specialist.npi": "1234567890", "service.group_size": "x"}
    response = alex.post("/document/", data={**form, **bad})
    assert response.status_code == 422
    html = response.get_data(as_text=True)
    assert 'id="err-service-group_size">must be a whole number' in html
    bad["service.group_size"] = "1"
    html = alex.post("/document/", data={**form, **bad}).get_data(as_text=True)
    for field in ("participant-id", "end_time", "participant-birth_date", "specialist-npi",
                  "service-group_size"):
        assert f'id="err-{field}"' in html, field
    assert "must not be before start" in html
    assert "1988-02-30" in html  # what was typed stays in the form
    assert _records(home) == []
    # fixed, with the same start: the clock kept running
    response = alex.post("/document/", data={**form, **GOOD})
    assert response.status_code == 302 and len(_records(home)) == 1


def test_submitting_the_same_form_twice_stores_one_record(app: Flask, home: Home) -> None:
    alex = logged_in(app, "specialist")
    form = document_form(alex)
    first = alex.post("/document/", data={**form, **GOOD})
    second = alex.post("/document/", data={**form, **GOOD, "note.text": "changed"})
    assert second.headers["Location"] == first.headers["Location"]
    assert len(_records(home)) == 1
    assert "already saved" in alex.get(second.headers["Location"]).get_data(as_text=True)


def test_only_specialists_document(app: Flask) -> None:
    assert logged_in(app, "admin").get("/document/").status_code == 403
    assert logged_in(app, "auditor").get("/document/").status_code == 403
