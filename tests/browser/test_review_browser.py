"""Supervisor review in the browser (issue 10), on a 390 x 844 phone unless said, with the
real FHIR server (sekmet) behind the app and the agency profile's
``[review] policy = "cosign"`` (this module's app only; the other browser modules keep
``none``):

- caseload -> draft -> resume -> submit waits for review; one-click co-sign sends it, with
  the supervisor's Practitioner as ``DocumentReference.authenticator``;
- a returned note never reaches the EHR; its resubmission (same ``note.version``, new text)
  does, once co-signed, as the note's one DocumentReference;
- a keyboard-only walk (Tab, Shift+Tab, Enter, Space, typing) from log-in to co-signature,
  with focus visible at each control relied on;
- the review queue and record pages in their waiting / returned / co-signed states: no
  sideways scroll at 320 and 390 px, axe-core 0 violations at 390 and 1280 px.
"""

from __future__ import annotations

import base64
import re
from typing import Any

import pytest
from click.testing import CliRunner
from playwright.sync_api import Page, expect

from tests.browser.conftest import Live
from tests.conftest import example_dict

pytestmark = [pytest.mark.browser, pytest.mark.integration]

PHONE = {"width": 390, "height": 844}
NOTE_SYSTEM = "https://riverside-peer.example/fhir/sid/peersync/web-form/note"
STAFF_SYSTEM = "https://riverside-peer.example/fhir/sid/staff"
SUPERVISOR = "sam"  # S-90, supervises every specialist (tests/webapp_support.py)
SPECIALIST = "alex"  # S-17
HOMES = {SPECIALIST: "Document an encounter", SUPERVISOR: "Notes waiting for your review"}
MAX_TABS = 15  # any control a walk needs is reached in fewer Tabs than this from its start


@pytest.fixture(scope="module")
def review(live: Live) -> Live:
    """This module's live app with ``[review] policy = "cosign"``.

    The app reads its config and profile at its first request, and none has been made
    yet: the home's peersync.toml is pointed at a copy of the default profile with the
    policy changed (the CLI reads the same file). The EHR knows the supervisor (S-90) as
    a Practitioner; Dana Lopez (P-1001) is in alex's caseload from a co-signed, synced
    note (which also makes alex's own Practitioner).
    """
    from mappings.profile import default_profile_path

    text = default_profile_path().read_text("utf-8")
    cosign, count = re.subn(r'^policy = "none"$', 'policy = "cosign"', text, flags=re.M)
    assert count == 1, "the default profile's [review] policy line moved"
    (live.home / "agency.toml").write_text(cosign, "utf-8")
    config = live.home / "peersync.toml"
    pointed, count = re.subn(r'^profile = "default"', 'profile = "agency.toml"',
                             config.read_text("utf-8"), flags=re.M)
    assert count == 1, "peersync.toml names no default profile"
    config.write_text(pointed, "utf-8")
    live.post({
        "resourceType": "Practitioner", "identifier": [{"system": STAFF_SYSTEM,
                                                        "value": "S-90"}],
        "name": [{"family": "Supervisor", "given": ["Sam"]}]})
    live.import_(example_dict("in-person-session.json"), name="caseload")
    live.cli("sync")  # exit 0 over a note waiting for review
    assert live.search("DocumentReference", identifier="N-88812") == [], "cosign is not on"
    review_cli(live, "approve", "ps-2026-000123", "--by", SUPERVISOR)
    live.cli("sync")
    assert len(live.search("DocumentReference", identifier="N-88812")) == 1, \
        "the co-signed caseload note was not sent"
    return live


def review_cli(live: Live, *args: str) -> Any:
    """``peersync review ...`` with the supervisor's password on standard input."""
    from connector.cli import main

    result = CliRunner().invoke(main, ["review", *args], input=live.passwords[SUPERVISOR] + "\n",
                                env={"PEERSYNC_HOME": str(live.home)}, catch_exceptions=False)
    assert result.exit_code == 0, (args, result.output)
    return result


# -- pages -------------------------------------------------------------------------------

def log_in(page: Page, live: Live, name: str) -> None:
    page.goto(f"{live.url}/login")
    page.get_by_label("User name").fill(name)
    page.get_by_label("Password").fill(live.passwords[name])
    page.get_by_role("button", name="Log in").click()
    expect(page.locator("h1")).to_have_text(HOMES[name])


def log_out(page: Page) -> None:
    page.get_by_role("button", name="Log out").click()
    expect(page.get_by_role("heading", name="Log in")).to_be_visible()


