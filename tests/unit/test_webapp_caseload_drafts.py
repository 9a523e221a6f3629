"""The document form's caseload and drafts (issue 10): a specialist's participants, searched
and used to fill the form; drafts kept on the server with honest documentation time."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from tests.webapp_support import DOCUMENT_FORM as GOOD
from tests.webapp_support import Home, document_form, import_examples, logged_in

_STARTED = re.compile(r'name="started" value="([^"]+)"')
_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


@pytest.fixture
def home(home: Home) -> Home:
    # S-17: P-1001 Dana Lopez, P-1002 Sam Okafor; S-22: P-1003 Renée Dubois, P-1004 Lee Park
    import_examples(home, "in-person-session.json", "batch.jsonl")
    return home


def _records(home: Home) -> list[Any]:
    from sqlalchemy import select

    from connector.schema import record_versions

    store = home.store()
    try:
        with store.engine.connect() as conn:
            ids = conn.execute(select(record_versions.c.id).where(
                record_versions.c.source == "web-form")).scalars().all()
        loaded = store.load_records(ids)
        return [loaded[i] for i in sorted(loaded)]
    finally:
        store.close()


def _value(html: str, name: str) -> str:
    match = re.search(rf'name="{re.escape(name)}" value="([^"]*)"', html)
    assert match, name
    return match.group(1)


class Clock:
    """The server's clock for the form (webapp.docform.now), moved by the test."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.at = datetime(2026, 11, 23, 15, 0, tzinfo=UTC)
        import webapp.docform

        monkeypatch.setattr(webapp.docform, "now", lambda: self.at)

    def advance(self, **delta: float) -> None:
        self.at += timedelta(**delta)


def test_the_caseload_lists_only_this_specialists_participants(app: Flask) -> None:
    alex = logged_in(app, "specialist")
    page = alex.get("/document/").get_data(as_text=True)
    assert "Use Dana Lopez" in page and "Use Sam Okafor" in page
    assert "Renée" not in page and "Lee Park" not in page  # S-22's participants
    assert 'href="/document/?participant=P-1001"' in page
    assert "Use Renée" in logged_in(app, "priya").get("/document/").get_data(as_text=True)


def test_the_caseload_is_searched_by_name_or_id(app: Flask) -> None:
    alex = logged_in(app, "specialist")
    page = alex.get("/document/?q=dana").get_data(as_text=True)
    assert "Use Dana Lopez" in page and "Use Sam Okafor" not in page
    page = alex.get("/document/?q=p-1002").get_data(as_text=True)
    assert "Use Sam Okafor" in page and "Use Dana Lopez" not in page
    page = alex.get("/document/?q=lopez").get_data(as_text=True)
    assert "Use Dana Lopez" in page
    page = alex.get("/document/?q=renee").get_data(as_text=True)  # another's participant
    assert "None of your participants matches" in page
    page = alex.get("/document/?q=landlord").get_data(as_text=True)  # only in a note's text
    assert "Use Dana Lopez" not in page


def test_using_a_participant_fills_the_form_on_the_server(app: Flask, home: Home) -> None:
    alex = logged_in(app, "specialist")
    html = alex.get("/document/?participant=P-1001").get_data(as_text=True)
    assert _value(html, "participant.id") == "P-1001"
    assert _value(html, "participant.mrn") == "MRN-55821"
    assert _value(html, "participant.given") == "Dana"
    assert _value(html, "participant.family") == "Lopez"
    assert _value(html, "participant.birth_date") == "1988-04-12"
    assert _value(html, "end_time") == "" and _value(html, "start_time") == ""  # no prefill
    # another specialist's participant is not offered
    assert alex.get("/document/?participant=P-1003").status_code == 404
    # a new participant is still possible: the fields stay editable
    assert 'name="participant.id" value="P-1001" autocomplete="off" required' in html
    response = alex.post("/document/", data={**document_form(alex), **GOOD,
                                             "participant.id": "P-9999"})
    assert response.status_code == 302
    assert [r.participant.id for r in _records(home)] == ["P-9999"]


def _save_draft(client: FlaskClient, form: dict[str, str], **fields: str) -> Any:
    return client.post("/document/", data={**form, **GOOD, **fields, "action": "draft"})


