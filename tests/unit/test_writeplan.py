"""The write plan: presets, explicit [ehr] overrides, SMART scopes, the capability check,
and what the planner writes under each packaged preset."""

from __future__ import annotations

import base64
import dataclasses
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from connector.capability_check import check_capabilities
from connector.config import EhrConfig, parse_config
from connector.errors import ConfigError
from connector.records import EncounterRecord
from connector.store import LedgerEntry
from connector.sync import EmptyLedger, Planned, Refs, plan_record
from connector.writeplan import PRESETS, WritePlan, resolve_plan
from connector.writeplan.presets import PRESET_DIR, load_preset
from mappings import resources as _resources  # noqa: F401  (before mappings.notes: circular import)
from mappings.profile import Profile
from tests.conftest import DATA, example_dict, load_example
from tests.unit.test_sync_plan import FakeLedger

BASE = "https://ehr.example.org/fhir"
NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
EPIC_CS = json.loads((DATA / "capabilities" / "epic-r4-sandbox-2026-05.json").read_text("utf-8"))


def ehr(**keys: Any) -> EhrConfig:
    """[ehr] as read from a peersync.toml holding these keys."""
    return parse_config({"ehr": {"base_url": BASE, **keys}}, path=Path("peersync.toml"),
                        environ={}).ehr


def plan_of(preset: str, **keys: Any) -> WritePlan:
    return resolve_plan(ehr(preset=preset, **keys))


def cs_listing(*codes: str) -> dict[str, Any]:
    return {"resourceType": "CapabilityStatement", "fhirVersion": "4.0.1",
            "rest": [{"mode": "server", "interaction": [{"code": c} for c in codes]}]}


# -- presets and overrides ----------------------------------------------------------

@pytest.mark.parametrize(
    ("preset", "mode", "encounter", "provenance", "amendment", "find_by"),
    [
        ("generic", "transaction", "create", True, "replace", "identifier"),
        ("us-core-notes", "single", "contained", False, "replace", "identifier"),
        ("epic", "single", "ehr", False, "update", "marker"),
        ("oracle-health", "single", "ehr", False, "update", "marker"),
    ],
)
def test_each_packaged_preset_loads_and_resolves(
    preset: str, mode: str, encounter: str, provenance: bool, amendment: str, find_by: str
) -> None:
    assert preset in PRESETS and load_preset(preset).name == preset
    plan = plan_of(preset, organization_id="org-1")
    assert plan.preset.name == preset
    assert (plan.mode, plan.encounter, plan.provenance) == (mode, encounter, provenance)
    assert (plan.note.amendment, plan.note.find_by) == (amendment, find_by)
    assert plan.action("DocumentReference") == "write"


def test_explicit_keys_override_the_preset() -> None:
    generic = plan_of("generic")
    assert generic.conditional_create and generic.conditional_update
    plain = plan_of("generic", conditional=False)
    assert not plain.conditional_create and not plain.conditional_update
    owned = plan_of("generic", create_encounters=False)
    assert owned.action("Encounter") == "match" and owned.encounter == "ehr"
    assert "create_encounters" in owned.why["Encounter"]
    # Epic's preset matches Encounters; an explicit key says otherwise
    assert plan_of("epic", create_encounters=True).encounter == "create"
    assert plan_of("epic", mode="batch").mode == "batch"
    # a key left at its default but not written in the file does not override
    assert plan_of("epic").mode == "single"


@pytest.mark.parametrize(
    ("capability", "mode"),
    [
        (cs_listing("transaction", "batch"), "transaction"),
        (cs_listing("batch"), "batch"),
        (cs_listing("history-system"), "single"),
        (None, "single"),
    ],
)
def test_mode_auto_follows_the_capability_statement(
    capability: dict[str, Any] | None, mode: str
) -> None:
    plan = resolve_plan(ehr(mode="auto"), capability=capability)
    assert plan.mode == mode
    assert plan.why["mode"].startswith("mode = auto")


def test_epic_without_organization_id_does_not_write_organization() -> None:
    plan = plan_of("epic")
    assert plan.action("Organization") == "none"
    assert "organization_id" in plan.why["Organization"]
    assert plan_of("epic", organization_id="org-1").action("Organization") == "match"


def test_smart_scopes_come_from_the_plan() -> None:
    epic = plan_of("epic", organization_id="org-1").smart_scopes(create_patients=False).split()
    assert "system/DocumentReference.crus" in epic
    writable = [s for s in epic if set(s.rpartition(".")[2]) & set("cud")]
    assert writable == ["system/DocumentReference.crus"]
    assert not any("Provenance" in s or "Device" in s for s in epic)
    oracle = plan_of("oracle-health").smart_scopes(create_patients=False).split()
    assert all(s.endswith((".read", ".write")) for s in oracle)
    assert [s for s in oracle if s.endswith(".write")] == ["system/DocumentReference.write"]
    assert "system/Encounter.read" in oracle


# -- a bad preset file ---------------------------------------------------------------