def no_sideways_scroll(page: Page, width: int = PHONE["width"]) -> None:
    scroll = page.evaluate("document.documentElement.scrollWidth")
    assert scroll <= width, f"{page.url}: {scroll}px wide at {width}px"


def record_id_and_job(page: Page) -> tuple[str, int]:
    """On a record page: its record id and job id."""
    heading = re.search(r"Record (wf-[0-9a-f]+)", page.locator("h1").inner_text())
    job = re.search(r"/records/(\d+)$", page.url)
    assert heading and job, (page.url, page.locator("h1").inner_text())
    return heading.group(1), int(job.group(1))


def document_note(page: Page, live: Live, day: str, text: str, *,
                  draft_first: bool = False) -> tuple[str, int]:
    """alex, logged in on the form: Dana from the caseload, one session on ``day``, submit.
    With ``draft_first``: save a draft, resume it and change the text before submitting.
    The record id and job id of the record page it lands on."""
    page.goto(f"{live.url}/document/")
    page.get_by_label("Find a participant by name or id").fill("dana")
    page.get_by_role("button", name="Search").click()
    page.get_by_role("link", name="Use Dana Lopez").click()
    expect(page.locator("#participant-mrn")).to_have_value("MRN-55821")
    page.locator("#date").fill(day)
    page.locator("#start_time").fill("09:00")
    page.locator("#end_time").fill("09:45")
    if draft_first:
        page.locator("#note-text").fill("Draft: " + text)
        page.get_by_role("button", name="Save draft").click()
        expect(page.locator(".flash-info")).to_contain_text("Draft saved")
        page.locator("#drafts").get_by_role("link", name=re.compile(
            rf"^Resume draft \d+: Dana Lopez, {day}$")).click()
        expect(page.locator("#note-text")).to_have_value("Draft: " + text)
        expect(page.locator("#date")).to_have_value(day)
    page.locator("#note-text").fill(text)
    page.get_by_role("button", name="Save and send to the EHR").click()
    expect(page.locator("#sync-state")).to_have_text("waiting_review")
    return record_id_and_job(page)


def cosign_button(page: Page, job: int) -> Any:
    return page.locator(f"#review-{job}").get_by_role("button", name=re.compile("^Co-sign"))


def note_docs(live: Live, record_id: str) -> list[dict[str, Any]]:
    return live.search("DocumentReference", identifier=f"{NOTE_SYSTEM}|{record_id}")


def note_text(doc: dict[str, Any]) -> str:
    return base64.b64decode(doc["content"][0]["attachment"]["data"]).decode("utf-8")


# -- 1. caseload, draft, resume, submit -> waiting_review -> co-sign -> authenticator ------

def test_caseload_draft_resume_submit_waits_then_one_click_cosign_sends_it_authenticated(
        page: Page, review: Live, shot: Any) -> None:
    live = review
    page.set_viewport_size(PHONE)
    log_in(page, live, SPECIALIST)
    page.get_by_label("Find a participant by name or id").fill("dana")
    page.get_by_role("button", name="Search").click()
    expect(page.locator("#caseload")).to_contain_text("MRN-55821")
    no_sideways_scroll(page)
    shot("document-caseload-phone")
    record_id, job = document_note(page, live, "2026-11-25", "Walked to the food bank. "
                                   "Next: the bus pass.", draft_first=True)
    where = page.locator("#where-now")
    expect(where).to_contain_text("Waiting for review: not sent until a supervisor co-signs")
    expect(page.locator("#review-box")).to_contain_text(f"Waiting for review by {SUPERVISOR}")
    no_sideways_scroll(page)
    shot("record-waiting-review-phone")
    page.goto(f"{live.url}/document/")
    expect(page.locator("#drafts")).to_contain_text("No drafts.")  # submitted: gone
    live.cli("sync")  # a sync sends nothing that waits for review, and exits 0
    assert note_docs(live, record_id) == []
    log_out(page)

    log_in(page, live, SUPERVISOR)  # the supervisor's home is the review queue
    item = page.locator(f"#review-{job}")
    expect(item).to_contain_text("Walked to the food bank. Next: the bus pass.")
    expect(item).to_contain_text("S-17")
    no_sideways_scroll(page)
    cosign_button(page, job).click()  # one click: no confirmation step
    expect(page.locator(".flash-info")).to_contain_text(f"Co-signed record {record_id}")
    expect(page.locator(f"#review-{job}")).to_have_count(0)
    page.goto(f"{live.url}/records/{job}")
    state = page.locator("#sync-state").inner_text()
    if state != "synced":  # the app's own sync pass did not finish it: the worker's would
        live.cli("sync")
        page.reload()
    expect(page.locator("#sync-state")).to_have_text("synced")
    expect(page.locator("#review-box")).to_contain_text(f"Co-signed by S-90 ({SUPERVISOR})")

    [doc] = note_docs(live, record_id)
    assert doc["status"] == "current"
    [sam] = live.search("Practitioner", identifier=f"{STAFF_SYSTEM}|S-90")
    assert doc["authenticator"] == {"reference": f"Practitioner/{sam['id']}"}
    assert "Next: the bus pass." in note_text(doc)


