"""The admin app against the real FHIR server (sekmet): document, link, retry, check."""

from __future__ import annotations

import re
from typing import Any

import pytest
import requests
from flask import Flask

from tests.integration.conftest import ENC_SYSTEM, MRN_SYSTEM, Env
from tests.webapp_support import Home, csrf_token, document_form, job_id, logged_in

pytestmark = pytest.mark.integration


def _state(home: Home, record_id: str) -> str:
    store = home.store()
    try:
        return str(next(r["state"] for r in store.jobs_overview(limit=1000)
                        if r["record_id"] == record_id))
    finally:
        store.close()


def test_a_documented_encounter_reaches_the_ehr(app: Flask, env: Env) -> None:
    alex = logged_in(app, "specialist")
    form = document_form(alex)
    response = alex.post("/document/", data={
        **form, "participant.id": "P-1001", "participant.mrn": "MRN-55821",
        "date": "2026-11-23", "start_time": "09:00", "end_time": "09:30",
        "specialist.family": "Kim", "note.text": "Walked to the food bank together."})
    assert response.status_code == 302
    page = alex.get(response.headers["Location"]).get_data(as_text=True)
    assert 'class="state state-synced"' in page and "DocumentReference/" in page
    [enc] = env.search("Encounter", identifier=(
        "https://riverside-peer.example/fhir/sid/peersync/web-form/encounter|"
        + re.search(r"Record (wf-[0-9a-f]+)", page).group(1)))  # type: ignore[union-attr]
    assert enc["status"] == "finished"


def test_link_an_unmatched_participant_from_the_matching_page(
        app: Flask, env: Env, home: Home) -> None:
    env.import_("batch.jsonl")
    env.run("sync")
    assert env.status()["waiting_patient"] == 1  # P-1004, no MRN
    resp = requests.post(f"{env.base_url}/Patient", json={
        "resourceType": "Patient", "gender": "unknown", "name": [{"family": "Park",
                                                                  "given": ["Lee"]}]},
        timeout=10)
    patient = resp.json()["id"]
    admin = logged_in(app, "admin")
    html = admin.get("/matching/").get_data(as_text=True)
    assert "P-1004" in html and "Park" in html
    html = admin.get("/matching/patient?source=peer-tool&participant=P-1004").get_data(
        as_text=True)
    assert f"Patient/{patient}" in html  # found by the prefilled name
    token = csrf_token(admin, "/matching/")
    bad = admin.post("/matching/patient", data={"csrf_token": token, "source": "peer-tool",
                                                "participant": "P-1004", "patient_id": "nope"})
    assert "Not linked" in admin.get(bad.headers["Location"]).get_data(as_text=True)
    response = admin.post("/matching/patient", data={
        "csrf_token": token, "source": "peer-tool", "participant": "P-1004",
        "patient_id": patient})
    assert response.status_code == 302
    assert "1 waiting record(s) released" in admin.get("/matching/").get_data(as_text=True)
    assert _state(home, "ps-2026-000126") == "synced"
    [enc] = env.search("Encounter", identifier=f"{ENC_SYSTEM}|ps-2026-000126")
    assert enc["subject"]["reference"] == f"Patient/{patient}"


def test_link_a_staff_id_from_the_matching_page(app: Flask, env: Env, home: Home,
                                                tmp_path: Any) -> None:
    import json

    from tests.integration.conftest import DATA

    record = json.loads((DATA / "in-person-session.json").read_text("utf-8"))
    record.update(id="ps-s99", specialist={"id": "S-99"})
    record["note"]["id"] = "N-s99"
    path = tmp_path / "s99.json"
    path.write_text(json.dumps(record), "utf-8")
    env.run("import", "--source", "peer-tool", str(path))
    env.run("sync")
    practitioner = requests.post(f"{env.base_url}/Practitioner", json={
        "resourceType": "Practitioner", "name": [{"family": "Ng"}],
        "identifier": [{"system": "https://riverside-peer.example/fhir/sid/staff",
                        "value": "S-99-other"}]}, timeout=10).json()["id"]
    admin = logged_in(app, "admin")
    html = admin.get("/matching/staff?specialist=S-99&searched=1&name=Ng&staff=").get_data(
        as_text=True)
    assert f"Practitioner/{practitioner}" in html
    token = csrf_token(admin, "/matching/")
    admin.post("/matching/staff", data={"csrf_token": token, "specialist": "S-99",
                                        "practitioner_id": practitioner})
    assert _state(home, "ps-s99") == "synced"


def test_retry_after_the_cause_is_fixed(app: Flask, env: Env, home: Home) -> None:
    patient = env.search("Patient", identifier=f"{MRN_SYSTEM}|MRN-55821")[0]["id"]
    dupes = [requests.post(f"{env.base_url}/Encounter", json={
        "resourceType": "Encounter", "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
        "identifier": [{"system": ENC_SYSTEM, "value": "ps-2026-000123"}],
        "subject": {"reference": f"Patient/{patient}"}}, timeout=10).json()["id"]
        for _ in range(2)]
    env.import_("in-person-session.json")
    env.run("sync", expect=1)
    failed = job_id(home, "ps-2026-000123")
    admin = logged_in(app, "admin")
    html = admin.get(f"/records/{failed}").get_data(as_text=True)
    assert "needs_attention" in html and 'id="operation-outcome"' in html
    for enc in dupes:
        requests.delete(f"{env.base_url}/Encounter/{enc}", timeout=10)
    token = csrf_token(admin, f"/records/{failed}")
    admin.post(f"/records/{failed}/retry", data={"csrf_token": token})
    assert _state(home, "ps-2026-000123") == "synced"


def test_settings_test_connection_and_dashboard(app: Flask) -> None:
    admin = logged_in(app, "admin")
    assert "reachable" in admin.get("/dashboard/").get_data(as_text=True)
    assert "unreachable" not in admin.get("/dashboard/").get_data(as_text=True)
    token = csrf_token(admin, "/settings/")
    html = admin.post("/settings/test", data={"csrf_token": token}).get_data(as_text=True)
    assert "Connection check: ready to sync" in html and "EHR reachable" in html
