"""The document form on a phone (390 x 844) in headless Chromium, the real FHIR server behind
it (issue 10): pick a participant from the caseload, document, save a draft, resume it,
submit; Enter in a one-line field submits nothing; an amendment from the record page
supersedes the note in the EHR, a retraction marks it entered-in-error."""

from __future__ import annotations

import re
from typing import Any

import pytest
from playwright.sync_api import Page, expect

from tests.browser.conftest import Live
from tests.conftest import example_dict

pytestmark = [pytest.mark.browser, pytest.mark.integration]

PHONE = {"width": 390, "height": 844}
NOTE_SYSTEM = "https://riverside-peer.example/fhir/sid/peersync/web-form/note"
ENC_SYSTEM = "https://riverside-peer.example/fhir/sid/peersync/web-form/encounter"


def log_in(page: Page, live: Live, name: str) -> None:
    page.set_viewport_size(PHONE)
    page.goto(f"{live.url}/login")
    page.get_by_label("User name").fill(name)
    page.get_by_label("Password").fill(live.passwords[name])
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("heading", name="Document an encounter")).to_be_visible()


def no_sideways_scroll(page: Page) -> None:
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= PHONE["width"], f"{page.url}: {width}px wide"


def document_dana(page: Page, live: Live, text: str) -> str:
    """From the caseload to a synced note; the record id."""
    page.get_by_label("Find a participant by name or id").fill("dana")
    page.get_by_role("button", name="Search").click()
    page.get_by_role("link", name="Use Dana Lopez").click()
    expect(page.locator("#participant-mrn")).to_have_value("MRN-55821")
    page.locator("#date").fill("2026-11-24")
    page.locator("#start_time").fill("10:00")
    page.locator("#end_time").fill("10:40")
    page.locator("#note-text").fill(text)
    page.get_by_role("button", name="Save and send to the EHR").click()
    expect(page.locator("#sync-state")).to_have_text("synced")
    heading = re.search(r"Record (wf-[0-9a-f]+)", page.locator("h1").inner_text())
    assert heading
    return heading.group(1)


@pytest.fixture(scope="module")
def dana(live: Live) -> Live:
    """S-17 (alex) documented for Dana Lopez (P-1001) before: she is in alex's caseload."""
    live.import_(example_dict("in-person-session.json"), name="caseload")
    live.cli("sync")
    return live


def test_caseload_draft_resume_and_submit_on_a_phone(page: Page, dana: Live,
                                                     shot: Any) -> None:
    live = dana
    log_in(page, live, "alex")
    no_sideways_scroll(page)
    page.get_by_label("Find a participant by name or id").fill("dana")
    page.get_by_role("button", name="Search").click()
    page.get_by_role("link", name="Use Dana Lopez").click()
    expect(page.locator("#participant-id")).to_have_value("P-1001")
    expect(page.locator("#participant-mrn")).to_have_value("MRN-55821")
    expect(page.locator("#participant-given")).to_have_value("Dana")
    expect(page.locator("#participant-family")).to_have_value("Lopez")
    expect(page.locator("#participant-birth_date")).to_have_value("1988-04-12")
    expect(page.locator("#end_time")).to_have_value("")  # never guessed
    page.locator("#date").fill("2026-11-25")
    page.locator("#start_time").fill("14:00")
    page.locator("#end_time").fill("14:50")
    page.locator("#note-text").fill("Walked to the food bank together.")
    # Enter in a one-line field submits nothing (the form's first submit button is disabled)
    page.evaluate("window.__stillHere = true")
    for field in ("#participant-mrn", "#participant-given", "#date", "#start_time",
                  "#service-group_size", "#goals"):
        page.locator(field).press("Enter")
    page.wait_for_timeout(700)
    assert page.evaluate("window.__stillHere === true"), "Enter submitted the form"
    shot("document-phone")
    no_sideways_scroll(page)
    page.get_by_role("button", name="Save draft").click()
    expect(page.locator(".flash-info")).to_contain_text("Draft saved")
    drafts = page.locator("#drafts")
    expect(drafts).to_contain_text("Dana Lopez, 2026-11-25")
    no_sideways_scroll(page)
    drafts.get_by_role("link", name=re.compile("^Resume")).first.click()
    expect(page.locator("#note-text")).to_have_value("Walked to the food bank together.")
    page.locator("#note-text").fill("Walked to the food bank together. Next: the bus pass.")
    page.get_by_role("button", name="Save and send to the EHR").click()
    expect(page.locator("#sync-state")).to_have_text("synced")
    expect(page.locator("#where-now")).to_contain_text("Sent: the EHR holds this note.")
    shot("record-web-form-phone")
    no_sideways_scroll(page)
    record_id = re.search(r"Record (wf-[0-9a-f]+)", page.locator("h1").inner_text())
    assert record_id
    [doc] = live.search("DocumentReference", identifier=f"{NOTE_SYSTEM}|{record_id.group(1)}")
    assert doc["status"] == "current"
    page.goto(f"{live.url}/document/")
    expect(page.locator("#drafts")).to_contain_text("No drafts.")  # submitted: gone
    expect(page.locator("#my-notes")).to_contain_text("Dana Lopez")  # a participant column


