"""The admin pages through the Flask test client: what each role sees and may do.

No EHR here (the configured one is a closed port): pages that need it are in
tests/integration/test_webapp_ehr.py and tests/browser/.
"""

from __future__ import annotations

import csv
import io
import re

import pytest
from flask import Flask

from connector.states import JobState
from tests.webapp_support import (
    Home,
    csrf_token,
    import_examples,
    job_id,
    logged_in,
    make_app,
)


@pytest.fixture
def home(home: Home) -> Home:
    import_examples(home, "batch.jsonl", "in-person-session.json", "part2-without-consent.json")
    return home


def _fail(home: Home, record_id: str, *, reason: str, outcome_text: str) -> int:
    """Put a record in needs_attention as the worker would (claim, then finish)."""
    store = home.store()
    try:
        wanted = job_id(home, record_id)
        for job in store.claim(worker="test", run_id="r1", limit=50):
            state = JobState.NEEDS_ATTENTION if job.id == wanted else JobState.PENDING
            with store.begin() as conn:
                store.finish(conn, job, state, actor="test",
                             reason=reason if job.id == wanted else None,
                             outcome_text=outcome_text if job.id == wanted else None,
                             count_attempt=job.id == wanted,
                             detail={"status": 412, "error": "EhrConflict",
                                     "outcome_codes": ["multiple-matches"]}
                             if job.id == wanted else None)
    finally:
        store.close()
    return wanted


def _action(name: str) -> str:
    """An audit row's action cell as the page shows it."""
    return f'<td data-label="Action">{name}</td>'


# -- records ---------------------------------------------------------------------------


def test_records_list_filters(app: Flask) -> None:
    admin = logged_in(app, "admin")
    html = admin.get("/records/").get_data(as_text=True)
    for record_id in ("ps-2026-000123", "ps-2026-000124", "ps-2026-000125", "ps-2026-000129"):
        assert record_id in html
    only_s22 = admin.get("/records/?specialist=S-22").get_data(as_text=True)
    assert "ps-2026-000125" in only_s22 and "ps-2026-000124" not in only_s22
    by_day = admin.get("/records/?from=2026-11-21&to=2026-11-21").get_data(as_text=True)
    assert "ps-2026-000124" in by_day and "ps-2026-000125" in by_day
    assert "ps-2026-000123" not in by_day and "ps-2026-000126" not in by_day
    assert "No records in state synced" in admin.get("/records/?state=synced").get_data(
        as_text=True)
    assert "ps-2026-000124" not in admin.get("/records/?source=other").get_data(as_text=True)


def test_records_error_text_filter(app: Flask, home: Home) -> None:
    _fail(home, "ps-2026-000123", reason="412 multiple-matches: Encounter",
          outcome_text="Multiple resources match this search")
    admin = logged_in(app, "admin")
    html = admin.get("/records/?q=multiple").get_data(as_text=True)
    assert "ps-2026-000123" in html and "ps-2026-000124" not in html
    assert "ps-2026-000123" in admin.get("/records/?q=resources+match").get_data(as_text=True)
    # auditors search codes and reasons, not the EHR's free text
    auditor = logged_in(app, "auditor")
    assert "ps-2026-000123" not in auditor.get("/records/?q=resources+match").get_data(
        as_text=True)


def test_records_are_paginated(app: Flask, home: Home) -> None:
    from connector.records import EncounterRecord
    from tests.conftest import example_dict

    store = home.store()
    try:
        base = example_dict("in-person-session.json")
        records = []
        for i in range(55):
            data = dict(base, id=f"bulk-{i:03d}")
            data["note"] = dict(base["note"], id=f"N-bulk-{i:03d}")
            records.append(EncounterRecord.from_dict("peer-tool", data))
        store.add_records(records, actor="test")
    finally:
        store.close()
    admin = logged_in(app, "admin")
    first = admin.get("/records/").get_data(as_text=True)
    assert "bulk-054" in first and "older &rarr;" in first
    second = admin.get("/records/?page=2").get_data(as_text=True)
    assert "ps-2026-000124" in second and "bulk-054" not in second and "newer" in second


def test_a_specialist_sees_only_its_own_records(app: Flask, home: Home) -> None:
    alex = logged_in(app, "specialist")  # S-17
    html = alex.get("/records/").get_data(as_text=True)
    assert "ps-2026-000123" in html and "ps-2026-000124" in html
    assert "ps-2026-000125" not in html and "ps-2026-000129" not in html
    # asking for another specialist changes nothing
    assert "ps-2026-000125" not in alex.get("/records/?specialist=S-22").get_data(as_text=True)
    other = job_id(home, "ps-2026-000125")  # S-22's
    assert alex.get(f"/records/{other}").status_code == 404
    own = job_id(home, "ps-2026-000124")
    assert alex.get(f"/records/{own}").status_code == 200