# -- 2. returned -> never in the EHR -> edit and resubmit -> co-signed -> one note ----------

def test_a_returned_note_stays_out_of_the_ehr_and_its_resubmission_reaches_it_once_cosigned(
        page: Page, review: Live, shot: Any) -> None:
    live = review
    comment = "Name the next step and who takes it."
    page.set_viewport_size(PHONE)
    log_in(page, live, SPECIALIST)
    record_id, job = document_note(page, live, "2026-11-23", "Talked about the lease.")
    log_out(page)

    log_in(page, live, SUPERVISOR)
    item = page.locator(f"#review-{job}")
    expect(item).to_contain_text("Talked about the lease.")
    no_sideways_scroll(page)
    shot("review-queue-phone")  # with the participant's latest notes, when test 1 ran
    item.get_by_label(re.compile("^Comment for the specialist")).fill(comment)
    item.get_by_role("button", name=re.compile("^Return note of")).click()
    expect(page.locator(".flash-info")).to_contain_text(f"Returned record {record_id}")
    expect(page.locator(f"#review-{job}")).to_have_count(0)
    live.cli("sync")  # exits 0; a returned version is terminal: nothing to send
    assert note_docs(live, record_id) == []
    page.goto(f"{live.url}/records/{job}")
    expect(page.locator("#sync-state")).to_have_text("returned")
    log_out(page)

    log_in(page, live, SPECIALIST)
    page.goto(f"{live.url}/records/{job}")
    expect(page.locator("#sync-state")).to_have_text("returned")
    box = page.locator("#review-box")
    expect(box).to_contain_text(f"Returned by S-90 ({SUPERVISOR})")
    expect(box.locator(".review-comment")).to_have_text(comment)
    expect(page.locator("#where-now")).to_contain_text("it will not be sent")
    expect(page.get_by_role("link", name="Amend this note")).to_have_count(0)
    no_sideways_scroll(page)
    shot("record-returned-phone")
    page.get_by_role("link", name="Edit and resubmit").click()
    expect(page.locator("h1")).to_have_text(f"Resubmit note {record_id}")
    expect(page.locator("main")).to_contain_text("note version 1")  # the same note.version
    expect(page.locator("#note-text")).to_have_value("Talked about the lease.")
    new_text = "Lease renewal: Dana calls the landlord on Monday, and I join the call."
    page.locator("#note-text").fill(new_text)
    no_sideways_scroll(page)
    page.get_by_role("button", name="Resubmit for review").click()
    expect(page.locator("#sync-state")).to_have_text("waiting_review")
    again_id, again = record_id_and_job(page)
    assert again_id == record_id and again != job  # a new version of the same record
    live.cli("sync")
    assert note_docs(live, record_id) == []  # still waiting: not sent
    log_out(page)

    log_in(page, live, SUPERVISOR)
    expect(page.locator(f"#review-{again}")).to_contain_text(new_text)
    expect(page.locator(f"#review-{again}")).to_contain_text("note version 1")
    cosign_button(page, again).click()
    expect(page.locator(".flash-info")).to_contain_text(f"Co-signed record {record_id}")
    live.cli("sync")  # if the app's own pass left anything
    page.goto(f"{live.url}/records/{again}")
    expect(page.locator("#sync-state")).to_have_text("synced")
    page.goto(f"{live.url}/records/{job}")
    expect(page.locator("#sync-state")).to_have_text("returned")  # terminal, never sent

    [doc] = note_docs(live, record_id)  # exactly one DocumentReference for the note
    assert doc["status"] == "current"
    assert new_text in note_text(doc) and "Talked about the lease." not in note_text(doc)
    assert f"{record_id}.v1" in {i["value"] for i in doc["identifier"]}


# -- 3. keyboard only: log in, skip link, caseload, form, submit; log in, co-sign ----------

