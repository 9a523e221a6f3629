"""The planner sends the JSON the mapping built and validated, without dumping it through the
FHIR models again (issue 9: "validate once, dump cheaply"). That is only right while the
built JSON is exactly what the models would write: these tests hold the two equal for every
resource of every example record, under every preset, in every time zone form."""

from __future__ import annotations

import copy
import dataclasses
import json
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from fhir.resources.R4B.documentreference import DocumentReference
from fhir.resources.R4B.encounter import Encounter
from fhir.resources.R4B.provenance import Provenance

from connector.config import parse_config
from connector.records import EncounterRecord
from connector.sync import EmptyLedger, Refs, plan_record
from connector.writeplan import resolve_plan
from mappings import resources
from mappings.profile import default_profile_path, load_profile
from tests.conftest import DATA, EXAMPLES

MODELS: dict[str, Any] = {"Encounter": Encounter, "DocumentReference": DocumentReference,
                          "Provenance": Provenance}
PRESETS = ("generic", "us-core-notes", "epic", "oracle-health")
REFS = Refs(patient="Patient/p1", practitioner="Practitioner/s1",
            organization="Organization/o1", device="Device/d1", encounter="Encounter/e1")
PROFILE = load_profile(default_profile_path())


def example_records() -> list[EncounterRecord]:
    """Every example of the contract that parses, as given and moved to UTC ("Z") and to
    an offset with minutes, so every instant form the mapping writes is covered."""
    from connector.intake import iter_records

    records = []
    for name in EXAMPLES:
        for result in iter_records(DATA / name, source="peer-tool"):
            record = getattr(result, "record", None)
            if record is None:
                continue
            records.append(record)
            for zone in (UTC, timezone(timedelta(hours=5, minutes=30))):
                records.append(dataclasses.replace(
                    record, start=record.start.astimezone(zone), end=record.end.astimezone(zone)))
    return records


def plan_of(preset: str) -> Any:
    keys: dict[str, Any] = {"base_url": "https://ehr.example/fhir", "preset": preset}
    if preset == "epic":
        keys["organization_id"] = "o1"
    return resolve_plan(parse_config({"ehr": keys}, path=Path("peersync.toml"), environ={}).ehr)


@pytest.mark.parametrize("preset", PRESETS)
def test_every_planned_resource_is_what_its_model_would_write(preset: str) -> None:
    plan = plan_of(preset)
    records = example_records()
    assert len(records) >= 3 * len(EXAMPLES)
    checked = 0
    for i, record in enumerate(records):
        for recorded in (datetime(2026, 11, 23, 12, 0, tzinfo=UTC),
                         datetime(2026, 11, 23, 12, 0, tzinfo=timezone(timedelta(hours=-5)))):
            writes = plan_record(record, REFS, key=str(i), profile=PROFILE, plan=plan,
                                 ledger=EmptyLedger(), recorded=recorded,
                                 marker_key=b"k" * 32).writes
            for write in writes:
                sent = copy.deepcopy(write.resource)
                dumped = MODELS[write.resource_type].model_validate(sent).model_dump(mode="json")
                assert json.dumps(sent, sort_keys=True) == json.dumps(dumped, sort_keys=True), (
                    record.id, write.resource_type)
                checked += 1
    assert checked > len(records)


def test_a_utc_instant_is_written_as_z_as_the_models_write_it() -> None:
    when = datetime(2026, 11, 23, 12, 0, 5, tzinfo=UTC)
    assert resources._instant(when, "x") == "2026-11-23T12:00:05Z"
    offset = when.astimezone(timezone(timedelta(hours=-5)))
    assert resources._instant(offset, "x") == "2026-11-23T07:00:05-05:00"


def test_json_the_model_refuses_is_refused_by_name() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError) as caught:
        resources.validated(Provenance, {"resourceType": "Provenance", "target": "not-a-list",
                                         "recorded": "2026-11-23T12:00:00Z", "agent": []})
    assert "target" in str(caught.value)


def test_an_encounter_contained_in_a_note_is_still_validated_with_the_note(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """us-core-notes contains the Encounter in the note: it is not validated on its own,
    but the note's validation covers it, and names where it fails."""
    from pydantic import ValidationError

    record = example_records()[0]
    monkeypatch.setitem(resources.ENCOUNTER_STATUS, record.status, ["not", "a", "code"])
    with pytest.raises(ValidationError) as caught:
        plan_record(record, REFS, key="k", profile=PROFILE, plan=plan_of("us-core-notes"),
                    ledger=EmptyLedger(), recorded=datetime(2026, 11, 23, tzinfo=UTC),
                    marker_key=b"k" * 32)
    assert any(err["loc"][:2] == ("contained", 0) for err in caught.value.errors())
