"""Amend, retract and resubmit a note written in the app's form; the form's own checks and
accessibility; where a note is after a submit, in words (issue 10)."""

from __future__ import annotations

import logging
import re
from datetime import date, timedelta
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from tests.webapp_support import DOCUMENT_FORM as GOOD
from tests.webapp_support import Home, document_form, import_examples, job_id, logged_in

_STARTED = re.compile(r'name="started" value="([^"]+)"')
_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


def _versions(home: Home, record_id: str) -> list[Any]:
    from sqlalchemy import select

    from connector.schema import record_versions

    store = home.store()
    try:
        with store.engine.connect() as conn:
            ids = conn.execute(select(record_versions.c.id).where(
                record_versions.c.record_id == record_id)).scalars().all()
        loaded = store.load_records(ids)
        return [loaded[i] for i in sorted(loaded)]
    finally:
        store.close()


def _set_state(home: Home, record_id: str, state: str, reason: str | None = None) -> None:
    from sqlalchemy import update

    from connector.schema import jobs

    store = home.store()
    try:
        with store.engine.begin() as conn:
            last = max(conn.execute(jobs.select().where(jobs.c.record_id == record_id)
                                    ).all(), key=lambda r: r.id).id
            conn.execute(update(jobs).where(jobs.c.id == last).values(state=state,
                                                                     reason=reason))
    finally:
        store.close()


def _document(client: FlaskClient, **fields: str) -> tuple[str, str]:
    """A new note from the form: (its record id, the record page's URL)."""
    response = client.post("/document/", data={**document_form(client), **GOOD, **fields})
    assert response.status_code == 302, response.get_data(as_text=True)
    page = client.get(response.headers["Location"]).get_data(as_text=True)
    record_id = re.search(r"Record (wf-[0-9a-f]+)", page)
    assert record_id
    return record_id.group(1), response.headers["Location"]


def _form_of(client: FlaskClient, path: str) -> tuple[str, dict[str, str]]:
    html = client.get(path).get_data(as_text=True)
    return html, {"csrf_token": _CSRF.search(html).group(1),  # type: ignore[union-attr]
                  "started": _STARTED.search(html).group(1)}  # type: ignore[union-attr]


def test_an_amendment_is_a_new_version_of_the_note(app: Flask, home: Home) -> None:
    alex = logged_in(app, "specialist")
    record_id, first_page = _document(alex)
    page = alex.get(first_page).get_data(as_text=True)
    assert f'href="/document/{record_id}/amend"' in page and "Retract this note" in page
    html, form = _form_of(alex, f"/document/{record_id}/amend")
    assert "Talked through the lease renewal." in html and "version 2" in html
    assert re.search(r'name="start_time" value="10:00"', html)  # prefilled from the latest
    response = alex.post(f"/document/{record_id}/amend",
                         data={**form, **GOOD, "note.text": "Corrected: the lease is 12 months."})
    assert response.status_code == 302
    v1, v2 = _versions(home, record_id)
    assert (v1.note.version, v2.note.version) == (1, 2)
    assert v2.note.id == v1.note.id == record_id and v2.source == "web-form"
    assert v2.note.text == "Corrected: the lease is 12 months."
    # the first version's page points to the latest; only the latest offers actions
    old = alex.get(first_page).get_data(as_text=True)
    assert "A newer version of this note exists" in old and "Retract this note" not in old
    # the same form submitted again stores nothing more
    again = alex.post(f"/document/{record_id}/amend", data={**form, **GOOD})
    assert again.status_code == 302 and len(_versions(home, record_id)) == 2