FOCUSED = """() => {
  const e = document.activeElement;
  if (!e || e === document.body) return {desc: 'nothing (body)', visible: false, inView: false};
  const s = getComputedStyle(e), r = e.getBoundingClientRect();
  const name = (e.getAttribute('aria-label') || e.innerText || e.getAttribute('name') || '')
    .replace(/\\s+/g, ' ').trim().slice(0, 60);
  return {
    desc: `${e.tagName.toLowerCase()}${e.id ? '#' + e.id : ''} "${name}"`,
    visible: (s.outlineStyle !== 'none' && parseFloat(s.outlineWidth) > 0)
      || (s.boxShadow && s.boxShadow !== 'none'),
    inView: r.width > 0 && r.height > 0 && r.bottom > 0 && r.top < innerHeight
      && r.right > 0 && r.left < innerWidth,
    style: `outline: ${s.outlineStyle} ${s.outlineWidth}; box-shadow: ${s.boxShadow}`,
  };
}"""


def focus_shows(page: Page, control: str) -> None:
    """The focused element shows its focus (an outline or a box shadow) and is on screen."""
    now = page.evaluate(FOCUSED)
    assert now["visible"], f"{control}: focus is not visible on {now['desc']} ({now['style']})"
    assert now["inView"], f"{control}: the focused {now['desc']} is off screen"


def tab_to(page: Page, selector: str, control: str, *, limit: int = MAX_TABS,
           key: str = "Tab") -> int:
    """Press Tab (or ``key``) until the element matching ``selector`` has the focus; fail,
    naming the control and the focus path, when ``limit`` presses do not reach it."""
    path = []
    for presses in range(1, limit + 1):
        page.keyboard.press(key)
        if page.evaluate("s => !!document.activeElement && document.activeElement.matches(s)",
                         selector):
            focus_shows(page, control)
            return presses
        path.append(page.evaluate(FOCUSED)["desc"])
    raise AssertionError(f"{control} ({selector}) not reached in {limit} presses of {key} "
                         f"on {page.url}; focus went: {' -> '.join(path)}")


def skip_to_main(page: Page) -> None:
    """The page's first Tab stop is the skip link, shown when focused; Enter moves the
    focus to the main content."""
    tab_to(page, "a.skip-link", "the skip link", limit=1)
    page.keyboard.press("Enter")
    assert page.evaluate("document.activeElement.id") == "main", "the skip link did not move focus"


def keyboard_log_in(page: Page, live: Live, name: str) -> None:
    page.goto(f"{live.url}/login")
    expect(page.locator("#f-name")).to_be_focused()  # autofocus, applied after load
    focus_shows(page, "User name")
    page.keyboard.type(name)
    tab_to(page, "#f-password", "Password", limit=1)
    page.keyboard.type(live.passwords[name])
    tab_to(page, "form button[type=submit]", "Log in", limit=1)
    page.keyboard.press("Enter")
    expect(page.locator("h1")).to_have_text(HOMES[name])


def test_keyboard_only_document_submit_and_cosign_with_visible_focus(
        browser: Any, review: Live) -> None:
    """No mouse and no fill/click: Tab, Shift+Tab, Enter, Space and typing only."""
    live = review
    text = "Keyboard only: practised the bus route; Dana leads next time."
    phone = browser.new_context(viewport=PHONE, locale="en-US")
    desk = browser.new_context(viewport=PHONE, locale="en-US")
    try:
        page = phone.new_page()
        keyboard_log_in(page, live, SPECIALIST)
        skip_to_main(page)
        tab_to(page, "#caseload-q", "the caseload search box")
        page.keyboard.type("dana")
        page.keyboard.press("Enter")  # a search form (GET): Enter searches
        expect(page).to_have_url(re.compile(r"/document/\?q=dana$"))
        skip_to_main(page)
        tab_to(page, "#caseload a.df-button", "Use Dana Lopez")
        page.keyboard.press("Enter")
        expect(page.locator("#participant-id")).to_have_value("P-1001")
        expect(page.locator("#participant-mrn")).to_have_value("MRN-55821")
        skip_to_main(page)
        tab_to(page, "#date", "Date")
        page.keyboard.type("11212026")  # the widget's own order (en-US: mm/dd/yyyy)
        tab_to(page, "#start_time", "Start")
        page.keyboard.type("1000AM")
        tab_to(page, "#end_time", "End")
        page.keyboard.type("1040AM")
        tab_to(page, "#note-text", "Note text")
        page.keyboard.type(text)
        expect(page.locator("#date")).to_have_value("2026-11-21")
        expect(page.locator("#start_time")).to_have_value("10:00")
        expect(page.locator("#end_time")).to_have_value("10:40")
        expect(page.locator("#note-text")).to_have_value(text)
        tab_to(page, "form.df-form button.primary", "Save and send to the EHR")
        page.keyboard.press("Enter")
        expect(page.locator("#sync-state")).to_have_text("waiting_review")
        record_id, job = record_id_and_job(page)

        page = desk.new_page()
        keyboard_log_in(page, live, SUPERVISOR)  # a supervisor's home: the review queue
        expect(page).to_have_url(f"{live.url}/review/")
        expect(page.locator(f"#review-{job}")).to_contain_text(text)
        skip_to_main(page)
        cosign = f"#review-{job} form[action$='/cosign'] button"
        tab_to(page, cosign, "Co-sign")
        tab_to(page, f"#comment-{job}", "the return comment", limit=1)
        tab_to(page, cosign, "Co-sign (Shift+Tab back)", limit=1, key="Shift+Tab")
        page.keyboard.press("Space")
        expect(page.locator(".flash-info")).to_contain_text(f"Co-signed record {record_id}")
        live.cli("sync")  # if the app's own pass left anything
        page.goto(f"{live.url}/records/{job}")
        expect(page.locator("#sync-state")).to_have_text("synced")
        [doc] = note_docs(live, record_id)
        assert text in note_text(doc)
    finally:
        phone.close()
        desk.close()


