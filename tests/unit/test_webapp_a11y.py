"""Accessibility and honesty of the admin pages, through the test client (issue 10).

What the markup must say: a skip link to ``<main id="main">``, ``aria-current``
on the current nav item, errors tied to their fields (``aria-describedby`` +
``aria-invalid``) with an error summary that takes focus, unique names for
repeated controls, reason codes in words, a retry that says what happened.
The browser checks (axe-core, reflow, touch targets) are in
tests/browser/test_accessibility.py.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from flask import Flask

from connector.states import ALL_STATES, JobState
from tests.webapp_support import Home, csrf_token, import_examples, job_id, logged_in


@pytest.fixture
def home(home: Home) -> Home:
    import_examples(home, "batch.jsonl", "in-person-session.json", "part2-without-consent.json")
    return home


def _finish(home: Home, record_id: str, state: JobState, reason: str) -> int:
    """Put one record in ``state`` with ``reason`` as the worker would (claim, then finish)."""
    store = home.store()
    try:
        wanted = job_id(home, record_id)
        for job in store.claim(worker="test", run_id="r1", limit=50):
            with store.begin() as conn:
                store.finish(conn, job, state if job.id == wanted else JobState.PENDING,
                             actor="test", reason=reason if job.id == wanted else None,
                             count_attempt=job.id == wanted)
    finally:
        store.close()
    return wanted


def test_every_page_has_a_skip_link_to_main_and_marks_the_current_nav_item(app: Flask) -> None:
    admin = logged_in(app, "admin")
    for path, current in (("/records/", "Records"), ("/holds/consent", "Waiting for consent"),
                          ("/audit/", "Audit log"), ("/settings/", "Settings")):
        html = admin.get(path).get_data(as_text=True)
        assert re.search(r'<body>\s*<a class="skip-link" href="#main">Skip to main content</a>',
                         html), path
        assert '<main id="main" tabindex="-1">' in html
        marked = re.findall(r'<a href="[^"]*" class="current" aria-current="page">([^<]*)</a>',
                            html)
        assert marked == [current], path
    login = app.test_client().get("/login").get_data(as_text=True)
    assert 'href="#main">Skip to main content' in login and 'aria-current' not in login


def test_reason_codes_are_shown_in_words_with_the_code(app: Flask, home: Home) -> None:
    job = _finish(home, "ps-2026-000124", JobState.WAITING_PATIENT, "mrn-matches-2-patients")
    admin = logged_in(app, "admin")
    words = "2 EHR patients have this MRN: link the right one (mrn-matches-2-patients)"
    assert words in admin.get("/records/").get_data(as_text=True)
    assert words in admin.get(f"/records/{job}").get_data(as_text=True)
    assert words in admin.get("/matching/").get_data(as_text=True)
    dashboard = logged_in(app, "auditor").get("/dashboard/").get_data(as_text=True)
    assert words in dashboard  # the oldest waiting record's reason


def test_dashboard_links_say_what_they_count(app: Flask, home: Home) -> None:
    _finish(home, "ps-2026-000124", JobState.NEEDS_ATTENTION, "refused")
    html = logged_in(app, "auditor").get("/dashboard/").get_data(as_text=True)
    link = re.search(r'href="/records/\?state=needs_attention">(.*?)</a>', html)
    assert link and re.sub(r"<[^>]+>", "", link.group(1)) == "1 record needing attention"


def test_a_filter_error_is_tied_to_its_field_and_the_summary_takes_focus(app: Flask) -> None:
    admin = logged_in(app, "admin")
    for path in ("/records/", "/audit/"):
        response = admin.get(f"{path}?from=2026-11-30&to=2026-11-01")
        html = response.get_data(as_text=True)
        assert response.status_code == 200
        summary = re.search(r'<div class="error-summary" role="alert" tabindex="-1" autofocus'
                            r'.*?</div>', html, re.S)
        assert summary and 'href="#f-to"' in summary.group(0), path
        field = re.search(r'<input id="f-to"[^>]*>', html)
        assert field and 'aria-invalid="true"' in field.group(0)
        assert 'aria-describedby="err-to"' in field.group(0)
        error = re.search(r'<span class="field-error" id="err-to">(.*?)</span>\s*<input',
                          html, re.S)
        assert error and "on or after the From date" in error.group(1)  # outside the label
    html = admin.get("/records/?from=2026-11-01&to=2026-11-30").get_data(as_text=True)
    assert "error-summary" not in html and 'aria-invalid' not in html


def test_the_consent_form_keeps_what_was_typed_and_names_its_controls(app: Flask,
                                                                      home: Home) -> None:
    _finish(home, "ps-2026-000129", JobState.WAITING_CONSENT, "part2-consent-none")
    admin = logged_in(app, "admin")
    html = admin.get("/holds/consent").get_data(as_text=True)
    assert "42 CFR Part 2 record with no consent on file (part2-consent-none)" in html
    assert re.search(r'<label class="label" for="f-consent_id-1">Consent id for P-1007', html)
    assert 'Record active consent<span class="vh"> for participant P-1007</span>' in html
    response = admin.post("/holds/consent", data={
        "csrf_token": csrf_token(admin, "/holds/consent"), "source": "peer-tool",
        "participant": "P-1007", "consent_id": "C-123"})
    html = response.get_data(as_text=True)
    assert response.status_code == 400 and 'value="C-123"' in html
    box = re.search(r'<input id="f-confirm-1"[^>]*>', html)
    assert box and 'aria-describedby="err-confirm-1"' in box.group(0)
    assert 'id="err-confirm-1"' in html and 'href="#f-confirm-1"' in html


def test_matching_search_without_anything_to_search_by_says_so_at_the_field(
        app: Flask, home: Home) -> None:
    _finish(home, "ps-2026-000124", JobState.WAITING_PATIENT, "mrn-no-match")
    admin = logged_in(app, "admin")
    page = "/matching/patient?source=peer-tool&participant=P-1002"
    response = admin.post("/matching/patient/search", data={
        "csrf_token": csrf_token(admin, page), "source": "peer-tool", "participant": "P-1002",
        "name": " ", "birthdate": "", "mrn": ""})
    html = response.get_data(as_text=True)
    assert "Give a name, a birth date or an MRN to search." in html
    assert 'href="#f-name"' in html and re.search(
        r'<input id="f-name"[^>]*aria-describedby="err-name" aria-invalid="true"', html)


@pytest.mark.parametrize("state, reason, flashed, category", [
    ("synced", None, "Sent again: the EHR has it now.", "info"),
    ("needs_attention", "mrn-matches-2-patients",
     "Sent again and refused again: 2 EHR patients have this MRN", "error"),
    ("waiting_patient", "mrn-no-match",
     "it waits again: No EHR patient has this MRN (mrn-no-match)", "info"),
    ("retry_scheduled", "EhrUnavailable", "tried again later", "info"),
    ("pending", None, "Re-queued for the EHR: the next sync sends it.", "info"),
])
def test_a_retry_says_what_happened(state: str, reason: str | None, flashed: str,
                                    category: str) -> None:
    from webapp.records import _retry_outcome

    message, kind = _retry_outcome({"state": state, "reason": reason})
    assert flashed in message and kind == category


# -- every sync state's badge: >= 4.5:1 on its badge, on white and on the highlighted row -----

CSS = Path(__file__).resolve().parents[2] / "webapp" / "static" / "style.css"


def _luminance(hex_colour: str) -> float:
    channels = [int(hex_colour[i:i + 2], 16) / 255 for i in (1, 3, 5)]
    linear = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
    return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]


def _contrast(a: str, b: str) -> float:
    high, low = sorted((_luminance(a), _luminance(b)), reverse=True)
    return (high + 0.05) / (low + 0.05)


def _declared(css: str, selector: str, prop: str) -> str | None:
    """The colour ``prop`` the last rule listing ``selector`` (exactly) gives, or None."""
    found = None
    for selectors, body in re.findall(r"([^{}]+)\{([^}]*)\}", css):
        if selector in [s.strip() for s in selectors.split(",")]:
            value = re.search(rf"(?:^|;)\s*{prop}\s*:\s*(#[0-9a-fA-F]{{6}})", body)
            found = value.group(1) if value else found
    return found


@pytest.mark.parametrize("state", ALL_STATES)
def test_every_state_badge_has_enough_contrast(state: str) -> None:
    css = re.sub(r"/\*.*?\*/", "", CSS.read_text(encoding="utf-8"), flags=re.S)
    ink = _declared(css, f".state-{state}", "color") or "#1d2430"
    badge = _declared(css, f".state.state-{state}", "background") or _declared(
        css, ".state", "background")
    assert badge, f"no badge background for {state}"
    for background in (badge, "#ffffff", "#eef4fd"):  # badge, chip on white, tr.this
        ratio = _contrast(ink, background)
        assert ratio >= 4.5, f".state-{state}: {ink} on {background} is {ratio:.2f}:1"
    if state in ("waiting_review", "returned"):  # the review states have badges of their own
        assert _declared(css, f".state.state-{state}", "background")
