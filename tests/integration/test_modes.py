"""EHR capability modes against the real FHIR server: one resource per source identifier,
in every mode, also when every record is sent a second time."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
import requests
from sqlalchemy import update

from connector.schema import jobs
from tests.integration.conftest import (
    ENC_SYSTEM,
    FIRST_IMPORT,
    MRN_SYSTEM,
    NOTE_VERSION_SYSTEM,
    Env,
)

pytestmark = pytest.mark.integration

# Synced from FIRST_IMPORT: 000123, 000124, 000125, 000127, 000128 (all with notes).
SYNCED_IDS = {"ps-2026-000123", "ps-2026-000124", "ps-2026-000125", "ps-2026-000127",
              "ps-2026-000128"}
NOTES = {"N-88812", "N-88813", "N-88814", "N-88815", "N-88816"}

MODES = {
    "transaction": {"mode": "transaction"},
    "batch": {"mode": "batch"},
    "single-unconditional": {"mode": "single", "conditional": False},
    "single-no-encounter-create": {"mode": "single", "conditional": False,
                                   "create_encounters": False},
    "batch-xhtml": {"mode": "batch", "note_content_type": "application/xhtml+xml"},
}


def _by_identifier(resources: list[dict[str, Any]], system: str) -> Counter[str]:
    return Counter(i["value"] for r in resources for i in r.get("identifier", [])
                   if i.get("system") == system)


def _resend_everything(env: Env) -> None:
    """Put every synced job back in the queue: as if each record were sent a second time."""
    store = env.store()
    try:
        with store.begin() as conn:
            conn.execute(update(jobs).where(jobs.c.state == "synced").values(state="pending"))
    finally:
        store.close()


def _seed_ehr_encounters(env: Env) -> dict[str, str]:
    """For the EHR-owns-encounters mode: the EHR already holds each session's Encounter."""
    from connector.intake import Accepted, iter_records
    from tests.integration.conftest import DATA

    made: dict[str, str] = {}
    for name in FIRST_IMPORT:
        for result in iter_records(DATA / name, source="seed"):
            if not isinstance(result, Accepted) or not result.record.participant.mrn:
                continue
            record = result.record
            patient = env.search("Patient", identifier=f"{MRN_SYSTEM}|{record.participant.mrn}")
            resp = requests.post(f"{env.base_url}/Encounter", timeout=10, json={
                "resourceType": "Encounter", "status": "finished",
                "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                          "code": "AMB"},
                "subject": {"reference": f"Patient/{patient[0]['id']}"},
                "period": {"start": record.start.isoformat(), "end": record.end.isoformat()},
            })
            assert resp.status_code == 201
            made[record.id] = resp.json()["id"]
    return made


@pytest.mark.parametrize("mode", list(MODES))
def test_each_mode_lands_each_resource_once(env: Env, mode: str) -> None:
    settings = MODES[mode]
    env.configure(**settings)
    owns_encounters = settings.get("create_encounters") is False
    ehr_encounters = _seed_ehr_encounters(env) if owns_encounters else {}

    env.import_(*FIRST_IMPORT)
    env.run("sync")
    counts = env.status()
    assert counts["synced"] == 5, counts

    for attempt in ("first", "second"):
        encounters = env.all("Encounter")
        docs = env.all("DocumentReference")
        if owns_encounters:
            # the EHR's own Encounters, untouched; none created by us
            assert len(encounters) == len(ehr_encounters)
            assert _by_identifier(encounters, ENC_SYSTEM) == Counter()
        else:
            assert _by_identifier(encounters, ENC_SYSTEM) == Counter(
                dict.fromkeys(SYNCED_IDS, 1)), attempt
            assert len(encounters) == 5
        assert _by_identifier(docs, NOTE_VERSION_SYSTEM) == Counter(
            {f"{n}.v1": 1 for n in NOTES}), attempt
        assert len(docs) == 5
        assert len(env.all("Provenance")) == 5, attempt  # one per change, none on a re-send
        staff = Counter(p["identifier"][0]["value"] for p in env.all("Practitioner"))
        assert staff == Counter({"S-17": 1, "S-22": 1, "S-31": 1})
        assert len(env.all("Organization")) == 1 and len(env.all("Device")) == 1
        for doc in docs:
            enc_ref = doc["context"]["encounter"][0]["reference"]
            assert not enc_ref.startswith("urn:"), "literal references only"
            if owns_encounters:
                assert enc_ref.split("/")[1] in ehr_encounters.values()
            if settings.get("note_content_type") == "application/xhtml+xml":
                assert doc["content"][0]["attachment"]["contentType"] == "application/xhtml+xml"
        versions = {r["id"]: r["meta"]["versionId"] for r in encounters + docs}
        if attempt == "first":
            first_versions = versions
            _resend_everything(env)
            env.run("sync")
            assert env.status()["synced"] == 5
        else:
            assert versions == first_versions  # a re-send of a synced version writes nothing


def test_no_ehr_encounter_in_the_window_waits(env: Env) -> None:
    env.configure(mode="single", conditional=False, create_encounters=False)
    env.import_("in-person-session.json")
    env.run("sync")
    assert env.status()["waiting_encounter"] == 1
    assert env.all("DocumentReference") == []