def test_a_specialist_cannot_retry_another_specialists_record(app: Flask, home: Home) -> None:
    other = _fail(home, "ps-2026-000125", reason="refused", outcome_text="text")
    alex = logged_in(app, "specialist")
    token = csrf_token(alex, "/records/")
    assert alex.post(f"/records/{other}/retry", data={"csrf_token": token}).status_code == 404
    store = home.store()
    try:
        assert store.counts_by_state()["needs_attention"] == 1
    finally:
        store.close()
    priya = logged_in(app, "priya")  # its own specialist may
    token = csrf_token(priya, "/records/")
    response = priya.post(f"/records/{other}/retry", data={"csrf_token": token})
    assert response.status_code == 302


def test_record_detail_shows_attempts_and_the_ehr_answer(app: Flask, home: Home) -> None:
    failed = _fail(home, "ps-2026-000123", reason="412 multiple-matches: Encounter",
                   outcome_text="Multiple resources match this search")
    admin = logged_in(app, "admin")
    html = admin.get(f"/records/{failed}").get_data(as_text=True)
    assert "Multiple resources match this search" in html
    assert "412" in html and "multiple-matches" in html and "EhrConflict" in html
    assert "Met Dana at the library" in html and "Lopez" in html  # admins see the note
    assert f'action="/records/{failed}/retry"' in html
    auditor = logged_in(app, "auditor")
    html = auditor.get(f"/records/{failed}").get_data(as_text=True)
    assert "P-1001" in html and "N-88812" in html and "multiple-matches" in html
    for phi in ("Met Dana", "Lopez", "Dana", "1988-04-12", "MRN-55821",
                "Multiple resources match"):
        assert phi not in html, phi
    assert "/retry" not in html


def test_retry_requeues_a_failed_record_and_audits_the_user(app: Flask, home: Home) -> None:
    failed = _fail(home, "ps-2026-000123", reason="refused", outcome_text="x")
    admin = logged_in(app, "admin")
    token = csrf_token(admin, f"/records/{failed}")
    response = admin.post(f"/records/{failed}/retry", data={"csrf_token": token})
    assert response.status_code == 302 and response.headers["Location"] == f"/records/{failed}"
    page = admin.get(f"/records/{failed}").get_data(as_text=True)
    assert "Re-queued for the EHR" in page and 'class="state state-pending"' in page
    store = home.store()
    try:
        events = store.audit_events(record_id="ps-2026-000123")
    finally:
        store.close()
    assert any(e["actor"] == "web:admin" and e["action"] == "job.released" for e in events)
    # a second retry finds nothing to do
    admin.post(f"/records/{failed}/retry", data={"csrf_token": token})
    assert "Only a record that needs attention" in admin.get(f"/records/{failed}").get_data(
        as_text=True)


# -- dashboard, holds, matching --------------------------------------------------------


def test_dashboard(app: Flask) -> None:
    html = logged_in(app, "auditor").get("/dashboard/").get_data(as_text=True)
    assert "Queue depth" in html and "unreachable" in html  # nothing listens on the EHR port
    assert re.search(r"Queue depth</span>\s*<span class=\"card-value\">5<", html)
    assert "<svg" in html and "Records synced per day" in html
    assert "Last successful sync" in html and "never" in html


def test_waiting_for_consent_lists_and_releases(app: Flask, home: Home) -> None:
    store = home.store()
    try:  # a sync would put it there; the worker's own store call does the same
        [job] = [j for j in store.claim(worker="t", run_id="r", limit=50)
                 if j.record_id == "ps-2026-000129"] or [None]
        assert job is not None
        with store.begin() as conn:
            store.finish(conn, job, JobState.WAITING_CONSENT, actor="t", reason="consent none")
    finally:
        store.close()
    auditor = logged_in(app, "auditor")
    html = auditor.get("/holds/consent").get_data(as_text=True)
    assert "P-1007" in html and "ps-2026-000129" in html and "What releases them" in html
    assert "Record active consent" not in html  # auditors only look
    admin = logged_in(app, "admin")
    token = csrf_token(admin, "/holds/consent")
    data = {"csrf_token": token, "source": "peer-tool", "participant": "P-1007"}
    # not confirmed: nothing happens; the page says why beside the box and keeps the consent id
    refused = admin.post("/holds/consent", data={**data, "consent_id": "C-9"})
    html = refused.get_data(as_text=True)
    assert refused.status_code == 400 and "Tick the box" in html
    assert 'value="C-9"' in html and 'aria-invalid="true"' in html
    assert 'class="error-summary"' in html and 'href="#f-confirm-1"' in html
    response = admin.post("/holds/consent", data={**data, "confirm": "on", "consent_id": "C-9"})
    assert response.status_code == 302
    html = admin.get("/holds/consent").get_data(as_text=True)
    assert "1 record(s) released" in html and "No record is waiting for consent" in html
    store = home.store()
    try:
        assert store.consent_status("peer-tool", "P-1007") == "active"
        events = store.audit_events()
    finally:
        store.close()
    assert any(e["action"] == "consent.set" and e["actor"] == "web:admin" for e in events)


def test_waiting_for_an_encounter_page(app: Flask) -> None:
    html = logged_in(app, "admin").get("/holds/encounter").get_data(as_text=True)
    assert "No record is waiting for an encounter" in html and "What releases them" in html