def test_a_retraction_needs_a_reason_and_is_audited(
        app: Flask, home: Home, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    alex = logged_in(app, "specialist")
    record_id, page_url = _document(alex)
    token = document_form(alex)["csrf_token"]
    alex.post(f"/document/{record_id}/retract", data={"csrf_token": token, "reason": ""})
    assert len(_versions(home, record_id)) == 1  # no reason: nothing changed
    response = alex.post(f"/document/{record_id}/retract",
                         data={"csrf_token": token, "reason": "did-not-happen"})
    assert response.status_code == 302
    v1, v2 = _versions(home, record_id)
    assert v2.status == "entered_in_error" and v2.note.version == v1.note.version
    assert v2.note.text == v1.note.text and v2.note.minutes_spent is None  # not counted again
    store = home.store()
    try:
        [event] = [e for e in store.audit_events(source="web-form", record_id=record_id)
                   if e["action"] == "record.retracted"]
    finally:
        store.close()
    assert event["detail"] == {"reason": "did-not-happen"} and event["actor"] == "web:alex"
    page = alex.get(response.headers["Location"]).get_data(as_text=True)
    assert "the session did not take place" in page and "Amend this note" not in page
    assert "did-not-happen" not in caplog.text  # the audit log, not the app's logs
    # retracted once: not again
    alex.post(f"/document/{record_id}/retract",
              data={"csrf_token": token, "reason": "duplicate"})
    assert len(_versions(home, record_id)) == 2


def test_only_its_own_specialist_amends_or_retracts(app: Flask, home: Home) -> None:
    record_id, page_url = _document(logged_in(app, "specialist"))
    priya = logged_in(app, "priya")
    assert priya.get(f"/document/{record_id}/amend").status_code == 404
    token = document_form(priya)["csrf_token"]
    assert priya.post(f"/document/{record_id}/retract",
                      data={"csrf_token": token, "reason": "duplicate"}).status_code == 404
    assert logged_in(app, "admin").get(f"/document/{record_id}/amend").status_code == 403
    admin_page = logged_in(app, "admin").get(page_url).get_data(as_text=True)
    assert "Only the specialist who wrote this note" in admin_page
    assert len(_versions(home, record_id)) == 1


def test_resubmit_only_when_returned(app: Flask, home: Home) -> None:
    alex = logged_in(app, "specialist")
    record_id, page_url = _document(alex)
    response = alex.get(f"/document/{record_id}/resubmit")
    assert response.status_code == 302  # not returned: refused
    assert "Only a note your supervisor returned" in alex.get(
        response.headers["Location"]).get_data(as_text=True)
    _set_state(home, record_id, "returned")
    page = alex.get(page_url).get_data(as_text=True)
    assert "Edit and resubmit" in page and "Amend this note" not in page
    assert alex.get(f"/document/{record_id}/amend").status_code == 302  # resubmit instead
    html, form = _form_of(alex, f"/document/{record_id}/resubmit")
    response = alex.post(f"/document/{record_id}/resubmit",
                         data={**form, **GOOD, "note.text": "Rewritten as asked."})
    assert response.status_code == 302
    v1, v2 = _versions(home, record_id)
    assert v2.note.version == v1.note.version == 1  # the same note version, new content
    assert v2.note.text == "Rewritten as asked." and v2.content_hash != v1.content_hash


def test_an_amendment_can_be_saved_as_a_draft_and_resumed(app: Flask, home: Home) -> None:
    alex = logged_in(app, "specialist")
    record_id, _ = _document(alex)
    html, form = _form_of(alex, f"/document/{record_id}/amend")
    response = alex.post(f"/document/{record_id}/amend",
                         data={**form, **GOOD, "note.text": "Half-way through.",
                               "action": "draft"})
    assert response.status_code == 302 and len(_versions(home, record_id)) == 1
    page = alex.get("/document/").get_data(as_text=True)
    assert "amendment of Dana Lopez" in page
    link = re.search(rf'href="(/document/{record_id}/amend\?draft=\d+)"', page)
    assert link
    html, form = _form_of(alex, link.group(1).replace("&amp;", "&"))
    assert "Half-way through." in html
    alex.post(f"/document/{record_id}/amend", data={**form, **GOOD, "note.text": "Done."})
    assert [v.note.text for v in _versions(home, record_id)][-1] == "Done."
    assert "No drafts." in alex.get("/document/").get_data(as_text=True)


def test_records_from_other_sources_offer_no_actions(app: Flask, home: Home) -> None:
    import_examples(home, "in-person-session.json")  # S-17's, from peer-tool
    alex = logged_in(app, "specialist")
    page = alex.get(f"/records/{job_id(home, 'ps-2026-000123')}").get_data(as_text=True)
    assert "Amended in peer-tool, which owns its versions" in page
    assert "Amend this note" not in page and "Retract this note" not in page
    assert alex.get("/document/ps-2026-000123/amend").status_code == 404


# -- the form's own checks ---------------------------------------------------------------


def test_a_future_birth_date_is_refused(app: Flask, home: Home) -> None:
    alex = logged_in(app, "specialist")
    page = alex.get("/document/").get_data(as_text=True)
    from webapp.docform import today

    with app.test_request_context():
        assert f'max="{today().isoformat()}"' in page  # in the agency's time zone
    future = (date.today() + timedelta(days=400)).isoformat()
    response = alex.post("/document/", data={**document_form(alex), **GOOD,
                                             "participant.birth_date": future})
    html = response.get_data(as_text=True)
    assert response.status_code == 422
    assert 'id="err-participant-birth_date">must not be in the future' in html
    assert "No notes yet." in logged_in(app, "specialist").get("/document/").get_data(
        as_text=True)  # nothing stored


def test_part2_without_consent_is_refused(app: Flask, home: Home) -> None:
    alex = logged_in(app, "specialist")
    response = alex.post("/document/", data={**document_form(alex), **GOOD, "part2": "on"})
    html = response.get_data(as_text=True)
    assert response.status_code == 422 and 'id="err-consent-status">required for a Part 2' in html
    response = alex.post("/document/", data={**document_form(alex), **GOOD, "part2": "on",
                                             "consent.status": "none"})
    assert response.status_code == 302  # said explicitly: kept, waits for consent


def test_entered_in_error_is_not_offered_for_a_new_note(app: Flask) -> None:
    alex = logged_in(app, "specialist")
    page = alex.get("/document/").get_data(as_text=True)
    status = re.search(r'<select id="status".*?</select>', page, re.S)
    assert status and 'value="completed"' in status.group(0)
    assert "entered_in_error" not in status.group(0)
    response = alex.post("/document/", data={**document_form(alex), **GOOD,
                                             "status": "entered_in_error"})
    assert response.status_code == 422
    assert "use Retract on its record page" in response.get_data(as_text=True)


def test_errors_are_tied_to_their_fields_and_summarised(app: Flask) -> None:
    alex = logged_in(app, "specialist")
    html = alex.post("/document/", data={**document_form(alex), **GOOD, "participant.id": "",
                                         "date": "", "start_time": "9"}).get_data(as_text=True)
    summary = re.search(r'<div class="df-error-summary".*?</div>', html, re.S)
    assert summary and 'tabindex="-1" autofocus' in summary.group(0)
    assert 'href="#participant-id"' in summary.group(0) and 'href="#date"' in summary.group(0)
    assert re.search(r'<input id="participant-id"[^>]*aria-describedby="err-participant-id"'
                     r'[^>]*aria-invalid="true"', html)
    assert 'id="err-date">Enter a date<' in html
    assert 'id="err-start_time">Enter a time<' in html
    assert "YYYY-MM-DD" not in html and "HH:MM" not in html
    # the error is outside the label
    assert not re.search(r"<label[^>]*>[^<]*<p class=\"field-error\"", html)


def test_enter_in_a_one_line_field_submits_nothing(app: Flask) -> None:
    html = logged_in(app, "specialist").get("/document/").get_data(as_text=True)
    form = html[html.index('<form method="post"'):]
    first, second = re.findall(r"<button[^>]*>", form)[:2]
    assert 'type="submit"' in first and "disabled" in first  # the form's default button
    # Chromium's date and time fields click the first enabled one: it submits nothing
    assert 'type="submit"' in second and 'formmethod="dialog"' in second


# -- where the note is ------------------------------------------------------------------


@pytest.mark.parametrize(("state", "reason", "words"), [
    ("synced", None, "Sent: the EHR holds this note."),
    ("waiting_patient", "mrn-no-match", "Waiting for a participant match"),
    ("waiting_consent", "part2-consent-none", "Waiting for consent"),
])
def test_the_record_page_says_where_the_note_is(app: Flask, home: Home, state: str,
                                                reason: str | None, words: str) -> None:
    alex = logged_in(app, "specialist")
    record_id, page_url = _document(alex)
    _set_state(home, record_id, state, reason)
    page = alex.get(page_url).get_data(as_text=True)
    where = page[page.index('id="where-now"'):page.index('id="record-actions"')]
    assert words in where
    assert "Encounter documented" not in page
    if reason:
        assert f"<code>{reason}</code>" in where  # the code stays visible for support


def test_the_submit_says_where_the_note_went(app: Flask, home: Home,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    import webapp.ehr

    def sync_to_waiting(actor: str) -> None:  # a sync pass that finds no consent
        from sqlalchemy import update

        from connector.schema import jobs
        from webapp import get_store

        with get_store().engine.begin() as conn:
            conn.execute(update(jobs).values(state="waiting_consent",
                                             reason="part2-consent-none"))

    monkeypatch.setattr(webapp.ehr, "sync_pass", sync_to_waiting)
    alex = logged_in(app, "specialist")
    response = alex.post("/document/", data={**document_form(alex), **GOOD, "part2": "on",
                                             "consent.status": "none"})
    page = alex.get(response.headers["Location"]).get_data(as_text=True)
    flashed = re.search(r'class="flash flash-info"[^>]*>([^<]*)<', page)
    assert flashed and flashed.group(1).startswith("Waiting for consent")
