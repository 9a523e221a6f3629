"""The vertical slice against a real FHIR server (sekmet) and a real database.

Contract examples go in through `peersync import`, `peersync sync` sends them,
and FHIR searches on the server check what it holds afterwards.
"""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.integration.conftest import (
    DATA,
    ENC_SYSTEM,
    FIRST_IMPORT,
    MRN_SYSTEM,
    NOTE_SYSTEM,
    SOURCE,
    Env,
)

pytestmark = pytest.mark.integration



def _records(*names: str) -> list[dict[str, Any]]:
    out = []
    for name in names:
        path = DATA / name
        if name.endswith(".jsonl"):
            out += [json.loads(line) for line in path.read_text("utf-8").splitlines() if line]
        elif name.endswith(".json"):
            out.append(json.loads(path.read_text("utf-8")))
    return out


def _note_text(doc: dict[str, Any]) -> bytes:
    return base64.b64decode(doc["content"][0]["attachment"]["data"])


def _snapshot(env: Env) -> dict[str, list[tuple[str, str]]]:
    return {
        rt: sorted((r["id"], r["meta"]["versionId"]) for r in env.all(rt))
        for rt in ("Encounter", "DocumentReference", "Practitioner", "Patient", "Provenance",
                   "Organization", "Device")
    }


def test_contract_examples_land_once_with_waiting_records_held(env: Env) -> None:
    out = env.import_(*FIRST_IMPORT)
    assert "7 accepted (7 new, 0 unchanged), 0 rejected" in out.stdout
    env.run("sync")

    counts = env.status()
    assert counts["synced"] == 5
    assert counts["waiting_patient"] == 1  # ps-2026-000126 has no MRN
    assert counts["waiting_consent"] == 1  # ps-2026-000129: Part 2, consent none
    assert sum(counts.values()) == 7

    records = {r["id"]: r for r in _records("in-person-session.json", "batch.jsonl")}
    records.update({r["id"]: r for r in _csv_records()})
    patients = {p["identifier"][0]["value"]: p["id"] for p in env.all("Patient")}
    sent = [rid for rid, r in records.items() if r["participant"].get("mrn")]
    assert len(sent) == 5
    for rid in sent:
        encounters = env.search("Encounter", identifier=f"{ENC_SYSTEM}|{rid}")
        assert len(encounters) == 1, rid
        enc = encounters[0]
        mrn = records[rid]["participant"]["mrn"]
        assert enc["subject"]["reference"] == f"Patient/{patients[mrn]}"
        note = records[rid].get("note")
        if note:
            docs = env.search("DocumentReference", identifier=f"{NOTE_SYSTEM}|{note['id']}")
            assert [d["status"] for d in docs] == ["current"]
            assert _note_text(docs[0]) == note["text"].encode("utf-8")
            assert docs[0]["context"]["encounter"][0]["reference"] == f"Encounter/{enc['id']}"
            assert docs[0]["subject"]["reference"] == f"Patient/{patients[mrn]}"

    # Held back: not in the EHR at all.
    for rid in ("ps-2026-000126", "ps-2026-000129"):
        assert env.search("Encounter", identifier=f"{ENC_SYSTEM}|{rid}") == []
    assert env.search("DocumentReference", identifier=f"{NOTE_SYSTEM}|N-88817") == []
    # One Encounter per synced record, nothing else; one Provenance per change.
    assert len(env.all("Encounter")) == 5
    assert len(env.all("DocumentReference")) == 5
    assert len(env.all("Provenance")) == 5
    # Practitioners: S-17 (named in 000123), S-22 (named in 000125), S-31 (named in 000127).
    staff = sorted(p["identifier"][0]["value"] for p in env.all("Practitioner"))
    assert staff == ["S-17", "S-22", "S-31"]
    # The Part 2 record with active consent carries its labels and the notice.
    part2 = env.search("DocumentReference", identifier=f"{NOTE_SYSTEM}|N-88814")[0]
    assert {c["code"] for c in part2["meta"]["security"]} == {"R", "ETH", "42CFRPart2"}
    assert len(part2["content"]) == 2

    # The waiting states are what the admin sees.
    waiting = env.run("status").stdout
    assert "waiting_patient" in waiting and "waiting_consent" in waiting


def _csv_records() -> list[dict[str, Any]]:
    from connector.intake import Accepted, iter_records

    return [r.record.raw for r in iter_records(DATA / "export.csv", source=SOURCE)
            if isinstance(r, Accepted)]


def test_second_import_and_sync_change_nothing(env: Env) -> None:
    env.import_(*FIRST_IMPORT)
    env.run("sync")
    before = _snapshot(env)
    status_before = env.status()

    out = env.import_(*FIRST_IMPORT)
    assert "7 accepted (0 new, 7 unchanged)" in out.stdout
    env.run("sync")

    assert _snapshot(env) == before
    assert env.status() == status_before


