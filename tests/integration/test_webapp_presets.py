"""The admin app under the Epic preset, through the strict Epic emulator in front of sekmet.

Records wait for the EHR's own Encounter (two in the session's window, or none);
an admin links each from the holds page, the sync that follows lands the note on
that Encounter, and the record's page lists what Epic could not carry.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from connector.fhir_client import FhirClient
from mappings.profile import default_profile_path, load_profile
from tests.emulators import EhrEmulator, seed_encounters, seed_practitioners
from tests.integration.conftest import DATA, Env
from tests.webapp_support import Home, csrf_token, job_id, logged_in

pytestmark = pytest.mark.integration

SESSION = "ps-2026-000123"  # P-1001 / MRN-55821, 2026-11-20 14:00-15:00 -05:00, with goals
PART2 = "ps-2026-000129"  # P-1007 / MRN-70013, 2026-11-22 10:00 -05:00, Part 2
STAFF = [{"id": "S-17", "family": "Kim", "given": "Alex"},
         {"id": "S-22", "family": "Natarajan", "given": "Priya"},
         {"id": "S-31", "family": "Whitfield", "given": "Jo"}]


@pytest.fixture
def epic(sekmet: Any) -> Iterator[EhrEmulator]:
    from connector.demo import seed_patients

    profile = load_profile(default_profile_path())
    with FhirClient(base_url=sekmet.base_url, timeout_s=10) as client:
        seed_patients(client, profile, [DATA / "in-person-session.json",
                                        DATA / "part2-without-consent.json"])
    seed_practitioners(sekmet.base_url, profile, STAFF)
    with EhrEmulator(sekmet.base_url, "epic") as emu:
        yield emu


@pytest.fixture
def env(epic: EhrEmulator, tmp_path: Path, database_url: str,
        monkeypatch: pytest.MonkeyPatch) -> Env:
    return Env(tmp_path / "home", epic.base_url, database_url, monkeypatch,
               init_args=("--preset", "epic"))


def _patient(upstream: str, mrn: str) -> str:
    with FhirClient(base_url=upstream, timeout_s=10) as client:
        [patient] = client.search("Patient", {"identifier": mrn})
    return str(patient["id"])


def _jobs(home: Home) -> dict[str, dict[str, Any]]:
    store = home.store()
    try:
        return {r["record_id"]: r for r in store.jobs_overview(limit=100)}
    finally:
        store.close()


def _link(admin: Any, record_id: str, encounter_id: str, *, refused: bool = False) -> str:
    """The page after linking: the holds page (302), or the form again with the error
    and the typed id kept (400) when the EHR refuses it."""
    response = admin.post("/holds/encounter/link", data={
        "csrf_token": csrf_token(admin, "/holds/encounter"), "source": "peer-tool",
        "record": record_id, "encounter_id": encounter_id})
    if refused:
        assert response.status_code == 400
        return str(response.get_data(as_text=True))
    assert response.status_code == 302, response.get_data(as_text=True)[-3000:]
    return str(admin.get(response.headers["Location"]).get_data(as_text=True))


def test_link_encounters_from_the_holds_page_and_see_what_epic_could_not_carry(
        epic: EhrEmulator, sekmet: Any, env: Env, home: Home, app: Flask) -> None:
    upstream = sekmet.base_url
    dana, morgan = _patient(upstream, "MRN-55821"), _patient(upstream, "MRN-70013")
    # two Encounters in Dana's session window; none in Morgan's (hers is a week before)
    first, second, morgans = seed_encounters(upstream, [
        (dana, "2026-11-20T13:55:00-05:00", "2026-11-20T15:00:00-05:00"),
        (dana, "2026-11-20T14:30:00-05:00", "2026-11-20T15:30:00-05:00"),
        (morgan, "2026-11-15T09:55:00-05:00", "2026-11-15T10:50:00-05:00")])
    env.import_("in-person-session.json", "part2-without-consent.json")
    env.run("consent", "P-1007", "active")
    env.run("sync", "--max-wait", "5", expect=None)
    jobs = _jobs(home)
    assert {jobs[r]["state"] for r in (SESSION, PART2)} == {"waiting_encounter"}, jobs
    assert jobs[SESSION]["reason"] == "2-ehr-encounters-in-session-window"
    assert jobs[PART2]["reason"] == "no-ehr-encounter-in-session-window"

    admin = logged_in(app, "admin")
    html = admin.get("/holds/encounter").get_data(as_text=True)
    assert html.count("Link encounter") == 2
    # an id the EHR does not have: nothing linked, still held
    html = _link(admin, SESSION, "no-such-encounter", refused=True)
    assert "Encounter/no-such-encounter could not be linked" in html
    assert 'value="no-such-encounter"' in html  # kept for the admin to correct
    assert _jobs(home)[SESSION]["state"] == "waiting_encounter"

    html = _link(admin, SESSION, second)
    assert f"Record {SESSION} linked to Encounter/{second}; 1 record(s) released." in html
    html = _link(admin, PART2, morgans)
    assert f"Record {PART2} linked to Encounter/{morgans}; 1 record(s) released." in html
    assert "No record is waiting for an encounter" in html
    jobs = _jobs(home)
    assert {jobs[r]["state"] for r in (SESSION, PART2)} == {"synced"}, jobs
    store = home.store()
    try:
        assert store.get_link("encounter", f"peer-tool|{SESSION}") == second
        assert store.get_link("encounter", f"peer-tool|{PART2}") == morgans
    finally:
        store.close()
    # each note went onto the Encounter the admin named
    notes = {d["subject"]["reference"]: d for d in epic.stored("DocumentReference")}
    assert notes[f"Patient/{dana}"]["context"]["encounter"] == [
        {"reference": f"Encounter/{second}"}]
    assert notes[f"Patient/{morgan}"]["context"]["encounter"] == [
        {"reference": f"Encounter/{morgans}"}]
    assert first not in str(notes)
    assert epic.refused == [], epic.refused

    # the record's page: what Epic could not carry, from the sync's own audit detail
    auditor = logged_in(app, "auditor")
    html = auditor.get(f"/records/{job_id(home, SESSION)}").get_data(as_text=True)
    omitted = re.search(r'<ul id="omitted">(.*?)</ul>', html, re.S)
    assert omitted and "<code>epic</code> preset" in html
    assert re.findall(r"<code>([^<]+)</code>", omitted.group(1)) == ["goals:ehr-owns-encounters"]
    html = auditor.get(f"/records/{job_id(home, PART2)}").get_data(as_text=True)
    omitted = re.search(r'<ul id="omitted">(.*?)</ul>', html, re.S)
    assert omitted
    assert re.findall(r"<code>([^<]+)</code>", omitted.group(1)) == ["notice-in-content[0]"]


def test_settings_write_plan_after_a_connection_test(app: Flask, epic: EhrEmulator) -> None:
    admin = logged_in(app, "admin")
    token = csrf_token(admin, "/settings/")
    html = admin.post("/settings/test", data={"csrf_token": token}).get_data(as_text=True)
    assert "EHR reachable" in html
    rows = dict(re.findall(r"<tr><td[^>]*>([A-Za-z]+)</td><td[^>]*>([^<]*)</td>",
                           html.split('id="write-plan"', 1)[1].split("</table>", 1)[0]))
    assert list(rows) == ["Patient", "Practitioner", "Encounter", "DocumentReference",
                          "Provenance", "Organization", "Device"]
    assert rows["DocumentReference"].startswith("create; amend in place (docStatus amended)")
    assert rows["Provenance"] == "not written"
    assert "preset epic; single mode" in html
    assert epic.refused == [], epic.refused
