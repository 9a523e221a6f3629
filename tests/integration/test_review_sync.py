"""Supervisor review against a real FHIR server (sekmet) and a real database (issue 10).

Under ``[review] policy = "cosign"``: imported notes wait; a sync sends none of them and
exits 0; `peersync review approve` (the supervisor's password on standard input) releases
one, and the next sync sends it with the supervisor as ``DocumentReference.authenticator``
and a Provenance ``verifier`` agent (generic preset); a returned note never reaches the EHR.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import requests
from click.testing import CliRunner

from connector.cli import main
from tests.integration.conftest import NOTE_SYSTEM, Env
from tests.webapp_support import cheap_hashes

pytestmark = pytest.mark.integration

STAFF_SYSTEM = "https://riverside-peer.example/fhir/sid/staff"
SAM = "sam-supervisor-pw-1"
VERIFIER = "http://terminology.hl7.org/CodeSystem/provenance-participant-type"


def _cosign(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    from mappings.profile import default_profile_path

    cheap_hashes(monkeypatch)
    text = default_profile_path().read_text("utf-8")
    (env.home / "agency.toml").write_text(
        text[: text.index("[review]")] + '[review]\npolicy = "cosign"\n', "utf-8")
    env.configure(profile="agency.toml")
    for name, staff in (("sam", "S-90"), ("max", "S-95")):
        result = CliRunner().invoke(main, ["user", "add", name, "--role", "supervisor",
                                           "--specialist-id", staff], input=SAM + "\n")
        assert result.exit_code == 0, result.output


def _review(env: Env, *args: str) -> Any:
    result = CliRunner().invoke(main, ["review", *args], input=SAM + "\n",
                                catch_exceptions=False)
    assert result.exit_code == 0, (args, result.output)
    return result


def _practitioner(env: Env, staff_id: str) -> str:
    resp = requests.post(f"{env.base_url}/Practitioner", json={
        "resourceType": "Practitioner",
        "identifier": [{"system": STAFF_SYSTEM, "value": staff_id}],
        "name": [{"family": "Supervisor", "given": ["Sam"]}]}, timeout=10)
    resp.raise_for_status()
    return str(resp.json()["id"])


def _notes(env: Env, note_id: str) -> list[dict[str, Any]]:
    return env.search("DocumentReference", identifier=f"{NOTE_SYSTEM}|{note_id}")


def test_cosign_approve_sync_sends_the_authenticator_and_a_verifier(
        env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    _cosign(env, monkeypatch)
    sam_practitioner = _practitioner(env, "S-90")
    env.import_("in-person-session.json", "batch.jsonl")
    env.run("sync")  # nothing to send: every note waits; exit 0
    counts = env.status()
    assert counts["waiting_review"] == 3  # 123, 124, 125 (126: a no-show without a note)
    assert counts["waiting_patient"] == 1  # 126 (no MRN), as without review
    assert counts["synced"] == 0
    assert _notes(env, "N-88812") == []

    _review(env, "approve", "ps-2026-000123", "--by", "sam")
    _review(env, "return", "ps-2026-000124", "--by", "sam", "--comment", "More detail.")
    env.run("sync")
    counts = env.status()
    assert (counts["synced"], counts["returned"], counts["waiting_review"]) == (1, 1, 1)

    [doc] = _notes(env, "N-88812")
    assert doc["authenticator"] == {"reference": f"Practitioner/{sam_practitioner}"}
    provenances = [p for p in env.all("Provenance")
                   if f"DocumentReference/{doc['id']}" in json.dumps(p["target"])]
    assert len(provenances) == 1
    verifiers = [a for a in provenances[0]["agent"]
                 if a["type"]["coding"][0] == {"system": VERIFIER, "code": "verifier",
                                               "display": "Verifier"}]
    assert [a["who"]["reference"] for a in verifiers] == [f"Practitioner/{sam_practitioner}"]
    assert _notes(env, "N-88813") == []  # the returned note never reaches the EHR
    env.run("sync")  # and a later sync does not send it either
    assert _notes(env, "N-88813") == []
    assert env.status()["returned"] == 1


def test_a_co_signer_without_a_practitioner_waits_as_an_author_would(
        env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    _cosign(env, monkeypatch)  # max (S-95): no Practitioner in the EHR, no name known
    env.import_("in-person-session.json")
    _review(env, "approve", "ps-2026-000123", "--by", "max")
    env.run("sync")
    assert env.status()["waiting_staff"] == 1
    store = env.store()
    try:
        [job] = [j for j in store.jobs_overview(limit=10) if j["record_id"] == "ps-2026-000123"]
    finally:
        store.close()
    assert job["reason"] == "cosigner-staff-id-no-match-no-name"
    assert _notes(env, "N-88812") == []
