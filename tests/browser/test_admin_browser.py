"""The admin app in headless Chromium, with the real FHIR server behind it.

Each test logs in as a real user and does what that user would: document an
encounter and watch it reach the EHR, read a refused record's
OperationOutcome and retry it once fixed, link an unmatched participant,
export the audit log, read the documentation-time chart. Screenshots of each
page are kept in test-artifacts/screenshots/.
"""

from __future__ import annotations

import csv
import io
import re
from typing import Any

import pytest
from playwright.sync_api import Page, expect

from tests.browser.conftest import Live
from tests.conftest import example_dict

pytestmark = [pytest.mark.browser, pytest.mark.integration]

ENC_SYSTEM = "https://riverside-peer.example/fhir/sid/peersync/peer-tool/encounter"
MRN_SYSTEM = "urn:oid:2.16.840.1.113883.3.7418.1"


def log_in(page: Page, live: Live, name: str) -> None:
    page.goto(f"{live.url}/login")
    page.get_by_label("User name").fill(name)
    page.get_by_label("Password").fill(live.passwords[name])
    page.get_by_role("button", name="Log in").click()
    expect(page.locator("form.who")).to_contain_text(name)


def test_log_in(page: Page, live: Live, shot: Any) -> None:
    page.goto(f"{live.url}/records/")
    expect(page).to_have_url(re.compile(r"/login\?next="))
    shot("login")
    page.get_by_label("User name").fill("admin")
    page.get_by_label("Password").fill("not-the-password")
    page.get_by_role("button", name="Log in").click()
    expect(page.locator(".flash-error")).to_contain_text("Wrong user name or password")
    page.get_by_label("Password").fill(live.passwords["admin"])
    page.get_by_role("button", name="Log in").click()
    expect(page).to_have_url(f"{live.url}/records/")  # back where the user was going
    page.get_by_role("link", name="Dashboard").click()
    expect(page.locator("#ehr-status")).to_contain_text("reachable")
    shot("dashboard")


def test_document_an_encounter_and_see_it_synced(page: Page, live: Live, shot: Any) -> None:
    log_in(page, live, "alex")
    expect(page).to_have_url(f"{live.url}/document/")
    page.get_by_label("Participant id (in your tool)").fill("P-1001")
    page.get_by_label("MRN").fill("MRN-55821")
    page.locator('input[name="date"]').fill("2026-11-23")
    page.locator('input[name="start_time"]').fill("09:00")
    page.locator('input[name="end_time"]').fill("08:30")  # before the start
    page.locator('select[name="service.modality"]').select_option("phone")
    page.get_by_label("Goals").fill("housing, wellness")
    page.locator('textarea[name="note.text"]').fill(
        "Phone check-in. Dana has the lease renewal meeting on Friday.\nWill call after.")
    page.locator('fieldset:has-text("You (only needed") input[name="specialist.family"]').fill(
        "Kim")
    page.get_by_role("button", name="Save and send to the EHR").click()
    expect(page.locator("#err-end_time")).to_have_text("must not be before start")
    page.locator('input[name="end_time"]').fill("09:25")
    shot("document")
    page.get_by_role("button", name="Save and send to the EHR").click()
    expect(page.locator("#sync-state")).to_have_text("synced")
    expect(page.locator("#ehr-resources")).to_contain_text("DocumentReference/")
    expect(page.locator("pre.note")).to_contain_text("lease renewal meeting")
    shot("record-synced")
    record_id = re.search(r"Record (wf-[0-9a-f]+)", page.locator("h1").inner_text())
    assert record_id
    [enc] = live.search("Encounter", identifier=(
        "https://riverside-peer.example/fhir/sid/peersync/web-form/encounter|"
        + record_id.group(1)))
    assert enc["class"]["code"] == "VR"


def test_a_refused_record_shows_the_ehr_answer_and_is_retried_after_a_fix(
        page: Page, live: Live, shot: Any) -> None:
    patient = live.search("Patient", identifier=f"{MRN_SYSTEM}|MRN-60210")[0]["id"]
    dupes = [live.post({
        "resourceType": "Encounter", "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
        "identifier": [{"system": ENC_SYSTEM, "value": "ps-2026-000124"}],
        "subject": {"reference": f"Patient/{patient}"}}) for _ in range(2)]
    record = next(r for r in _batch() if r["id"] == "ps-2026-000124")
    live.import_(record, name="refused")
    live.cli("sync", expect=1)
    log_in(page, live, "admin")
    page.goto(f"{live.url}/records/?state=needs_attention")
    page.get_by_role("link", name="ps-2026-000124").click()
    expect(page.locator("#sync-state")).to_have_text("needs_attention")
    outcome = page.locator("#operation-outcome pre")
    expect(outcome).not_to_be_empty()
    expect(page.locator("#attempts")).to_contain_text("412")
    shot("record-refused")
    import requests

    for enc in dupes:  # the admin removes the duplicates in the EHR
        requests.delete(f"{live.ehr_url}/Encounter/{enc}", timeout=10)
    page.get_by_role("button", name="Retry").click()
    expect(page.locator("#sync-state")).to_have_text("synced")
    assert len(live.search("Encounter", identifier=f"{ENC_SYSTEM}|ps-2026-000124")) == 1