def test_a_draft_is_saved_listed_resumed_and_deleted(app: Flask, home: Home) -> None:
    alex = logged_in(app, "specialist")
    response = _save_draft(alex, document_form(alex))
    assert response.status_code == 302 and response.headers["Location"].endswith("#drafts")
    assert _records(home) == []  # a draft is not a record
    page = alex.get("/document/").get_data(as_text=True)
    assert "Draft saved" in page and "Dana Lopez, 2026-11-23" in page
    resume = re.search(r'href="(/document/\?draft=(\d+))"', page)
    assert resume, page
    draft_id = resume.group(2)
    html = alex.get(resume.group(1)).get_data(as_text=True)
    assert "Talked through the lease renewal." in html
    assert _value(html, "participant.id") == "P-2001"
    # another specialist neither resumes nor deletes it
    priya = logged_in(app, "priya")
    assert priya.get(resume.group(1)).status_code == 404
    priya.post(f"/document/drafts/{draft_id}/delete",
               data={"csrf_token": document_form(priya)["csrf_token"]})
    assert alex.get(resume.group(1)).status_code == 200
    alex.post(f"/document/drafts/{draft_id}/delete",
              data={"csrf_token": document_form(alex)["csrf_token"]})
    assert alex.get(resume.group(1)).status_code == 404
    assert "No drafts." in alex.get("/document/").get_data(as_text=True)


def _resume(client: FlaskClient) -> tuple[str, dict[str, str]]:
    page = client.get("/document/").get_data(as_text=True)
    link = re.search(r'href="(/document/\?draft=\d+)"', page)
    assert link
    html = client.get(link.group(1)).get_data(as_text=True)
    return html, {"csrf_token": _CSRF.search(html).group(1),  # type: ignore[union-attr]
                  "started": _STARTED.search(html).group(1)}  # type: ignore[union-attr]


def test_documentation_time_adds_up_across_a_resume(
        app: Flask, home: Home, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock(monkeypatch)
    alex = logged_in(app, "specialist")
    form = document_form(alex)  # opened at 15:00
    clock.advance(minutes=10)
    _save_draft(alex, form)  # 10 minutes
    _save_draft(alex, form)  # the same start again (a double click): nothing more
    clock.advance(hours=3)  # away: not counted
    html, resumed = _resume(alex)  # opened again at 18:10
    assert "10 min counted" in alex.get("/document/").get_data(as_text=True)
    clock.advance(minutes=5)
    response = alex.post("/document/", data={**resumed, **GOOD})
    assert response.status_code == 302
    [record] = _records(home)
    assert record.note.documentation_minutes == 15  # 10 + 5, not the 3 hours between
    assert record.note.documentation_started is None  # a sum of intervals, not one
    assert "No drafts." in alex.get("/document/").get_data(as_text=True)  # submitted: gone
    # the resumed draft keeps its record id: submitting it again stores nothing more
    again = alex.post("/document/", data={**resumed, **GOOD})
    assert again.headers["Location"] == response.headers["Location"]
    assert len(_records(home)) == 1


def test_each_interval_is_capped(app: Flask, home: Home,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock(monkeypatch)
    alex = logged_in(app, "specialist")
    form = document_form(alex)
    clock.advance(hours=5)  # left open over lunch
    alex.post("/document/", data={**form, **GOOD})
    [record] = _records(home)
    assert record.note.documentation_minutes == 120  # the cap (webapp.docform.INTERVAL_CAP_S)


def test_a_single_interval_is_sent_as_the_interval(app: Flask, home: Home,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock(monkeypatch)
    alex = logged_in(app, "specialist")
    form = document_form(alex)
    clock.advance(minutes=7)
    alex.post("/document/", data={**form, **GOOD})
    [record] = _records(home)
    assert record.note.minutes_spent == 7
    assert record.note.documentation_finished == clock.at


def test_the_method_is_stated_on_the_documentation_time_page(app: Flask) -> None:
    html = logged_in(app, "specialist").get("/documentation-time/").get_data(as_text=True)
    assert "each opening of the form counts at most 120 minutes" in html