def test_matching_page_lists_waiting_participants_with_names_for_admins(
        app: Flask, home: Home) -> None:
    store = home.store()
    try:
        for job in store.claim(worker="t", run_id="r", limit=50):
            state = (JobState.WAITING_PATIENT if job.record_id == "ps-2026-000126"
                     else JobState.PENDING)
            with store.begin() as conn:
                store.finish(conn, job, state, actor="t", reason="no-mrn")
    finally:
        store.close()
    html = logged_in(app, "admin").get("/matching/").get_data(as_text=True)
    assert "P-1004" in html and "Park" in html and "Find in EHR" in html


# -- audit log -------------------------------------------------------------------------


def test_audit_log_filters_export_and_verify(app: Flask) -> None:
    auditor = logged_in(app, "auditor")
    html = auditor.get("/audit/").get_data(as_text=True)
    assert _action("record.accepted") in html and _action("login.ok") in html
    html = auditor.get("/audit/?actor=web:*").get_data(as_text=True)
    assert _action("login.ok") in html and _action("record.accepted") not in html
    html = auditor.get("/audit/?record=ps-2026-000124").get_data(as_text=True)
    assert "peer-tool/ps-2026-000124" in html and "peer-tool/ps-2026-000125" not in html
    html = auditor.get("/audit/?outcome=login.ok").get_data(as_text=True)
    assert _action("login.ok") in html and _action("record.accepted") not in html
    html = auditor.get("/audit/?from=2999-01-01").get_data(as_text=True)
    assert "No audit events match" in html
    export = auditor.get("/audit/export.csv")
    assert export.status_code == 200 and export.mimetype == "text/csv"
    assert "attachment" in export.headers["Content-Disposition"]
    rows = list(csv.DictReader(io.StringIO(export.get_data(as_text=True))))
    assert rows[0]["action"] == "user.created" and all(r["mac"] for r in rows)
    assert {"ps-2026-000124", "ps-2026-000129"} <= {r["record_id"] for r in rows}
    seq, _, mac = export.headers["X-PeerSync-Anchor"].partition(":")
    assert int(seq) == int(rows[-1]["seq"]) and len(mac) == 64
    later = auditor.get("/audit/export.csv?from=2999-01-01").get_data(as_text=True)
    assert later.count("\n") == 1  # the header only
    verified = auditor.get("/audit/verify").get_data(as_text=True)
    assert "Audit log intact" in verified
    assert _action("audit.exported") in auditor.get("/audit/").get_data(as_text=True)


def test_audit_log_pages(app: Flask, home: Home) -> None:
    from connector.records import EncounterRecord
    from tests.conftest import example_dict

    store = home.store()
    try:
        base = example_dict("in-person-session.json")
        store.add_records([EncounterRecord.from_dict("peer-tool", dict(base, id=f"a-{i}",
                          note=dict(base["note"], id=f"N-a-{i}"))) for i in range(120)],
                          actor="test")
    finally:
        store.close()
    auditor = logged_in(app, "auditor")
    html = auditor.get("/audit/").get_data(as_text=True)
    older = re.search(r'href="(/audit/\?before=\d+)"', html)
    assert older and _action("user.created") not in html  # the oldest rows come later
    html2 = auditor.get(older.group(1).replace("&amp;", "&")).get_data(as_text=True)
    assert _action("user.created") in html2 and "newest" in html2


# -- documentation time ----------------------------------------------------------------


def test_documentation_time_page(app: Flask) -> None:
    html = logged_in(app, "admin").get(
        "/documentation-time/?from=2026-11-16&to=2026-11-22").get_data(as_text=True)
    assert "2026-W47" in html and "S-17" in html and "S-22" in html
    assert "<svg" in html and "minutes saved" in html
    assert "How this is counted" in html and "7 minutes" in html
    mine = logged_in(app, "specialist").get(
        "/documentation-time/?from=2026-11-16&to=2026-11-22&specialist=S-22").get_data(
        as_text=True)
    assert "S-17" in mine and "<td>S-22</td>" not in mine


# -- settings --------------------------------------------------------------------------


def test_settings_masks_secrets_and_tests_the_connection(app: Flask, home: Home) -> None:
    text = home.config.read_text("utf-8").replace(
        'type = "none"', 'type = "basic"\nusername = "peersync"\npassword_env = "EHR_PW"')
    home.config.write_text(text, "utf-8")
    from webapp import close_app

    application = make_app(home)
    try:
        admin = logged_in(application, "admin")
        html = admin.get("/settings/").get_data(as_text=True)
        assert "EHR_PW" in html and "its value is not shown" in html
        assert "Riverside Peer Recovery Center" in html and home.ehr_url in html
        token = csrf_token(admin, "/settings/")
        result = admin.post("/settings/test", data={"csrf_token": token})
        html = result.get_data(as_text=True)
        assert result.status_code == 200 and "not ready" in html
        assert "check-fail" in html
    finally:
        close_app(application)
