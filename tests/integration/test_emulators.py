"""The EHR emulators themselves (tests/emulators.py), driven with plain requests against sekmet."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests

from tests.emulators import CAPABILITIES, RULES, EhrEmulator, seed_encounters, seed_practitioners

pytestmark = pytest.mark.integration

FHIR_JSON = {"Content-Type": "application/fhir+json"}
NOTE_ID = {"system": "urn:peersync:note", "value": "n-1"}
SECURITY = [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "42CFRPart2"}]
Make = Callable[..., EhrEmulator]


@pytest.fixture
def make(sekmet: Any) -> Iterator[Make]:
    started: list[EhrEmulator] = []

    def _make(rules: str, **kwargs: Any) -> EhrEmulator:
        started.append(EhrEmulator(sekmet.base_url, rules, **kwargs).start())
        return started[-1]

    yield _make
    for emulator in started:
        emulator.stop()


@pytest.fixture
def chart(sekmet: Any) -> tuple[str, str]:
    """(patient id, encounter id) already in the EHR."""
    resp = requests.post(f"{sekmet.base_url}/Patient", json={"resourceType": "Patient"},
                         timeout=10)
    patient = resp.json()["id"]
    [encounter] = seed_encounters(sekmet.base_url, [(patient, "2026-05-01T09:00:00-04:00",
                                                      "2026-05-01T10:00:00-04:00")])
    return patient, encounter


def note(chart: tuple[str, str], content_type: str = "text/plain", contents: int = 1,
         **extra: Any) -> dict[str, Any]:
    data = base64.b64encode(b"Met for 50 minutes.").decode()
    return {
        "resourceType": "DocumentReference", "status": "current", "docStatus": "final",
        "type": {"coding": [{"system": "http://loinc.org", "code": "11488-4"}]},
        "subject": {"reference": f"Patient/{chart[0]}"},
        "content": [{"attachment": {"contentType": content_type, "data": data,
                                    "title": f"part {n}", "creation": "2026-05-01T10:05:00Z"}}
                    for n in range(contents)],
        "context": {"encounter": [{"reference": f"Encounter/{chart[1]}"}],
                    "period": {"start": "2026-05-01T09:00:00Z", "end": "2026-05-01T10:00:00Z"}},
        **extra,
    }


def upstream(sekmet: Any, resource_type: str, **params: str) -> list[dict[str, Any]]:
    resp = requests.get(f"{sekmet.base_url}/{resource_type}", params={"_count": "200", **params},
                        timeout=10)
    return [e["resource"] for e in resp.json().get("entry", [])]


def assert_refused(emulator: EhrEmulator, resp: requests.Response, status: int) -> None:
    assert resp.status_code == status, resp.text
    issue = resp.json()["issue"][0]
    assert resp.json()["resourceType"] == "OperationOutcome" and issue["severity"] == "error"
    assert issue["code"] and issue["diagnostics"]
    last = emulator.refused[-1]
    assert (last.method, last.status) == (resp.request.method, status)
    assert last.path == resp.request.path_url.split("?")[0]


@pytest.mark.parametrize("rules", RULES)
def test_metadata_is_the_rule_sets_capability_statement(make: Make, rules: str) -> None:
    emulator = make(rules)
    resp = requests.get(f"{emulator.base_url}/metadata", timeout=10)
    assert resp.status_code == 200
    cs = resp.json()
    assert cs["resourceType"] == "CapabilityStatement" and cs["fhirVersion"] == "4.0.1"
    assert emulator.base_url.startswith("http://127.0.0.1:") and emulator.base_url.endswith("/fhir")
    resources = cs["rest"][0]["resource"]
    if rules == "epic":
        path = CAPABILITIES / "epic-r4-sandbox-2026-05.json"
        assert cs == json.loads(path.read_text("utf-8"))
    elif rules == "no-conditional":
        assert "transaction" in {i["code"] for i in cs["rest"][0]["interaction"]}
        assert all(r["conditionalCreate"] is False and r["conditionalUpdate"] is False
                   and r["conditionalDelete"] == "not-supported" for r in resources)
    elif rules == "generic":  # sekmet's own statement, untouched
        upstream = requests.get(f"{emulator.upstream_base_url}/metadata", timeout=10).json()
        assert cs["rest"] == upstream["rest"]
    else:
        assert "written for the" in cs["description"].lower() and cs["kind"] == "instance"
        assert {r["type"] for r in resources} >= {"DocumentReference", "Patient", "Encounter"}


@pytest.mark.parametrize(("rules", "method", "path", "body", "status"), [
    ("us-core-notes", "POST", "Provenance", {"resourceType": "Provenance"}, 405),
    ("us-core-notes", "PUT", "DocumentReference?identifier=a|b", None, 405),
    ("epic", "POST", "", {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": {"resourceType": "Patient"}, "request": {"method": "POST",
                                                               "url": "Patient"}}]}, 405),
    ("epic", "POST", "Encounter", {"resourceType": "Encounter", "status": "finished"}, 405),
    ("oracle-health", "POST", "Practitioner", {"resourceType": "Practitioner"}, 405),
    ("no-conditional", "PUT", "Patient?identifier=urn:x|1",
     {"resourceType": "Patient", "identifier": [{"system": "urn:x", "value": "1"}]}, 412),
])
def test_disallowed_interaction_is_refused_and_not_applied(
        make: Make, sekmet: Any, chart: tuple[str, str], rules: str, method: str, path: str,
        body: dict[str, Any] | None, status: int) -> None:
    emulator = make(rules)
    before = {t: len(upstream(sekmet, t)) for t in ("Patient", "Encounter", "Practitioner",
                                                      "Provenance", "DocumentReference")}
    body = body or note(chart)
    resp = requests.request(method, f"{emulator.base_url}/{path}", json=body, timeout=10)
    assert_refused(emulator, resp, status)
    assert {t: len(upstream(sekmet, t)) for t in before} == before
    assert emulator.created == []


def test_us_core_notes_honours_conditional_create(make: Make, chart: tuple[str, str]) -> None:
    emulator = make("us-core-notes")
    for _ in range(2):
        resp = requests.post(f"{emulator.base_url}/DocumentReference", timeout=10,
                             json=note(chart, identifier=[NOTE_ID]),
                             headers={"If-None-Exist": "identifier=urn:peersync:note|n-1"})
        assert resp.status_code in (200, 201)
        assert resp.headers["Location"].startswith(emulator.base_url + "/DocumentReference/")
    assert len(emulator.stored("DocumentReference")) == 1
    resp = requests.get(f"{emulator.base_url}/Patient", params={"gender": "male"}, timeout=10)
    assert_refused(emulator, resp, 400)


def test_epic_rules(make: Make, sekmet: Any, chart: tuple[str, str]) -> None:
    emulator = make("epic")
    url = f"{emulator.base_url}/DocumentReference"
    sent = note(chart, "text/plain; charset=utf-8", contents=2, identifier=[NOTE_ID],
                meta={"security": SECURITY})
    for _ in range(2):  # If-None-Exist ignored: the create happens again
        resp = requests.post(url, json=sent, headers={"If-None-Exist": "identifier=a|b"},
                             timeout=10)
        assert resp.status_code == 201, resp.text
    notes = upstream(sekmet, "DocumentReference")
    assert len(notes) == 2 and len(emulator.stored("DocumentReference")) == 2
    for stored in notes:
        assert "identifier" not in stored and "security" not in stored.get("meta", {})
        assert [c["attachment"]["title"] for c in stored["content"]] == ["part 0"]
    without = note(chart)
    del without["context"]["encounter"]
    assert_refused(emulator, requests.post(url, json=without, timeout=10), 422)
    assert "Valid encounter required" in emulator.refused[-1].reason
    missing = note(chart)
    missing["context"]["encounter"][0]["reference"] = "Encounter/does-not-exist"
    assert_refused(emulator, requests.post(url, json=missing, timeout=10), 422)
    assert_refused(emulator, requests.post(url, json=note(chart, "text/html"), timeout=10), 400)
    search = {"patient": chart[0], "period": "ge2026-05-01T00:00:00Z"}
    assert_refused(emulator, requests.get(url, params=search, timeout=10), 400)
    resp = requests.get(url, params={**search, "period": "ge2026-05-01"}, timeout=10)
    assert resp.status_code == 200 and resp.json()["total"] == 2
    assert len(upstream(sekmet, "DocumentReference")) == 2


def test_oracle_health_rules(make: Make, sekmet: Any, chart: tuple[str, str]) -> None:
    emulator = make("oracle-health")
    url = f"{emulator.base_url}/DocumentReference"
    sent = note(chart, "text/plain;charset=utf-8", identifier=[NOTE_ID],
                meta={"security": SECURITY},
                relatesTo=[{"code": "replaces", "target": {"reference": "DocumentReference/x"}}],
                description="kept nowhere")
    resp = requests.post(url, json=sent, timeout=10)
    assert resp.status_code == 201, resp.text
    [stored] = emulator.stored("DocumentReference")
    for dropped in ("identifier", "relatesTo", "description"):
        assert dropped not in stored
    assert "security" not in stored.get("meta", {})
    assert set(stored["content"][0]["attachment"]) == {"contentType", "data", "title", "creation"}
    two = note(chart, "text/plain;charset=utf-8", contents=2)
    assert_refused(emulator, requests.post(url, json=two, timeout=10), 422)
    for bad in ("text/plain", "text/plain; charset=utf-8"):
        assert_refused(emulator, requests.post(url, json=note(chart, bad), timeout=10), 400)
    ine = {"If-None-Exist": "identifier=a|b"}
    resp = requests.post(url, json=note(chart, "text/plain;charset=utf-8"), headers=ine, timeout=10)
    assert_refused(emulator, resp, 400)
    params = {"patient": chart[0], "identifier": "urn:peersync:note|n-1"}
    assert_refused(emulator, requests.get(url, params=params, timeout=10), 400)
    assert_refused(emulator, requests.get(url, params={"status": "current"}, timeout=10), 400)
    resp = requests.get(url, params={"patient": chart[0]}, timeout=10)
    assert resp.status_code == 200 and resp.json()["total"] == 1
    assert len(upstream(sekmet, "DocumentReference")) == 1


def test_no_conditional_refuses_every_conditional_request(make: Make, sekmet: Any) -> None:
    emulator = make("no-conditional")
    patient = {"resourceType": "Patient", "identifier": [{"system": "urn:x", "value": "1"}]}
    resp = requests.post(f"{emulator.base_url}/Patient", json=patient, timeout=10,
                         headers={"If-None-Exist": "identifier=urn:x|1"})
    assert_refused(emulator, resp, 412)
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:0b5c1b3e-3d4e-4a53-9d3a-0f0c8f6e1a11", "resource": patient,
         "request": {"method": "POST", "url": "Patient", "ifNoneExist": "identifier=urn:x|1"}}]}
    assert_refused(emulator, requests.post(emulator.base_url, json=bundle, timeout=10), 412)
    assert upstream(sekmet, "Patient") == []
    del bundle["entry"][0]["request"]["ifNoneExist"]
    resp = requests.post(emulator.base_url, json=bundle, timeout=10)
    assert resp.status_code == 200, resp.text
    [entry] = resp.json()["entry"]
    assert entry["fullUrl"].startswith(emulator.base_url + "/Patient/")
    [created] = emulator.created
    resp = requests.put(f"{emulator.base_url}/Patient/{created.id}", timeout=10,
                        json={**patient, "id": created.id, "active": True},
                        headers={"If-Match": 'W/"1"'})
    assert resp.status_code == 200, resp.text
    assert emulator.stored("Patient")[0]["active"] is True
    page = requests.get(f"{emulator.base_url}/Patient", params={"_count": "1"}, timeout=10).json()
    assert all(link["url"].startswith(emulator.base_url) for link in page["link"])
    assert len(emulator.refused) == 2


def test_lost_response_is_applied_upstream(make: Make, sekmet: Any) -> None:
    emulator = make("no-conditional", drop_rate=1.0, seed=7, max_drops=1)
    with pytest.raises(requests.ConnectionError):
        requests.post(f"{emulator.base_url}/Patient", json={"resourceType": "Patient"},
                      timeout=10)
    [applied] = upstream(sekmet, "Patient")
    assert emulator.dropped == 1
    assert [(c.resource_type, c.id) for c in emulator.created] == [("Patient", applied["id"])]
    resp = requests.post(f"{emulator.base_url}/Patient", json={"resourceType": "Patient"},
                         timeout=10)
    assert resp.status_code == 201 and emulator.dropped == 1


def test_seed_practitioners_and_encounters(sekmet: Any, profile: Any) -> None:
    ids = seed_practitioners(sekmet.base_url, profile, [
        {"id": "S-17", "family": "Kim", "given": "Alex", "npi": "1234567893"}])
    [practitioner] = upstream(sekmet, "Practitioner")
    assert ids == {"S-17": practitioner["id"]}
    assert {"system": profile.staff_system, "value": "S-17"} in practitioner["identifier"]
    [encounter_id] = seed_encounters(sekmet.base_url, [("p1", "2026-05-01T09:00:00Z",
                                                        "2026-05-01T10:00:00Z")])
    [encounter] = upstream(sekmet, "Encounter")
    assert encounter["id"] == encounter_id and encounter["class"]["code"] == "AMB"
    assert encounter["subject"]["reference"] == "Patient/p1"
