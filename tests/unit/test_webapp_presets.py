"""The admin app and the EHR preset: the write plan on the settings page, what a record's
EHR could not carry, and linking a held record to the EHR's Encounter (no EHR here: an
error answer from `responses`; the real path is tests/integration/test_webapp_presets.py).
"""

from __future__ import annotations

import re
from typing import Any

import pytest
import responses
from flask import Flask

from connector.states import JobState
from tests.webapp_support import Home, csrf_token, import_examples, logged_in, make_app

RESOURCE_TYPES = ("Patient", "Practitioner", "Encounter", "DocumentReference", "Provenance",
                  "Organization", "Device")
HELD = "ps-2026-000123"  # P-1001, in-person-session.json


@pytest.fixture
def home(home: Home) -> Home:
    import_examples(home, "in-person-session.json", "batch.jsonl")
    return home


def _set_preset(home: Home, name: str) -> None:
    text = home.config.read_text("utf-8")
    text, n = re.subn(r'(?m)^preset = "[^"]*"', f'preset = "{name}"', text, count=1)
    assert n == 1
    home.config.write_text(text, "utf-8")


Finish = dict[str, tuple[JobState, dict[str, Any] | None]]


def _finish(home: Home, states: Finish) -> dict[str, int]:
    """Claim every job and finish the named ones as the worker would; the rest stay pending."""
    store = home.store()
    ids = {}
    try:
        for job in store.claim(worker="t", run_id="r", limit=50):
            state, detail = states.get(job.record_id, (JobState.PENDING, None))
            ids[job.record_id] = job.id
            with store.begin() as conn:
                store.finish(conn, job, state, actor="t", detail=detail,
                             count_attempt=job.record_id in states,
                             reason="no-ehr-encounter-in-session-window"
                             if state is JobState.WAITING_ENCOUNTER else None)
    finally:
        store.close()
    return ids


def _plan_rows(html: str) -> dict[str, str]:
    table = re.search(r'<table class="compact stack" id="write-plan">(.*?)</table>', html, re.S)
    assert table, "no write plan table"
    return dict(re.findall(r'<tr><td data-label="Resource">([A-Za-z]+)</td>'
                           r'<td data-label="PeerSync">([^<]*)</td>', table.group(1)))


# -- the write plan on the settings page -----------------------------------------------


def test_settings_show_the_generic_write_plan_by_default(app: Flask) -> None:
    html = logged_in(app, "admin").get("/settings/").get_data(as_text=True)
    rows = _plan_rows(html)
    assert tuple(rows) == RESOURCE_TYPES
    assert rows["Encounter"].startswith("create + update")
    assert rows["DocumentReference"].startswith("create; amend = new note that replaces the old")
    assert "preset generic; transaction mode" in html


def test_settings_show_the_epic_write_plan(home: Home) -> None:
    from webapp import close_app

    _set_preset(home, "epic")
    app = make_app(home)
    try:
        html = logged_in(app, "admin").get("/settings/").get_data(as_text=True)
    finally:
        close_app(app)
    rows = _plan_rows(html)
    assert tuple(rows) == RESOURCE_TYPES
    assert rows["DocumentReference"].startswith("create; amend in place (docStatus amended); ")
    assert rows["Provenance"] == "not written" and rows["Device"] == "not written"
    assert rows["Encounter"].startswith("match only")
    assert "preset epic; single mode; conditional ops no" in html  # the EHR card
    assert "Epic (R4)" in html


# -- what this EHR could not carry, on a record's page ---------------------------------


def test_record_page_lists_omitted_parts_and_the_part2_form(app: Flask, home: Home) -> None:
    detail = {"mode": "single", "preset": "epic", "resources": ["DocumentReference/d1"],
              "omitted": ["goals:ehr-owns-encounters"], "part2_form": "notice-in-content[0]"}
    ids = _finish(home, {HELD: (JobState.SYNCED, detail),
                         "ps-2026-000124": (JobState.SYNCED, {"mode": "transaction",
                                                              "resources": []})})
    auditor = logged_in(app, "auditor")
    html = auditor.get(f"/records/{ids[HELD]}").get_data(as_text=True)
    assert "What this EHR could not carry" in html and "<code>epic</code> preset" in html
    omitted = re.search(r'<ul id="omitted">(.*?)</ul>', html, re.S)
    assert omitted
    assert ("<li>The goals are not written: the EHR keeps its own encounters: "
            "<code>goals:ehr-owns-encounters</code></li>") in omitted.group(1)
    assert "<code>notice-in-content[0]</code>" in omitted.group(1)
    assert "the notice and the consent" in omitted.group(1)
    # a record synced with nothing left out shows no such section
    html = auditor.get(f"/records/{ids['ps-2026-000124']}").get_data(as_text=True)
    assert 'id="omitted"' not in html and "What this EHR could not carry" not in html