def _assert_amended(env: Env) -> None:
    docs = env.search("DocumentReference", identifier=f"{NOTE_SYSTEM}|N-88812")
    assert len(docs) == 2
    by_status = {d["status"]: d for d in docs}
    assert set(by_status) == {"superseded", "current"}
    old, new = by_status["superseded"], by_status["current"]
    assert new["relatesTo"] == [
        {"code": "replaces", "target": {"reference": f"DocumentReference/{old['id']}"}}
    ]
    amendment = json.loads((DATA / "amendment.json").read_text("utf-8"))
    original = json.loads((DATA / "in-person-session.json").read_text("utf-8"))
    assert _note_text(new) == amendment["note"]["text"].encode("utf-8")
    assert _note_text(old) == original["note"]["text"].encode("utf-8")  # never overwritten
    versions = {i["value"] for d in docs for i in d["identifier"]}
    assert {"N-88812.v1", "N-88812.v2"} <= versions
    encounters = env.search("Encounter", identifier=f"{ENC_SYSTEM}|ps-2026-000123")
    assert len(encounters) == 1
    assert encounters[0]["period"]["end"].startswith("2026-11-20T14:55:00")


def test_amendment_after_version_one_was_synced(env: Env) -> None:
    env.import_("in-person-session.json")
    env.run("sync")
    assert len(env.search("DocumentReference", identifier=f"{NOTE_SYSTEM}|N-88812")) == 1
    env.import_("amendment.json")
    env.run("sync")
    _assert_amended(env)
    assert env.status()["synced"] == 2


def test_amendment_arriving_with_version_one_in_one_import(env: Env) -> None:
    env.import_("in-person-session.json", "amendment.json")
    env.run("sync")
    _assert_amended(env)
    assert env.status()["synced"] == 2


def test_map_prints_bundles_without_network(env: Env, tmp_path: Path) -> None:
    stopped = env.base_url
    shutil.rmtree(tmp_path / "ehr", ignore_errors=True)
    result = env.run("map", *[str(DATA / n) for n in FIRST_IMPORT])
    bundles = _json_documents(result.stdout)
    assert bundles and all(b["resourceType"] == "Bundle" for b in bundles)
    entries = [e for b in bundles for e in b["entry"]]
    subjects = {e["resource"]["subject"]["reference"] for e in entries
                if e["resource"]["resourceType"] == "Encounter"}
    assert all(s.startswith("Patient?identifier=") for s in subjects)
    assert "left out: peer-tool/ps-2026-000126: waiting_patient" in result.stderr
    assert "left out: peer-tool/ps-2026-000129: waiting_consent" in result.stderr
    assert "conditional references" in result.stderr
    # map neither stored nor sent anything
    assert env.status()["pending"] == 0
    assert stopped and env.all("Encounter") == []


def _json_documents(text: str) -> list[dict[str, Any]]:
    decoder = json.JSONDecoder()
    docs, i = [], 0
    while i < len(text):
        while i < len(text) and text[i].isspace():
            i += 1
        if i >= len(text):
            break
        doc, i = decoder.raw_decode(text, i)
        docs.append(doc)
    return docs


def test_refused_transaction_is_resent_one_record_per_bundle(env: Env, tmp_path: Path) -> None:
    """Two EHR Encounters already carry one record's identifier: the conditional PUT
    gets 412 (multiple matches), the transaction is refused as a whole, and the
    connector re-sends each record alone so only the bad one needs attention."""
    good = json.loads((DATA / "in-person-session.json").read_text("utf-8"))
    bad = json.loads((DATA / "in-person-session.json").read_text("utf-8"))
    bad["id"], bad["note"]["id"] = "ps-dup-1", "N-dup-1"
    patient = env.search("Patient", identifier=f"{MRN_SYSTEM}|MRN-55821")[0]["id"]
    for _ in range(2):
        resp = requests.post(f"{env.base_url}/Encounter", timeout=10, json={
            "resourceType": "Encounter", "status": "finished",
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                      "code": "AMB"},
            "identifier": [{"system": ENC_SYSTEM, "value": "ps-dup-1"}],
            "subject": {"reference": f"Patient/{patient}"},
        })
        assert resp.status_code == 201
    path = tmp_path / "two.jsonl"
    path.write_text(json.dumps(bad) + "\n" + json.dumps(good) + "\n", encoding="utf-8")
    env.run("import", "--source", SOURCE, str(path))
    result = env.run("sync", expect=1)
    counts = env.status()
    assert counts["synced"] == 1
    assert counts["needs_attention"] == 1
    assert "ps-dup-1" in result.stderr
    assert len(env.search("Encounter", identifier=f"{ENC_SYSTEM}|{good['id']}")) == 1
    assert env.search("DocumentReference", identifier=f"{NOTE_SYSTEM}|N-dup-1") == []
    # The admin sees the EHR's own words.
    from connector.config import load_config
    from connector.store import Store

    store = Store.from_url(load_config(env.home / "peersync.toml").database_url)
    try:
        [row] = store.jobs_overview(state="needs_attention")
    finally:
        store.close()
    assert row["record_id"] == "ps-dup-1"
    assert "412" in (row["reason"] or "")


def test_debug_logging_carries_no_phi(env: Env) -> None:
    """`peersync -vv sync` logs every request, without MRNs, identifiers' values or names."""
    import os
    import subprocess
    import sys

    env.import_(*FIRST_IMPORT)
    proc = subprocess.run(
        [sys.executable, "-c", "from connector.cli import main; main()", "-vv", "sync"],
        env={**os.environ, "PEERSYNC_HOME": str(env.home)}, capture_output=True, text=True,
        timeout=120, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    log = proc.stderr
    assert "peersync.fhir" in log and "/fhir/Patient" in log  # it did log the requests
    for phi in ("MRN-55821", "MRN-60210", "Dana", "Lopez", "Okafor", "housing application",
                "1988-04-12"):
        assert phi not in log, phi
