"""Matching, consent and retry against the real FHIR server: what waits, what releases it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import requests

from mappings.profile import default_profile_path
from tests.integration.conftest import DATA, ENC_SYSTEM, MRN_SYSTEM, SOURCE, Env

pytestmark = pytest.mark.integration

STAFF_SYSTEM = "https://riverside-peer.example/fhir/sid/staff"


def _example(name: str, **changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((DATA / name).read_text("utf-8"))
    for dotted, value in changes.items():
        node = data
        *parents, leaf = dotted.split("__")
        for part in parents:
            node = node.setdefault(part, {})
        if value is None:
            node.pop(leaf, None)
        else:
            node[leaf] = value
    return data


def _import(env: Env, tmp_path: Path, *records: dict[str, Any], name: str = "in.jsonl") -> None:
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    env.run("import", "--source", SOURCE, str(path))


def _post(env: Env, resource: dict[str, Any]) -> str:
    resp = requests.post(f"{env.base_url}/{resource['resourceType']}", json=resource, timeout=10)
    assert resp.status_code == 201, resp.text
    return str(resp.json()["id"])


def _encounter(env: Env, record_id: str) -> list[dict[str, Any]]:
    return env.search("Encounter", identifier=f"{ENC_SYSTEM}|{record_id}")


def test_participant_without_mrn_waits_until_an_admin_links_it(env: Env) -> None:
    env.import_("batch.jsonl")
    env.run("sync")
    assert env.status()["waiting_patient"] == 1  # ps-2026-000126, P-1004 has no MRN
    patient = _post(env, {"resourceType": "Patient", "gender": "unknown",
                          "name": [{"family": "Park"}]})
    out = env.run("link", "patient", "P-1004", patient, "--source", SOURCE)
    assert "1 waiting record(s) released" in out.stdout
    env.run("sync")
    assert env.status()["waiting_patient"] == 0
    [enc] = _encounter(env, "ps-2026-000126")
    assert enc["subject"]["reference"] == f"Patient/{patient}"
    assert enc["status"] == "cancelled"  # no_show


def test_link_refuses_a_patient_the_ehr_does_not_have(env: Env) -> None:
    env.import_("batch.jsonl")
    result = env.run("link", "patient", "P-1004", "no-such-patient", expect=1)
    assert "Patient/no-such-patient" in result.stderr
    assert env.status()["pending"] == 3  # nothing released


def test_unmatched_mrn_is_resolved_again_at_the_next_sync(env: Env, tmp_path: Path) -> None:
    record = _example("in-person-session.json", id="ps-new-mrn",
                      participant__mrn="MRN-NEW-1", note__id="N-new-mrn")
    _import(env, tmp_path, record)
    env.run("sync")
    assert env.status()["waiting_patient"] == 1
    assert _encounter(env, "ps-new-mrn") == []
    # The EHR registers the patient; the next sync finds it by MRN without anyone linking.
    patient = _post(env, {"resourceType": "Patient", "gender": "unknown",
                          "identifier": [{"system": MRN_SYSTEM, "value": "MRN-NEW-1"}]})
    env.run("sync")
    assert env.status()["synced"] == 1
    assert _encounter(env, "ps-new-mrn")[0]["subject"]["reference"] == f"Patient/{patient}"


def test_two_patients_with_one_mrn_wait_for_an_admin(env: Env, tmp_path: Path) -> None:
    for _ in range(2):
        _post(env, {"resourceType": "Patient", "gender": "unknown",
                    "identifier": [{"system": MRN_SYSTEM, "value": "MRN-TWICE"}]})
    _import(env, tmp_path, _example("in-person-session.json", id="ps-twice",
                                    participant__mrn="MRN-TWICE", note__id="N-twice"))
    env.run("sync")
    store = env.store()
    try:
        [row] = store.jobs_overview(state="waiting_patient")
    finally:
        store.close()
    assert row["reason"] == "mrn-matches-2-patients"


def test_unknown_specialist_without_a_name_waits_for_a_staff_link(env: Env,
                                                                  tmp_path: Path) -> None:
    record = _example("in-person-session.json", id="ps-s99", specialist={"id": "S-99"},
                      note__id="N-s99")
    _import(env, tmp_path, record)
    env.run("sync")
    assert env.status()["waiting_staff"] == 1
    practitioner = _post(env, {"resourceType": "Practitioner", "name": [{"family": "Ng"}]})
    out = env.run("link", "staff", "S-99", practitioner)
    assert "1 waiting record(s) released" in out.stdout
    env.run("sync")
    [enc] = _encounter(env, "ps-s99")
    assert enc["participant"][0]["individual"]["reference"] == f"Practitioner/{practitioner}"


def test_a_name_from_another_record_of_the_same_specialist_creates_it_once(
        env: Env, tmp_path: Path) -> None:
    nameless = _example("in-person-session.json", id="ps-s50-a", specialist={"id": "S-50"},
                        note__id="N-s50-a")
    named = _example("in-person-session.json", id="ps-s50-b", note__id="N-s50-b",
                     specialist={"id": "S-50", "given": "Jo", "family": "Abara"})
    _import(env, tmp_path, nameless, named)
    env.run("sync")
    assert env.status()["synced"] == 2
    found = env.search("Practitioner", identifier=f"{STAFF_SYSTEM}|S-50")
    assert len(found) == 1 and found[0]["name"][0]["family"] == "Abara"


def test_part2_record_waits_for_consent_and_a_command_releases_it(env: Env) -> None:
    env.import_("part2-without-consent.json")
    env.run("sync")
    assert env.status()["waiting_consent"] == 1
    assert _encounter(env, "ps-2026-000129") == []
    out = env.run("consent", "P-1007", "active", "--source", SOURCE)
    assert "1 waiting record(s) released" in out.stdout
    env.run("sync")
    [enc] = _encounter(env, "ps-2026-000129")
    assert {c["code"] for c in enc["meta"]["security"]} == {"R", "ETH", "42CFRPart2"}


def test_a_later_record_with_active_consent_releases_the_earlier_ones(env: Env,
                                                                      tmp_path: Path) -> None:
    env.import_("part2-without-consent.json")
    env.run("sync")
    later = _example("part2-without-consent.json", id="ps-2026-000140", note__id="N-140",
                     consent={"status": "active", "id": "C-77"})
    _import(env, tmp_path, later)
    env.run("sync")
    assert env.status()["synced"] == 2
    assert len(_encounter(env, "ps-2026-000129")) == 1


def test_revoked_consent_stops_further_disclosure(env: Env, tmp_path: Path) -> None:
    first = _example("part2-without-consent.json", consent={"status": "active"})
    _import(env, tmp_path, first)
    env.run("sync")
    assert env.status()["synced"] == 1
    env.run("consent", "P-1007", "revoked", "--source", SOURCE)
    second = _example("part2-without-consent.json", id="ps-2026-000141", note__id="N-141")
    second.pop("consent")
    _import(env, tmp_path, second, name="second.jsonl")
    env.run("sync")
    assert env.status()["waiting_consent"] == 1
    assert _encounter(env, "ps-2026-000141") == []


def test_a_refused_record_is_retried_after_the_admin_fixes_the_cause(env: Env,
                                                                     tmp_path: Path) -> None:
    patient = env.search("Patient", identifier=f"{MRN_SYSTEM}|MRN-55821")[0]["id"]
    dupes = [_post(env, {
        "resourceType": "Encounter", "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
        "identifier": [{"system": ENC_SYSTEM, "value": "ps-2026-000123"}],
        "subject": {"reference": f"Patient/{patient}"}}) for _ in range(2)]
    env.import_("in-person-session.json")
    env.run("sync", expect=1)
    assert env.status()["needs_attention"] == 1
    assert env.run("retry", "--all-failed").stdout.startswith("1 record(s) re-queued")
    env.run("sync", expect=1)  # still two matches: refused again
    # The admin removes the duplicates in the EHR, then asks for a retry.
    for enc in dupes:
        assert requests.delete(f"{env.base_url}/Encounter/{enc}", timeout=10).status_code in (
            200, 204)
    out = env.run("retry", "--all-failed")
    assert out.stdout.startswith("1 record(s) re-queued")
    env.run("sync")
    assert env.status()["synced"] == 1
    assert len(_encounter(env, "ps-2026-000123")) == 1


def test_profile_that_creates_missing_patients(env: Env, tmp_path: Path) -> None:
    profile = tmp_path / "creates.toml"
    profile.write_text(default_profile_path().read_text("utf-8").replace(
        "create_missing = false", "create_missing = true"), encoding="utf-8")
    text = (env.home / "peersync.toml").read_text("utf-8")
    (env.home / "peersync.toml").write_text(
        text.replace('profile = "default"', f'profile = "{profile}"'), encoding="utf-8")
    env.import_("batch.jsonl")
    env.run("sync")
    counts = env.status()
    assert counts["waiting_patient"] == 0  # P-1004 (no MRN) is created, not left waiting
    assert counts["synced"] == 2 and counts["waiting_staff"] == 1  # S-17 has no name here
    [enc] = _encounter(env, "ps-2026-000126")
    created = requests.get(f"{env.base_url}/{enc['subject']['reference']}", timeout=10).json()
    assert created["gender"] == "unknown"
    assert any(i["value"] == "P-1004" for i in created["identifier"])
