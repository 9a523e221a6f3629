"""plan_record(): which writes bring the EHR up to a record version, given the ledger."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from connector.config import parse_config
from connector.records import EncounterRecord
from connector.store import LedgerEntry
from connector.sync import EmptyLedger, Refs, bundle_for, plan_record
from connector.writeplan import WritePlan, resolve_plan
from mappings import resources as _resources  # noqa: F401  (before mappings.notes: circular import)
from tests.conftest import example_dict, load_example

REFS = Refs(patient="Patient/p1", practitioner="Practitioner/s1",
            organization="Organization/o1", device="Device/d1")
NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
# a full FHIR server: transactions, conditional create/update, Encounters and Provenance written
GENERIC = resolve_plan(parse_config(
    {"ehr": {"base_url": "https://ehr.example/fhir"}}, path=Path("peersync.toml"), environ={}
).ehr)
PLAIN = dataclasses.replace(GENERIC, conditional_create=False, conditional_update=False)


class FakeLedger:
    """The ledger after some writes, as the store would answer."""

    def __init__(self, entries: list[LedgerEntry], records: dict[int, EncounterRecord]):
        self.entries = entries
        self.records = records

    def ledger_latest(self, resource_type: str, system: str, value: str) -> LedgerEntry | None:
        found = [e for e in self.entries if (e.resource_type, e.identifier_system,
                                             e.identifier_value) == (resource_type, system, value)]
        return found[-1] if found else None

    def ledger_for_record(self, source: str, record_id: str,
                          resource_type: str | None = None) -> list[LedgerEntry]:
        newest: dict[tuple[str, str, str], LedgerEntry] = {}  # as the store: newest per identifier
        for e in self.entries:
            if resource_type in (None, e.resource_type):
                newest[(e.resource_type, e.identifier_system, e.identifier_value)] = e
        return list(newest.values())

    def load_records(self, ids: Sequence[int]) -> dict[int, EncounterRecord]:
        return {i: self.records[i] for i in ids}


def _plan(record: EncounterRecord, profile, ledger=None,  # type: ignore[no-untyped-def]
          plan: WritePlan = GENERIC):
    planned = plan_record(record, REFS, key="k1", profile=profile, plan=plan,
                          ledger=ledger or EmptyLedger(), recorded=NOW)
    return planned.writes, planned.proof


def _sent(profile, record: EncounterRecord) -> FakeLedger:  # type: ignore[no-untyped-def]
    """A ledger holding version 1 of the in-person example, as synced."""
    src = record.source
    return FakeLedger(
        [
            LedgerEntry("Encounter", profile.encounter_system(src), record.id, "enc-1", "1",
                        "create", "confirmed", 1),
            LedgerEntry("DocumentReference", profile.note_version_system(src), "N-88812.v1",
                        "doc-1", "1", "create", "confirmed", 1),
        ],
        {1: record},
    )


def test_new_record_creates_encounter_note_and_one_provenance(profile) -> None:  # type: ignore[no-untyped-def]
    writes, proof = _plan(load_example("in-person-session.json"), profile)
    assert [(w.resource_type, w.action) for w in writes] == [
        ("Encounter", "create"), ("DocumentReference", "create"), ("Provenance", "provenance")]
    assert proof is writes[1]  # the new note version proves the write was applied
    bundle = bundle_for(writes, GENERIC)
    requests_ = [e["request"] for e in bundle["entry"]]
    assert requests_[0]["method"] == "PUT"
    assert requests_[0]["url"].startswith("Encounter?identifier=https://")
    assert requests_[1]["url"].endswith("|N-88812.v1")
    assert requests_[2] == {"method": "POST", "url": "Provenance"}
    doc = writes[1].resource
    assert doc["context"]["encounter"][0]["reference"] == writes[0].full_url
    prov = writes[2].resource
    assert [t["reference"] for t in prov["target"]] == [writes[0].full_url, writes[1].full_url]
    assert prov["recorded"].startswith("2026-11-23T12:00:00")


def test_without_conditional_ops_a_new_resource_is_a_plain_create(profile) -> None:  # type: ignore[no-untyped-def]
    writes, _ = _plan(load_example("in-person-session.json"), profile, plan=PLAIN)
    bundle = bundle_for(writes, PLAIN)
    assert [e["request"] for e in bundle["entry"][:2]] == [
        {"method": "POST", "url": "Encounter"}, {"method": "POST", "url": "DocumentReference"}]


def test_amendment_supersedes_the_sent_version_and_replaces_it(profile) -> None:  # type: ignore[no-untyped-def]
    v1 = load_example("in-person-session.json")
    writes, proof = _plan(load_example("amendment.json"), profile, _sent(profile, v1))
    kinds = [(w.resource_type, w.action, w.ehr_id) for w in writes]
    assert kinds == [
        ("Encounter", "update", "enc-1"),
        ("DocumentReference", "create", None),
        ("DocumentReference", "supersede", "doc-1"),
        ("Provenance", "provenance", None),
    ]
    new, old = writes[1].resource, writes[2].resource
    assert new["relatesTo"] == [{"code": "replaces",
                                 "target": {"reference": "DocumentReference/doc-1"}}]
    assert new["identifier"][1]["value"] == "N-88812.v2"
    assert old["status"] == "superseded" and old["id"] == "doc-1"
    # the old note's content is the old note, byte for byte
    assert old["content"] == _plan(v1, profile)[0][1].resource["content"]
    bundle = bundle_for(writes, GENERIC)
    # an update by id carries the version the ledger last saw (optimistic concurrency)
    assert bundle["entry"][0]["request"] == {"method": "PUT", "url": "Encounter/enc-1",
                                             "ifMatch": 'W/"1"'}
    assert bundle["entry"][2]["request"]["ifMatch"] == 'W/"1"'  # the superseded note
    assert "fullUrl" not in bundle["entry"][0]
    assert proof is writes[1]


def test_resend_of_the_same_note_version_updates_it_in_place(profile) -> None:  # type: ignore[no-untyped-def]
    v1 = load_example("in-person-session.json")
    changed = dict(example_dict("in-person-session.json"), status="cancelled")
    record = EncounterRecord.from_dict("peer-tool", changed)
    writes, proof = _plan(record, profile, _sent(profile, v1))
    assert [(w.resource_type, w.action) for w in writes] == [
        ("Encounter", "update"), ("DocumentReference", "update"), ("Provenance", "provenance")]
    assert writes[0].resource["status"] == "cancelled"
    assert proof is writes[0]


def test_retraction_marks_encounter_and_standing_notes_entered_in_error(profile) -> None:  # type: ignore[no-untyped-def]
    v1 = load_example("in-person-session.json")
    retract = EncounterRecord.from_dict(
        "peer-tool", dict(example_dict("in-person-session.json"), status="entered_in_error"))
    writes, _ = _plan(retract, profile, _sent(profile, v1))
    assert [(w.resource_type, w.action, w.ehr_id) for w in writes] == [
        ("Encounter", "retract", "enc-1"),
        ("DocumentReference", "retract", "doc-1"),
        ("Provenance", "provenance", None),
    ]
    assert writes[0].resource["status"] == "entered-in-error"
    assert writes[1].resource["status"] == "entered-in-error"
    assert writes[2].resource["activity"]["coding"][0]["code"] == "NULLIFY"


def test_a_superseded_note_is_not_superseded_again(profile) -> None:  # type: ignore[no-untyped-def]
    v1 = load_example("in-person-session.json")
    ledger = _sent(profile, v1)
    ledger.entries.append(dataclasses.replace(ledger.entries[1], action="supersede"))
    writes, _ = _plan(load_example("amendment.json"), profile, ledger)
    assert [w.action for w in writes] == ["update", "create", "provenance"]
    assert "relatesTo" not in writes[1].resource


def test_two_sources_with_the_same_id_get_different_identifiers(profile) -> None:  # type: ignore[no-untyped-def]
    a, _ = _plan(load_example("in-person-session.json", source="tool-a"), profile)
    b, _ = _plan(load_example("in-person-session.json", source="tool-b"), profile)
    assert a[0].system != b[0].system and a[0].value == b[0].value
    assert a[0].full_url != b[0].full_url