def test_link_an_unmatched_participant_and_see_its_records_sync(
        page: Page, live: Live, shot: Any) -> None:
    # ps-2026-000126: P-1004, no MRN; ps-2026-000125 names its specialist (S-22)
    live.import_(*[r for r in _batch() if r["id"] in ("ps-2026-000125", "ps-2026-000126")],
                 name="unmatched")
    live.cli("sync")
    patient = live.post({"resourceType": "Patient", "gender": "unknown", "birthDate": "1990-05-01",
                         "name": [{"family": "Park", "given": ["Lee"]}]})
    log_in(page, live, "admin")
    page.get_by_role("link", name="Waiting for a match").click()
    row = page.locator("#waiting-participants tr", has_text="P-1004")
    expect(row).to_contain_text("Park")
    shot("matching")
    row.get_by_role("link", name="Find in EHR").click()
    result = page.locator("#results tr", has_text=f"Patient/{patient}")
    expect(result).to_be_visible()
    shot("matching-search")
    result.get_by_role("button", name="Link").click()
    expect(page.locator(".flash-info")).to_contain_text("1 waiting record(s) released")
    expect(page.locator("#waiting-participants")).to_contain_text("No participant is waiting")
    page.goto(f"{live.url}/records/?q=&state=synced")
    expect(page.locator("table.records")).to_contain_text("ps-2026-000126")
    [enc] = live.search("Encounter", identifier=f"{ENC_SYSTEM}|ps-2026-000126")
    assert enc["subject"]["reference"] == f"Patient/{patient}"


def test_export_the_audit_csv_and_verify_the_chain(page: Page, live: Live, shot: Any) -> None:
    log_in(page, live, "audrey")
    page.get_by_role("link", name="Audit log").click()
    expect(page.locator("#audit-rows")).to_contain_text("login.ok")
    shot("audit")
    with page.expect_download() as info:
        page.locator("#export-csv").click()
    download = info.value
    assert download.suggested_filename.startswith("peersync-audit-")
    text = download.path().read_text(encoding="utf-8")
    rows = list(csv.DictReader(io.StringIO(text)))
    assert rows and {"seq", "actor", "action", "mac"} <= set(rows[0])
    assert any(r["actor"] == "web:admin" and r["action"] == "job.released" for r in rows)
    assert "Dana" not in text and "lease renewal" not in text  # no PHI in the audit log
    page.locator("#verify-chain").click()
    expect(page.locator("#verify-result")).to_contain_text("Audit log intact")


def test_documentation_time_chart(page: Page, live: Live, shot: Any) -> None:
    log_in(page, live, "admin")
    page.get_by_role("link", name="Documentation time").click()
    page.locator('input[name="from"]').fill("2026-11-16")
    page.locator('input[name="to"]').fill("2026-11-29")
    page.get_by_role("button", name="Show").click()
    chart = page.locator("#doctime-chart svg")
    expect(chart).to_be_visible()
    assert chart.locator("rect").count() > 4
    expect(page.locator("#doctime-rows")).to_contain_text("S-17")
    expect(page.locator(".method")).to_contain_text("reentry_minutes")
    shot("documentation-time")


def test_the_other_pages(page: Page, live: Live, shot: Any) -> None:
    """Held records, settings with a connection test, the records list: one look at each."""
    live.import_(example_dict("part2-without-consent.json"), name="part2")
    live.cli("sync")
    log_in(page, live, "admin")
    page.get_by_role("link", name="Waiting for consent").click()
    expect(page.locator("#held-consent")).to_contain_text("P-1007")
    shot("waiting-consent")
    page.get_by_role("link", name="Waiting for an encounter").click()
    expect(page.locator("h1")).to_have_text("Waiting for an encounter")
    page.get_by_role("link", name="Settings").click()
    page.get_by_role("button", name="Test connection").click()
    expect(page.locator("#check-report")).to_contain_text("ready to sync")
    shot("settings")
    page.get_by_role("link", name="Records").click()
    expect(page.locator("table.records")).to_contain_text("ps-2026-000129")
    shot("records")
    page.get_by_role("link", name="Dashboard").click()
    shot("dashboard")


def _batch() -> list[dict[str, Any]]:
    import json

    from tests.conftest import DATA

    return [json.loads(line) for line in (DATA / "batch.jsonl").read_text("utf-8").splitlines()
            if line.strip()]
