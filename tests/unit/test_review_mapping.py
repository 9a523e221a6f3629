"""What a co-signed note becomes (issue 10): the write plan decides, per preset, whether the
supervisor goes as DocumentReference.authenticator; a Provenance (where the EHR takes one)
names the supervisor as its ``verifier`` agent."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from connector.config import parse_config
from connector.sync import EmptyLedger, Refs, plan_record
from connector.writeplan import PRESETS, resolve_plan
from mappings import resources as _resources  # noqa: F401  (before mappings.notes)
from tests.conftest import load_example

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
REFS = Refs(patient="Patient/p1", practitioner="Practitioner/s1",
            organization="Organization/o1", device="Device/d1", encounter="Encounter/e1",
            authenticator="Practitioner/sup1")
PARTICIPANT_TYPE = "http://terminology.hl7.org/CodeSystem/provenance-participant-type"
KEEPS = {"generic": True, "us-core-notes": True, "oracle-health": True, "epic": False}


def _plan(preset: str) -> Any:
    return resolve_plan(parse_config(
        {"ehr": {"base_url": "https://ehr.example/fhir", "preset": preset,
                 "organization_id": "o1"}}, path=Path("peersync.toml"), environ={}).ehr)


@pytest.mark.parametrize("preset", PRESETS)
def test_the_preset_decides_whether_the_note_names_its_authenticator(preset: str,
                                                                     profile: Any) -> None:
    plan = _plan(preset)
    assert plan.note.keeps_authenticator is KEEPS[preset]
    writes = plan_record(load_example("in-person-session.json"), REFS, key="k", profile=profile,
                         plan=plan, ledger=EmptyLedger(), recorded=NOW).writes
    [doc] = [w.resource for w in writes if w.resource_type == "DocumentReference"]
    if KEEPS[preset]:
        assert doc["authenticator"] == {"reference": "Practitioner/sup1"}
    else:
        assert "authenticator" not in doc
    provenance = [w.resource for w in writes if w.resource_type == "Provenance"]
    assert bool(provenance) is plan.provenance
    for resource in provenance:
        verifiers = [a for a in resource["agent"]
                     if a["type"]["coding"][0]["system"] == PARTICIPANT_TYPE
                     and a["type"]["coding"][0]["code"] == "verifier"]
        assert [a["who"] for a in verifiers] == [{"reference": "Practitioner/sup1"}]


def test_a_note_without_a_co_signature_has_no_authenticator_nor_verifier(profile: Any) -> None:
    refs = Refs(patient="Patient/p1", practitioner="Practitioner/s1",
                organization="Organization/o1", device="Device/d1")
    writes = plan_record(load_example("in-person-session.json"), refs, key="k", profile=profile,
                         plan=_plan("generic"), ledger=EmptyLedger(), recorded=NOW).writes
    [doc] = [w.resource for w in writes if w.resource_type == "DocumentReference"]
    assert "authenticator" not in doc
    [provenance] = [w.resource for w in writes if w.resource_type == "Provenance"]
    assert [a["type"]["coding"][0]["code"] for a in provenance["agent"]] == [
        "author", "transmitter"]


def test_a_superseded_version_keeps_its_own_co_signer(profile: Any) -> None:
    from tests.unit.test_sync_plan import _sent

    first = load_example("in-person-session.json")
    amended = load_example("amendment.json")
    refs = Refs(patient="Patient/p1", practitioner="Practitioner/s1",
                organization="Organization/o1", device="Device/d1",
                authenticator="Practitioner/supB",
                earlier_authenticators={1: "Practitioner/supA"})
    writes = plan_record(amended, refs, key="k", profile=profile, plan=_plan("generic"),
                         ledger=_sent(profile, first), recorded=NOW).writes
    docs = {w.action: w.resource for w in writes if w.resource_type == "DocumentReference"}
    assert docs["create"]["authenticator"] == {"reference": "Practitioner/supB"}
    assert docs["supersede"]["status"] == "superseded"
    assert docs["supersede"]["authenticator"] == {"reference": "Practitioner/supA"}