GENERIC_TEXT = (PRESET_DIR / "generic.toml").read_text("utf-8")


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (lambda t: t.replace("[note]\n", "[note]\ncolour = \"blue\"\n"), "note.colour"),
        (lambda t: t.replace('mode = "transaction"', 'mode = "stream"'), "ehr.mode"),
        (lambda t: t.replace("max_content = 2", 'max_content = "2"'), "note.max_content"),
        (lambda t: t.split("[auth]")[0], "[auth]"),
    ],
)
def test_a_bad_preset_is_refused_naming_the_file_and_the_key(
    tmp_path: Path, change: Any, named: str
) -> None:
    path = tmp_path / "my-ehr.toml"
    path.write_text(change(GENERIC_TEXT), encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_preset("./my-ehr.toml", folder=tmp_path)
    assert str(path) in str(caught.value) and named in str(caught.value)
    config_path = tmp_path / "peersync.toml"
    with pytest.raises(ConfigError) as refused:
        parse_config({"ehr": {"base_url": BASE, "preset": "./my-ehr.toml"}}, path=config_path,
                     environ={})
    assert "ehr.preset" in str(refused.value) and named in str(refused.value)


# -- the capability check -----------------------------------------------------------

def test_the_epic_capability_statement_passes_epic_and_fails_generic(profile: Profile) -> None:
    epic = check_capabilities(EPIC_CS, plan_of("epic", organization_id="org-1"), profile,
                              auth_type="smart")
    assert epic.ok and not epic.warnings, epic.lines()
    generic = check_capabilities(EPIC_CS, plan_of("generic"), profile, auth_type="smart")
    assert not generic.ok and generic.exit_code == 1
    failed = {c.name: c.detail for c in generic.failed}
    assert "'transaction'" in failed["mode"]
    assert "no conditionalCreate on Practitioner" in failed["conditional"]
    assert "no conditionalUpdate on DocumentReference" in failed["conditional"]


# -- the planner under each preset --------------------------------------------------

REFS = Refs(patient="Patient/p1", practitioner="Practitioner/s1",
            organization="Organization/o1", device="Device/d1", encounter="Encounter/e1")


def _plan(record: EncounterRecord, profile: Profile, plan: WritePlan,
          ledger: Any = None) -> Planned:
    refs = REFS if plan.encounter == "ehr" else dataclasses.replace(REFS, encounter="")
    return plan_record(record, refs, key="k1", profile=profile, plan=plan,
                       ledger=ledger or EmptyLedger(), recorded=NOW, marker_key=b"marker-key")


def _text(attachment: dict[str, Any]) -> bytes:
    return base64.b64decode(attachment["data"])


def test_us_core_notes_sends_one_note_with_the_encounter_contained(profile: Profile) -> None:
    planned = _plan(load_example("in-person-session.json"), profile, plan_of("us-core-notes"))
    assert [(w.resource_type, w.action) for w in planned.writes] == [
        ("DocumentReference", "create")]
    doc = planned.writes[0].resource
    assert doc["context"]["encounter"][0]["reference"] == "#encounter"
    [contained] = doc["contained"]
    assert contained["resourceType"] == "Encounter" and contained["id"] == "encounter"
    assert planned.proof is planned.writes[0]


@pytest.mark.parametrize("preset", ["epic", "oracle-health"])
def test_marker_title_and_amendment_in_place(preset: str, profile: Profile) -> None:
    plan = plan_of(preset, organization_id="org-1")
    v1 = load_example("in-person-session.json")
    assert v1.note is not None
    first = _plan(v1, profile, plan)
    assert [w.resource_type for w in first.writes] == ["DocumentReference"]
    title = first.writes[0].resource["content"][0]["attachment"]["title"]
    assert title.startswith("Peer support note · ") and title.endswith(f" v{v1.note.version}")
    assert first.writes[0].resource["context"]["encounter"][0]["reference"] == "Encounter/e1"

    ledger = FakeLedger([LedgerEntry("DocumentReference", profile.note_version_system(v1.source),
                                     "N-88812.v1", "doc-1", "1", "create", "confirmed", 1)],
                        {1: v1})
    amended = _plan(load_example("amendment.json"), profile, plan, ledger)
    [write] = amended.writes
    assert (write.action, write.ehr_id) == ("amend", "doc-1")
    assert write.resource["docStatus"] == "amended" and write.resource["id"] == "doc-1"
    assert write.request(plan) == {"method": "PUT", "url": "DocumentReference/doc-1",
                                   "ifMatch": 'W/"1"'}
    assert write.resource["content"][0]["attachment"]["title"].endswith(" v2")


def test_part2_under_oracle_health_travels_inside_the_one_content(profile: Profile) -> None:
    record = load_example("part2-without-consent.json")
    assert record.part2 and record.note is not None
    planned = _plan(record, profile, plan_of("oracle-health"))
    doc = planned.writes[0].resource
    assert "security" not in (doc.get("meta") or {})
    [content] = doc["content"]
    text = _text(content["attachment"])
    assert text.startswith(record.note.text.encode("utf-8"))
    assert profile.part2_notice.strip() in text.decode("utf-8")
    assert planned.part2_form == "notice-in-content[0]"
    # a full server keeps the labels and a second content entry
    assert _plan(record, profile, plan_of("generic")).part2_form == "labels+content[1]"


def test_oracle_health_content_type_is_written_as_oracle_wants_it(profile: Profile) -> None:
    planned = _plan(load_example("in-person-session.json"), profile, plan_of("oracle-health"))
    attachment = planned.writes[0].resource["content"][0]["attachment"]
    assert attachment["contentType"] == "text/plain;charset=utf-8"


def test_a_no_show_under_epic_names_what_the_ehr_cannot_carry(profile: Profile) -> None:
    record = EncounterRecord.from_dict(
        "peer-tool", dict(example_dict("in-person-session.json"), status="no_show"))
    planned = _plan(record, profile, plan_of("epic", organization_id="org-1"))
    assert "encounter-status-no_show:ehr-owns-encounters" in planned.omitted
    assert not any(w.resource_type == "Encounter" for w in planned.writes)
    assert _plan(record, profile, plan_of("generic")).omitted == []