def test_record_page_shows_only_the_last_attempts_omissions(app: Flask, home: Home) -> None:
    ids = _finish(home, {HELD: (JobState.PENDING, {"omitted": ["goals:ehr-owns-encounters"]})})
    page = logged_in(app, "admin").get(f"/records/{ids[HELD]}").get_data(as_text=True)
    assert "goals:ehr-owns-encounters" in page
    _finish(home, {HELD: (JobState.SYNCED, {"mode": "transaction", "resources": []})})
    page = logged_in(app, "admin").get(f"/records/{ids[HELD]}").get_data(as_text=True)
    assert 'id="omitted"' not in page and "goals:ehr-owns-encounters" not in page


# -- linking a held record to the EHR's Encounter --------------------------------------


def test_holds_page_offers_the_link_form_to_admins_only(app: Flask, home: Home) -> None:
    ids = _finish(home, {HELD: (JobState.WAITING_ENCOUNTER, None)})
    html = logged_in(app, "admin").get("/holds/encounter").get_data(as_text=True)
    assert 'action="/holds/encounter/link"' in html and "Link encounter" in html
    label = f'<label class="label" for="f-encounter_id-{ids[HELD]}">EHR Encounter id for {HELD}'
    assert label in html and f'<input id="f-encounter_id-{ids[HELD]}" name="encounter_id"' in html
    assert f'name="record" value="{HELD}"' in html
    html = logged_in(app, "auditor").get("/holds/encounter").get_data(as_text=True)
    assert HELD in html  # the auditor sees the hold, not the form
    assert "/holds/encounter/link" not in html and "Link encounter" not in html
    assert 'name="encounter_id"' not in html


def _link_state(home: Home) -> tuple[str | None, str]:
    store = home.store()
    try:
        state = next(r["state"] for r in store.jobs_overview(limit=100) if r["record_id"] == HELD)
        return store.get_link("encounter", f"peer-tool|{HELD}"), str(state)
    finally:
        store.close()


def test_link_form_refusals_link_nothing(app: Flask, home: Home) -> None:
    _finish(home, {HELD: (JobState.WAITING_ENCOUNTER, None)})
    admin = logged_in(app, "admin")
    token = csrf_token(admin, "/holds/encounter")
    form = {"csrf_token": token, "source": "peer-tool", "record": HELD}
    response = admin.post("/holds/encounter/link", data={**form, "encounter_id": "  "})
    assert response.status_code == 400  # the page again, the error beside the field
    html = response.get_data(as_text=True)
    assert "Enter the EHR&#39;s Encounter id." in html and 'aria-invalid="true"' in html
    assert admin.post("/holds/encounter/link",
                      data={**form, "encounter_id": "e" * 65}).status_code == 400
    assert admin.post("/holds/encounter/link",
                      data={**form, "record": "", "encounter_id": "e1"}).status_code == 400
    # not a FHIR id: refused before the EHR is asked
    response = admin.post("/holds/encounter/link", data={**form, "encounter_id": "e 1"})
    assert response.status_code == 400
    html = response.get_data(as_text=True)
    assert "Encounter/e 1 could not be linked" in html and 'value="e 1"' in html  # kept
    # only admins, and only with the form's token
    auditor = logged_in(app, "auditor")
    assert auditor.post("/holds/encounter/link", data={
        **form, "csrf_token": csrf_token(auditor, "/holds/encounter"),
        "encounter_id": "e1"}).status_code == 403
    assert admin.post("/holds/encounter/link", data={
        **form, "csrf_token": "", "encounter_id": "e1"}).status_code == 400
    assert _link_state(home) == (None, JobState.WAITING_ENCOUNTER.value)


def test_an_encounter_the_ehr_cannot_show_is_not_linked(app: Flask, home: Home) -> None:
    _finish(home, {HELD: (JobState.WAITING_ENCOUNTER, None)})
    admin = logged_in(app, "admin")
    token = csrf_token(admin, "/holds/encounter")
    with responses.RequestsMock() as rsps:
        rsps.get(f"{home.ehr_url}/Encounter/enc-404", status=404, json={
            "resourceType": "OperationOutcome", "issue": [{
                "severity": "error", "code": "not-found", "diagnostics": "no such Encounter"}]})
        response = admin.post("/holds/encounter/link", data={
            "csrf_token": token, "source": "peer-tool", "record": HELD,
            "encounter_id": "enc-404"})
    assert response.status_code == 400
    html = response.get_data(as_text=True)
    assert "Encounter/enc-404 could not be linked" in html
    assert _link_state(home) == (None, JobState.WAITING_ENCOUNTER.value)
    assert HELD in html  # still held