# -- 4. the queue and record pages in each review state: reflow, axe, touch targets -------

def test_review_queue_and_record_pages_reflow_and_pass_axe_in_each_review_state(
        browser: Any, review: Live) -> None:
    """Waiting, returned and co-signed: the queue (with notes waiting, then after a return
    and after a co-signature) and each record page as its specialist and as the supervisor.
    No sideways scroll at 320 and 390 px; axe-core (WCAG 2.0-2.2 A/AA) 0 violations at 390
    and 1280 px; touch targets and unique names at 390 px (tests/browser/a11y.py)."""
    from tests.browser import a11y

    live = review
    source, failures, checked = a11y.axe_source(), [], []
    # bypass_csp only to inject axe-core: the app's CSP forbids every script
    contexts = [browser.new_context(bypass_csp=True, viewport=PHONE) for _ in range(2)]

    def check(page: Page, label: str) -> None:
        checked.append(label)
        for width in (320, 390, 1280):
            page.set_viewport_size({"width": width, "height": PHONE["height"]})
            if width in a11y.PHONE_WIDTHS and a11y.scroll_width(page) > width:
                failures.append(f"{label} @{width}px: {a11y.scroll_width(page)}px wide: "
                                f"{a11y.overflowing(page)}")
            if width == PHONE["width"]:
                failures.extend(f"{label}: {p}" for p in a11y.target_problems(page))
            if width in a11y.AXE_WIDTHS:
                for violation in a11y.run_axe(page, source):
                    failures.extend(a11y.describe(label, width, violation))
        page.set_viewport_size(PHONE)

    try:
        alex, sam = (c.new_page() for c in contexts)
        log_in(alex, live, SPECIALIST)
        notes = {kind: document_note(alex, live, day, f"A note that ends {kind}.")
                 for kind, day in (("waiting", "2026-11-10"), ("returned", "2026-11-11"),
                                   ("co-signed", "2026-11-12"))}
        log_in(sam, live, SUPERVISOR)
        for _, job in notes.values():
            expect(sam.locator(f"#review-{job}")).to_be_visible()
        check(sam, "review queue, 3 waiting")
        returned = sam.locator(f"#review-{notes['returned'][1]}")
        returned.get_by_label(re.compile("^Comment for the specialist")).fill("Say what is next.")
        returned.get_by_role("button", name=re.compile("^Return note of")).click()
        expect(sam.locator(".flash-info")).to_contain_text("Returned record")
        check(sam, "review queue after a return")
        cosign_button(sam, notes["co-signed"][1]).click()
        expect(sam.locator(".flash-info")).to_contain_text("Co-signed record")
        check(sam, "review queue after a co-signature")
        live.cli("sync")
        shown = {"waiting": "waiting_review", "returned": "returned", "co-signed": "synced"}
        for kind, (_, job) in notes.items():
            for role, page in (("specialist", alex), ("supervisor", sam)):
                page.goto(f"{live.url}/records/{job}")
                expect(page.locator("#sync-state")).to_have_text(shown[kind])
                expect(page.locator("#review-box")).to_be_visible()
                check(page, f"record {kind}, as the {role}")
        assert len(checked) == 9
        assert not failures, "\n".join(failures)
    finally:
        for context in contexts:
            context.close()
    review_cli(live, "approve", notes["waiting"][0], "--by", SUPERVISOR)  # an empty queue