def test_an_error_summary_takes_focus_and_links_to_its_field(page: Page, dana: Live) -> None:
    log_in(page, dana, "alex")
    page.locator("#participant-id").fill("P-1001")
    page.locator("#date").fill("2026-11-25")
    page.locator("#start_time").fill("09:00")
    page.locator("#end_time").fill("08:30")  # before the start: the server's check
    page.locator("#note-text").fill("Short call.")
    page.get_by_role("button", name="Save and send to the EHR").click()
    summary = page.locator("#form-errors")
    expect(summary).to_be_focused()
    expect(page.locator("#err-end_time")).to_have_text("must not be before start")
    expect(page.locator("#end_time")).to_have_attribute("aria-invalid", "true")
    summary.get_by_role("link", name=re.compile("^End")).click()
    expect(page).to_have_url(re.compile("#end_time$"))


def test_amend_then_retract_from_the_record_page(page: Page, dana: Live, shot: Any) -> None:
    live = dana
    log_in(page, live, "alex")
    record_id = document_dana(page, live, "First version of the note.")
    page.get_by_role("link", name="Amend this note").click()
    expect(page.locator("#note-text")).to_have_value("First version of the note.")
    page.locator("#note-text").fill("Second version: corrected the bus route.")
    shot("amend-phone")
    no_sideways_scroll(page)
    page.get_by_role("button", name="Send the amendment").click()
    expect(page.locator("#sync-state")).to_have_text("synced")
    docs = live.search("DocumentReference", identifier=f"{NOTE_SYSTEM}|{record_id}")
    by_status = {d["status"]: d for d in docs}
    assert len(docs) == 2 and set(by_status) == {"superseded", "current"}
    old, new = by_status["superseded"], by_status["current"]
    assert new["relatesTo"] == [
        {"code": "replaces", "target": {"reference": f"DocumentReference/{old['id']}"}}]
    assert {i["value"] for d in docs for i in d["identifier"]} >= {
        f"{record_id}.v1", f"{record_id}.v2"}

    page.get_by_label("Why retract it? (required)").select_option("duplicate")
    page.get_by_role("button", name="Retract this note").click()
    expect(page.locator("#sync-state")).to_have_text("synced")
    expect(page.locator("#where-now")).to_contain_text("a duplicate of another note")
    expect(page.locator("#where-now")).to_contain_text("Retracted")
    shot("record-retracted-phone")
    no_sideways_scroll(page)
    docs = live.search("DocumentReference", identifier=f"{NOTE_SYSTEM}|{record_id}")
    assert [d for d in docs if d["status"] == "current"] == []
    assert {d["id"]: d["status"] for d in docs}[new["id"]] == "entered-in-error"
    [enc] = live.search("Encounter", identifier=f"{ENC_SYSTEM}|{record_id}")
    assert enc["status"] == "entered-in-error"
    expect(page.get_by_role("link", name="Amend this note")).to_have_count(0)


def test_the_form_pages_pass_axe_and_reflow(browser: Any, dana: Live) -> None:
    """axe-core (WCAG 2.0-2.2 A/AA) at 390 and 1280 px, no sideways scroll at 320 and 390,
    touch targets (tests/browser/a11y.py): the form with its caseload, drafts and notes,
    the form sent back with errors, an amendment's form, a record page with its actions."""
    from tests.browser import a11y

    live = dana
    context = browser.new_context(bypass_csp=True, viewport=PHONE)  # to inject axe only
    page = context.new_page()
    try:
        log_in(page, live, "alex")
        record_id = document_dana(page, live, "A note to check the pages with.")
        record_page = page.url
        page.goto(f"{live.url}/document/")
        page.locator("#participant-id").fill("P-1001")
        page.locator("#note-text").fill("Draft for the page check.")
        page.get_by_role("button", name="Save draft").click()
        source, failures = a11y.axe_source(), []

        def check(label: str) -> None:
            for width in (320, 390, 1280):
                page.set_viewport_size({"width": width, "height": 844})
                if width < 1000 and a11y.scroll_width(page) > width:
                    failures.append(f"{label} @{width}: {a11y.overflowing(page)}")
                if width == 390:
                    failures.extend(f"{label}: {p}" for p in a11y.target_problems(page))
                if width in (390, 1280):
                    for v in a11y.run_axe(page, source):
                        failures.extend(a11y.describe(label, width, v))

        page.goto(f"{live.url}/document/?q=dana")
        check("form")
        page.locator("#participant-birth_date").fill("2031-01-01")
        page.locator("#date").fill("2026-11-26")
        page.locator("#start_time").fill("10:00")
        page.locator("#end_time").fill("10:30")
        page.get_by_role("button", name="Save draft").click()  # no browser check: a draft
        page.get_by_role("link", name=re.compile("^Resume")).first.click()
        page.locator("#start_time").fill("")
        # the server's checks, not the browser's (which would stop an empty Start first)
        page.evaluate("document.querySelector('form.df-form').noValidate = true")
        page.get_by_role("button", name="Save and send to the EHR").click()
        expect(page.locator("#form-errors")).to_be_visible()
        expect(page.locator("#err-participant-birth_date")).to_have_text(
            "must not be in the future")
        check("form with errors")
        page.goto(f"{live.url}/document/{record_id}/amend")
        check("amend")
        page.goto(record_page)
        check("record")
        assert not failures, "\n".join(failures)
    finally:
        context.close()
