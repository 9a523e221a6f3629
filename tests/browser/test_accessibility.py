"""Every page x role on a phone and a desktop: no sideways scroll, and axe-core finds nothing.

The page list is the app's own url_map (every GET route that renders a page),
with parameters for the detail pages from the data seeded here: a page added
later is checked without anyone adding it here, and a detail page nobody
gave parameters for fails the test (``PARAMS``). For each role (one browser
context per role, one login) and each page: ``scrollWidth <= innerWidth`` at
320 and 390 px, and axe-core (WCAG 2.0/2.1/2.2 A and AA tags) reports no
violation at 390 and 1280 px. The figures go to
test-artifacts/accessibility.json.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, expect

from tests.browser import a11y
from tests.browser.conftest import REPO, Live
from tests.conftest import example_dict
from tests.webapp_support import ROLE_USER, Home

pytestmark = [pytest.mark.browser, pytest.mark.integration]

REPORT = REPO / "test-artifacts" / "accessibility.json"
MRN_SYSTEM = "urn:oid:2.16.840.1.113883.3.7418.1"
ENC_SYSTEM = "https://riverside-peer.example/fhir/sid/peersync/peer-tool/encounter"
MAX_JOBS = 6  # record pages checked: one per sync state, at most this many


def _records() -> list[dict[str, Any]]:
    from tests.conftest import DATA

    batch = [json.loads(line) for line in (DATA / "batch.jsonl").read_text("utf-8").splitlines()
             if line.strip()]
    no_match = dict(batch[0], id="a11y-nomatch", participant={
        "id": "P-1900", "mrn": "MRN-00000", "given": "Noor", "family": "Haddad"})
    no_staff = dict(batch[0], id="a11y-nostaff", specialist={"id": "S-99"})
    return [*batch, example_dict("part2-without-consent.json"), no_match, no_staff]


@pytest.fixture(scope="module")
def seeded(live: Live) -> Home:
    """Records in most states: synced, refused (needs_attention), waiting for a patient,
    a practitioner and consent."""
    records = _records()
    refused = next(r for r in records if r["id"] == "ps-2026-000124")
    refused["specialist"] = {"id": "S-17", "given": "Alex", "family": "Kim"}  # created once
    patient = live.search("Patient", identifier=f"{MRN_SYSTEM}|MRN-60210")[0]["id"]
    for _ in range(2):  # two EHR Encounters with the record's identifier: 412, refused
        live.post({"resourceType": "Encounter", "status": "finished",
                   "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                             "code": "AMB"},
                   "identifier": [{"system": ENC_SYSTEM, "value": refused["id"]}],
                   "subject": {"reference": f"Patient/{patient}"}})
    live.import_(*records, name="a11y")
    web = dict(_records()[0], id="wf-a11y-1", participant={  # as if written in the app's form
        "id": "P-1005", "mrn": "MRN-60210", "given": "Sam", "family": "Okafor"})
    path = live.home / "a11y-web.jsonl"
    path.write_text(json.dumps(web) + "\n", encoding="utf-8")
    live.cli("import", "--source", "web-form", str(path))
    for _ in range(2):  # the second pass: the records that waited for S-17's Practitioner
        live.cli("sync", expect=None)
    return Home(live.home, live.home / "peersync.toml", live.ehr_url)


def _params(home: Home) -> dict[str, a11y.Params]:
    """Parameters for the pages that need them, from what the store holds."""
    from sqlalchemy import select

    from connector.reports import waiting_participants, waiting_specialists
    from connector.schema import jobs

    store = home.store()
    with store.engine.connect() as conn:
        rows = conn.execute(select(jobs.c.id, jobs.c.state).order_by(jobs.c.id)).all()
        web_ids = conn.execute(select(jobs.c.record_id).where(jobs.c.source == "web-form")
                               .order_by(jobs.c.id)).scalars().all()
    store.close()
    one_per_state: dict[str, int] = {}
    for job_id, state in rows:
        one_per_state.setdefault(state, job_id)
    job_ids = sorted(one_per_state.values())[:MAX_JOBS]
    waiting = [job_id for job_id, state in rows if state.startswith("waiting")] or job_ids

    def participants() -> Iterator[dict[str, Any]]:
        s = home.store()
        try:
            for row in waiting_participants(s)[:2]:
                yield {"source": row["source"], "participant": row["participant_id"]}
        finally:
            s.close()

    def specialists() -> Iterator[dict[str, Any]]:
        s = home.store()
        try:
            for row in waiting_specialists(s)[:1]:
                yield {"specialist": row["specialist_id"]}
        finally:
            s.close()

    params: dict[str, a11y.Params] = {
        "records.detail": lambda: ({"job_id": j} for j in job_ids),
        "matching.patient": participants,
        "matching.staff": specialists,
    }
    # pages of other features keyed by a job (e.g. a review page: a waiting record) or by
    # the id of a record written in the app's form (amend, resubmit); any other URL
    # argument has no value here and fails test_the_page_list_follows_the_app
    by_argument = {"job_id": waiting[0], "record_id": web_ids[0] if web_ids else ""}
    for endpoint, rule in a11y.page_endpoints(_app(home)):
        if endpoint not in params and rule.arguments and rule.arguments <= set(by_argument):
            params[endpoint] = (lambda args=tuple(rule.arguments):
                                [{a: by_argument[a] for a in args}])
    return params


def _app(home: Home) -> Any:
    from webapp import create_app

    return create_app({"PEERSYNC_CONFIG": str(home.config)})


class Checker:
    """Checks pages in one browser context; collects the figures and the failures."""

    def __init__(self, context: BrowserContext, live: Live, role: str) -> None:
        self.page: Page = context.new_page()
        self.live, self.role = live, role
        self.source = a11y.axe_source()
        self.failures: list[str] = []
        self.figures: dict[str, Any] = {}

    def check(self, label: str) -> None:
        """The page as it is now: scroll widths at 320/390, axe at 390/1280."""
        page, figures = self.page, {}
        for width in sorted({*a11y.PHONE_WIDTHS, *a11y.AXE_WIDTHS}):
            page.set_viewport_size({"width": width, "height": a11y.HEIGHT})
            if width in a11y.PHONE_WIDTHS:
                scroll = a11y.scroll_width(page)
                figures[f"scroll_{width}"] = scroll
                if scroll > width:
                    self.failures.append(f"{label} @{width}px: scrollWidth {scroll} > {width}: "
                                         f"{a11y.overflowing(page)}")
            if width == 390:
                self.failures.extend(f"{label} @{width}px: {problem}"
                                     for problem in a11y.target_problems(page))
            if width in a11y.AXE_WIDTHS:
                violations = a11y.run_axe(page, self.source)
                figures[f"axe_{width}"] = sorted(v["id"] for v in violations)
                for v in violations:
                    self.failures.extend(a11y.describe(label, width, v))
        self.figures[label] = figures

    def visit(self, target: a11y.Target) -> None:
        response = self.page.goto(self.live.url + target.url)
        status = response.status if response else 0
        if status in (403, 404) and "error" in self.figures:
            self.figures[target.label] = {"status": status}
            return
        self.check("error" if status in (403, 404) else target.label)
        if status in (403, 404):
            self.figures[target.label] = {"status": status}


@pytest.fixture(scope="module")
def report() -> Iterator[dict[str, Any]]:
    collected: dict[str, Any] = {}
    yield collected
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    REPORT.write_text(json.dumps(collected, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _context(browser: Browser) -> BrowserContext:
    return browser.new_context(bypass_csp=True, viewport={"width": 390, "height": a11y.HEIGHT})


def _log_in(page: Page, live: Live, name: str, password: str | None = None) -> None:
    page.goto(f"{live.url}/login")
    page.get_by_label("User name").fill(name)
    page.get_by_label("Password").fill(password or live.passwords[name])
    page.get_by_role("button", name="Log in").click()


def _fail(checker: Checker) -> None:
    assert not checker.failures, (f"{len(checker.failures)} problem(s) for {checker.role}:\n"
                                  + "\n".join(checker.failures))


def test_the_page_list_follows_the_app(seeded: Home) -> None:
    """Every GET page is checked; a page with URL parameters nobody supplies fails here."""
    app = _app(seeded)
    found, missing = a11y.targets(app, _params(seeded))
    assert not missing, f"no parameters for {missing}: add them to _params()"
    endpoints = {t.endpoint for t in found}
    assert {"records.index", "records.detail", "dashboard.index", "audit.index",
            "matching.patient", "holds.consent", "settings.index", "auth.login"} <= endpoints
    if any(rule.endpoint.startswith("review.") for rule in app.url_map.iter_rules()):
        assert any(e.startswith("review.") for e in endpoints)


@pytest.mark.parametrize("role", sorted(ROLE_USER))
def test_every_page_reflows_and_passes_axe(browser: Browser, live: Live, seeded: Home,
                                           report: dict[str, Any], role: str) -> None:
    found, missing = a11y.targets(_app(seeded), _params(seeded))
    assert not missing
    context = _context(browser)
    try:
        checker = Checker(context, live, role)
        _log_in(checker.page, live, ROLE_USER[role])
        expect(checker.page.locator("form.who")).to_contain_text(ROLE_USER[role])
        for target in found:
            if target.endpoint != "auth.login":
                checker.visit(target)
        if role == "admin":  # a form's answer: the connection check's report
            checker.page.goto(f"{live.url}/settings/")
            checker.page.get_by_role("button", name="Test connection").click()
            checker.check("settings.test_connection")
        report[role] = checker.figures
    finally:
        context.close()
    _fail(checker)


def test_logged_out_pages(browser: Browser, live: Live, report: dict[str, Any]) -> None:
    """The login page, its error state and an error page, before anyone logs in."""
    context = _context(browser)
    try:
        checker = Checker(context, live, "anonymous")
        checker.page.goto(f"{live.url}/login")
        checker.check("auth.login")
        _log_in(checker.page, live, "admin", "not-the-password")
        checker.check("auth.login (wrong password)")
        checker.page.goto(f"{live.url}/static/no-such-file.css")
        checker.check("error (404)")
        report["anonymous"] = checker.figures
    finally:
        context.close()
    _fail(checker)


# -- what axe alone does not prove: keyboard, focus, names, errors tied to fields ------


def test_skip_link_current_page_and_honest_names(browser: Browser, live: Live, seeded: Home,
                                                 report: dict[str, Any]) -> None:
    context = _context(browser)
    try:
        page = context.new_page()
        _log_in(page, live, "admin")
        page.goto(f"{live.url}/records/")
        page.keyboard.press("Tab")  # the first stop on every page: the skip link
        skip = page.locator(":focus")
        expect(skip).to_have_text("Skip to main content")
        page.keyboard.press("Enter")
        assert page.evaluate("() => document.activeElement.id") == "main"
        expect(page.locator('nav[aria-label="Main"] a[aria-current="page"]')).to_have_text(
            "Records")
        # reasons in words, the code kept for support
        expect(page.locator("table.records")).to_contain_text(
            "No EHR patient has this MRN (mrn-no-match)")
        page.goto(f"{live.url}/dashboard/")
        expect(page.get_by_role("link", name="1 record needing attention")).to_be_visible()
        expect(page.get_by_role("link", name="1 record waiting for the participant's consent")
               ).to_be_visible()
        page.goto(f"{live.url}/matching/")
        expect(page.get_by_role("link", name=re.compile(r"^Find in EHR\W+participant P-1900$"))
               ).to_be_visible()
        # a retry of a record the EHR still refuses says so (not "Re-queued")
        page.goto(f"{live.url}/records/?state=needs_attention")
        page.get_by_role("link", name="ps-2026-000124").click()
        page.get_by_role("button", name="Retry record ps-2026-000124").click()
        expect(page.locator(".flash-error")).to_contain_text("Sent again and refused again")
        expect(page.locator(".flash-error").first).to_be_focused()  # autofocus
    finally:
        context.close()


def test_form_errors_are_tied_to_their_fields_and_take_focus(
        browser: Browser, live: Live, seeded: Home, report: dict[str, Any]) -> None:
    context = _context(browser)
    try:
        checker = Checker(context, live, "forms")
        page = checker.page
        _log_in(page, live, "admin", "not-the-password")
        _expect_summary_focused(page)
        for field in ("#f-name", "#f-password"):
            expect(page.locator(field)).to_have_attribute("aria-invalid", "true")
            expect(page.locator(field)).to_have_attribute("aria-describedby", "login-error")
        _log_in(page, live, "admin")
        # consent: the box not ticked; the consent id typed stays, the box is named as wrong
        page.goto(f"{live.url}/holds/consent")
        row = page.locator("#held-consent tr", has_text="P-1007")
        row.get_by_label("Consent id for P-1007").fill("C-77")
        page.evaluate("() => document.querySelectorAll('[required]')"
                      ".forEach(e => e.removeAttribute('required'))")  # the server's check
        row.get_by_role("button", name="Record active consent for participant P-1007").click()
        _expect_summary_focused(page)
        row = page.locator("#held-consent tr", has_text="P-1007")
        expect(row.get_by_label("Consent id for P-1007")).to_have_value("C-77")
        box = row.locator('input[name="confirm"]')
        expect(box).to_have_attribute("aria-invalid", "true")
        error_id = box.get_attribute("aria-describedby") or ""
        expect(page.locator(f"#{error_id}")).to_contain_text("Tick the box")
        link = page.locator(".error-summary a").first
        assert link.get_attribute("href") == f"#{box.get_attribute('id')}"
        link.click()
        assert page.evaluate("() => document.activeElement.name") == "confirm"
        checker.check("holds.record_consent (refused)")
        # a filter that cannot be met: the To field says why
        page.goto(f"{live.url}/records/?from=2026-11-30&to=2026-11-01")
        _expect_summary_focused(page)
        expect(page.locator("#f-to")).to_have_attribute("aria-invalid", "true")
        checker.check("records.index (from after to)")
        page.goto(f"{live.url}/audit/?from=2026-11-30&to=2026-11-01")
        _expect_summary_focused(page)
        checker.check("audit.index (from after to)")
        report["forms"] = checker.figures
    finally:
        context.close()
    _fail(checker)


def _expect_summary_focused(page: Page) -> None:
    expect(page.locator(".error-summary")).to_be_visible()
    # autofocus is applied at the page's next rendering step, not at load: wait for it
    expect(page.locator(".error-summary"), "the error summary does not have focus"
           ).to_be_focused()
