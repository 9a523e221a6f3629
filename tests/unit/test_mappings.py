"""Record -> FHIR mapping: golden round trips and every US Core 6.1.0 element we rely on.

fhir.resources accepts any string as a code (``status: "bogus"`` validates),
and no US Core validator can be installed here, so each required and
must-support element and each code value is asserted explicitly.
"""

from __future__ import annotations

import ast
import base64
import csv
import dataclasses
import inspect
import json
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from fhir.resources.R4B.device import Device
from fhir.resources.R4B.documentreference import DocumentReference
from fhir.resources.R4B.encounter import Encounter
from fhir.resources.R4B.organization import Organization
from fhir.resources.R4B.patient import Patient
from fhir.resources.R4B.practitioner import Practitioner
from fhir.resources.R4B.provenance import Provenance

from connector.errors import RecordInvalid
from connector.records import EncounterRecord
from mappings import notes
from mappings import resources as res
from mappings.profile import Profile, default_profile_path, load_profile

DATA = Path(__file__).resolve().parents[1] / "data"
EXAMPLE_PROFILE = (
    Path(__file__).resolve().parents[2] / "mappings" / "profiles" / "example-agency.toml"
)
SOURCE = "tool-a"

PATIENT = "Patient/pat-1"
PRACTITIONER = "Practitioner/pr-1"
ORGANIZATION = "Organization/org-1"
DEVICE = "Device/dev-1"
ENCOUNTER = "urn:uuid:6f1c1e3a-0d4b-4c8e-9a51-2f3d2b7c9e10"
OLD_NOTE = "DocumentReference/doc-1"
RECORDED = datetime(2026, 11, 20, 16, 12, 30, tzinfo=timezone(timedelta(hours=-5)))

XHTML_NS = "{http://www.w3.org/1999/xhtml}"
INSTANT = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$")

PART2_LABELS = [
    {
        "system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality",
        "code": "R",
        "display": "restricted",
    },
    {
        "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
        "code": "ETH",
        "display": "substance abuse information sensitivity",
    },
    {
        "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
        "code": "42CFRPart2",
        "display": "42 CFR Part2",
    },
]


# --- the contract examples -------------------------------------------------


def _csv_records(path: Path) -> Iterator[dict[str, Any]]:
    """export.csv as contract objects (the intake's CSV rules, as far as this file needs)."""
    with path.open(encoding="utf-8-sig", newline="") as fh:
        for row in csv.DictReader(fh):
            obj: dict[str, Any] = {}
            for column, cell in row.items():
                if cell == "":
                    continue
                value: Any = cell
                if column == "goals":
                    value = [goal.strip() for goal in cell.split(";")]
                elif column == "note.documentation_minutes":
                    value = json.loads(cell)
                *parents, leaf = column.split(".")
                target = obj
                for part in parents:
                    target = target.setdefault(part, {})
                target[leaf] = value
            yield obj


def _example_objects() -> list[tuple[str, dict[str, Any]]]:
    found: list[tuple[str, dict[str, Any]]] = []
    for path in sorted(DATA.iterdir()):
        if path.suffix == ".json":
            found.append((path.stem, json.loads(path.read_text(encoding="utf-8"))))
        elif path.suffix == ".jsonl":
            for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if line.strip():
                    found.append((f"{path.stem}-{n}", json.loads(line)))
        elif path.suffix == ".csv":
            for n, obj in enumerate(_csv_records(path), 1):
                found.append((f"{path.stem}-{n}", obj))
    return found


EXAMPLES = _example_objects()
EXAMPLE_IDS = [name for name, _ in EXAMPLES]


def _record(name: str, source: str = SOURCE) -> EncounterRecord:
    obj = dict(EXAMPLES)[name]
    return EncounterRecord.from_dict(source, obj)


def _with(record: EncounterRecord, **changes: Any) -> EncounterRecord:
    return dataclasses.replace(record, **changes)


def _with_note(record: EncounterRecord, **changes: Any) -> EncounterRecord:
    assert record.note is not None
    return dataclasses.replace(record, note=dataclasses.replace(record.note, **changes))


def _with_service(record: EncounterRecord, **changes: Any) -> EncounterRecord:
    return dataclasses.replace(record, service=dataclasses.replace(record.service, **changes))


@pytest.fixture(scope="module")
def profile() -> Profile:
    return load_profile(default_profile_path())


@pytest.fixture(scope="module")
def example_profile() -> Profile:
    return load_profile(EXAMPLE_PROFILE)


@pytest.fixture
def session() -> EncounterRecord:
    return _record("in-person-session")


def _encounter(record: EncounterRecord, profile: Profile, **kw: Any) -> dict[str, Any]:
    kw.setdefault("organization_ref", ORGANIZATION)
    model = res.map_encounter(
        record, profile, patient_ref=PATIENT, practitioner_ref=PRACTITIONER, **kw
    )
    return json.loads(model.model_dump_json())


def _docref(record: EncounterRecord, profile: Profile, **kw: Any) -> dict[str, Any]:
    kw.setdefault("encounter_ref", ENCOUNTER)
    model = notes.map_document_reference(
        record, profile, patient_ref=PATIENT, practitioner_ref=PRACTITIONER, **kw
    )
    return json.loads(model.model_dump_json())


def _provenance(**kw: Any) -> dict[str, Any]:
    args: dict[str, Any] = {
        "targets": [ENCOUNTER, "urn:uuid:doc"],
        "recorded": RECORDED,
        "practitioner_ref": PRACTITIONER,
        "device_ref": DEVICE,
        "organization_ref": ORGANIZATION,
    }
    args.update(kw)
    return json.loads(res.map_provenance(**args).model_dump_json())


def _decoded(attachment: dict[str, Any]) -> bytes:
    return base64.b64decode(attachment["data"], validate=True)


def _keys(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield key
            yield from _keys(value)
    elif isinstance(node, list):
        for item in node:
            yield from _keys(item)


# --- golden: build, dump, validate again, compare --------------------------


def _builders(profile: Profile) -> dict[str, tuple[Any, Callable[[EncounterRecord], Any]]]:
    return {
        "Encounter": (
            Encounter,
            lambda r: res.map_encounter(
                r,
                profile,
                patient_ref=PATIENT,
                practitioner_ref=PRACTITIONER,
                organization_ref=ORGANIZATION,
            ),
        ),
        "DocumentReference": (
            DocumentReference,
            lambda r: notes.map_document_reference(
                r,
                profile,
                patient_ref=PATIENT,
                practitioner_ref=PRACTITIONER,
                encounter_ref=ENCOUNTER,
                organization_ref=ORGANIZATION,
            ),
        ),
        "DocumentReference-xhtml": (
            DocumentReference,
            lambda r: notes.map_document_reference(
                r,
                profile,
                patient_ref=PATIENT,
                practitioner_ref=PRACTITIONER,
                encounter_ref=ENCOUNTER,
                note_format=res.NOTE_XHTML,
            ),
        ),
        "Practitioner": (Practitioner, lambda r: res.map_practitioner(r.specialist, profile)),
        "Patient": (Patient, lambda r: res.map_patient(r, profile)),
        "Provenance": (
            Provenance,
            lambda r: res.map_provenance(
                targets=[ENCOUNTER],
                recorded=RECORDED,
                practitioner_ref=PRACTITIONER,
                device_ref=DEVICE,
                organization_ref=ORGANIZATION,
                part2=r.part2,
                activity="CREATE",
            ),
        ),
    }


KINDS = [
    "Encounter",
    "DocumentReference",
    "DocumentReference-xhtml",
    "Practitioner",
    "Patient",
    "Provenance",
]
GOLDEN_CASES = [
    (name, kind)
    for name, obj in EXAMPLES
    for kind in KINDS
    if "note" in obj or not kind.startswith("DocumentReference")
]


@pytest.mark.parametrize(("name", "kind"), GOLDEN_CASES)
def test_golden_round_trip(profile: Profile, name: str, kind: str) -> None:
    record = _record(name)
    model_class, build = _builders(profile)[kind]
    model = build(record)
    assert isinstance(model, model_class)
    dumped = model.model_dump_json()
    again = model_class.model_validate_json(dumped)
    assert again == model
    assert again.model_dump_json() == dumped
    assert json.loads(dumped)["resourceType"] == model_class.__name__


def test_every_contract_example_was_found() -> None:
    assert len(EXAMPLES) == 8
    assert {"in-person-session", "amendment", "part2-without-consent"} <= set(EXAMPLE_IDS)


def test_golden_encounter_in_person_session(profile: Profile, session: EncounterRecord) -> None:
    assert _encounter(session, profile) == {
        "resourceType": "Encounter",
        "identifier": [
            {
                "system": "https://riverside-peer.example/fhir/sid/peersync/tool-a/encounter",
                "value": "ps-2026-000123",
            }
        ],
        "status": "finished",
        "class": {
            "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
            "code": "AMB",
            "display": "ambulatory",
        },
        "type": [
            {
                "coding": [
                    {
                        "system": "http://www.cms.gov/Medicare/Coding/HCPCSReleaseCodeSets",
                        "code": "H0038",
                        "display": "Self-help/peer services, per 15 minutes",
                    }
                ],
                "text": "Self-help/peer services, per 15 minutes",
            }
        ],
        "subject": {"reference": "Patient/pat-1"},
        "participant": [
            {
                "type": [
                    {
                        "coding": [
                            {
                                "system": (
                                    "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
                                ),
                                "code": "PPRF",
                                "display": "primary performer",
                            }
                        ]
                    }
                ],
                "period": {
                    "start": "2026-11-20T14:00:00-05:00",
                    "end": "2026-11-20T14:50:00-05:00",
                },
                "individual": {"reference": "Practitioner/pr-1"},
            }
        ],
        "period": {"start": "2026-11-20T14:00:00-05:00", "end": "2026-11-20T14:50:00-05:00"},
        "length": {
            "value": 50,
            "unit": "min",
            "system": "http://unitsofmeasure.org",
            "code": "min",
        },
        "reasonCode": [{"text": "housing"}, {"text": "wellness"}],
        "serviceProvider": {"reference": "Organization/org-1"},
    }


def test_golden_document_reference_in_person_session(
    profile: Profile, session: EncounterRecord
) -> None:
    assert session.note is not None
    assert _docref(session, profile, organization_ref=ORGANIZATION) == {
        "resourceType": "DocumentReference",
        "identifier": [
            {
                "system": "https://riverside-peer.example/fhir/sid/peersync/tool-a/note",
                "value": "N-88812",
            },
            {
                "system": "https://riverside-peer.example/fhir/sid/peersync/tool-a/note-version",
                "value": "N-88812.v1",
            },
        ],
        "status": "current",
        "docStatus": "final",
        "type": {
            "coding": [
                {"system": "http://loinc.org", "code": "11506-3", "display": "Progress note"}
            ],
            "text": "Progress note",
        },
        "category": [
            {
                "coding": [
                    {
                        "system": (
                            "http://hl7.org/fhir/us/core/CodeSystem/"
                            "us-core-documentreference-category"
                        ),
                        "code": "clinical-note",
                        "display": "Clinical Note",
                    }
                ]
            }
        ],
        "subject": {"reference": "Patient/pat-1"},
        "date": "2026-11-20T15:05:00-05:00",
        "author": [{"reference": "Practitioner/pr-1"}],
        "custodian": {"reference": "Organization/org-1"},
        "content": [
            {
                "attachment": {
                    "contentType": "text/plain; charset=utf-8",
                    "data": base64.b64encode(session.note.text.encode("utf-8")).decode(),
                    "title": "Peer support progress note",
                },
                "format": {
                    "system": "urn:oid:1.3.6.1.4.1.19376.1.2.3",
                    "code": "urn:ihe:iti:xds:2017:mimeTypeSufficient",
                    "display": "mimeType Sufficient",
                },
            }
        ],
        "context": {
            "encounter": [{"reference": ENCOUNTER}],
            "period": {
                "start": "2026-11-20T14:00:00-05:00",
                "end": "2026-11-20T14:50:00-05:00",
            },
        },
    }


# --- identifiers -----------------------------------------------------------


def test_identifier_helpers(profile: Profile) -> None:
    record = _record("amendment")
    base = "https://riverside-peer.example/fhir/sid/peersync/tool-a"
    assert res.encounter_identifier(record, profile) == (f"{base}/encounter", "ps-2026-000123")
    assert res.note_identifier(record, profile) == (f"{base}/note", "N-88812")
    assert res.note_version_identifier(record, profile) == (f"{base}/note-version", "N-88812.v2")
    assert res.participant_identifier(record, profile) == (f"{base}/participant", "P-1001")
    assert res.staff_identifier(record.specialist, profile) == (
        "https://riverside-peer.example/fhir/sid/staff",
        "S-17",
    )
    assert res.mrn_identifier("MRN-55821", profile) == (
        "urn:oid:2.16.840.1.113883.3.7418.1",
        "MRN-55821",
    )
    key = res.encounter_identifier(record, profile)
    assert key.system == f"{base}/encounter" and key.value == "ps-2026-000123"
    assert key.as_fhir() == {"system": f"{base}/encounter", "value": "ps-2026-000123"}
    assert key.token == f"{base}/encounter|ps-2026-000123"


def test_note_identifiers_need_a_note(profile: Profile) -> None:
    no_note = _record("batch-3")
    with pytest.raises(ValueError):
        res.note_identifier(no_note, profile)
    with pytest.raises(ValueError):
        res.note_version_identifier(no_note, profile)


@pytest.mark.parametrize(
    ("system", "value", "token"),
    [
        ("https://a.example/sid", "ps-1", "https://a.example/sid|ps-1"),
        ("urn:oid:1.2.3", "a|b", "urn:oid:1.2.3|a\\|b"),
        ("https://a.example/sid", "a,b", "https://a.example/sid|a\\,b"),
        ("https://a.example/sid", "a$b", "https://a.example/sid|a\\$b"),
        ("https://a.example/sid", "a\\b", "https://a.example/sid|a\\\\b"),
        ("https://a.example/s|x", "\\|,$", "https://a.example/s\\|x|\\\\\\|\\,\\$"),
    ],
)
def test_search_token_escapes_each_part(system: str, value: str, token: str) -> None:
    assert res.search_token(system, value) == token


# --- Encounter -------------------------------------------------------------


def test_encounter_required_elements(profile: Profile, session: EncounterRecord) -> None:
    enc = _encounter(session, profile)
    for element in ("identifier", "status", "class", "type", "subject"):  # US Core 1..1 / 1..*
        assert enc[element]
    ident = enc["identifier"][0]
    assert ident == {"system": profile.encounter_system(SOURCE), "value": session.id}
    assert enc["subject"] == {"reference": PATIENT}
    [participant] = enc["participant"]
    assert participant["individual"] == {"reference": PRACTITIONER}
    assert participant["type"][0]["coding"] == [
        {
            "system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
            "code": "PPRF",
            "display": "primary performer",
        }
    ]
    assert participant["period"] == enc["period"]
    assert enc["serviceProvider"] == {"reference": ORGANIZATION}


def test_two_sources_same_id_get_different_identifiers(profile: Profile) -> None:
    a = _encounter(_record("in-person-session", "tool-a"), profile)["identifier"][0]
    b = _encounter(_record("in-person-session", "tool-b"), profile)["identifier"][0]
    assert a["value"] == b["value"] == "ps-2026-000123"
    assert a["system"] != b["system"]
    assert "/tool-a/" in a["system"] and "/tool-b/" in b["system"]
    note_a = _docref(_record("in-person-session", "tool-a"), profile)["identifier"]
    note_b = _docref(_record("in-person-session", "tool-b"), profile)["identifier"]
    assert [i["value"] for i in note_a] == [i["value"] for i in note_b]
    assert {i["system"] for i in note_a}.isdisjoint(i["system"] for i in note_b)


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        ("completed", "finished"),
        ("cancelled", "cancelled"),
        ("no_show", "cancelled"),
        ("entered_in_error", "entered-in-error"),
    ],
)
def test_encounter_status_table(
    profile: Profile, session: EncounterRecord, status: str, expected: str
) -> None:
    assert _encounter(_with(session, status=status), profile)["status"] == expected


def test_no_show_example_is_a_cancelled_encounter(profile: Profile) -> None:
    enc = _encounter(_record("batch-3"), profile)
    assert enc["status"] == "cancelled"
    assert enc["length"]["value"] == 0


CLASS_DISPLAYS = {"VR": "virtual", "HH": "home health", "AMB": "ambulatory"}
SETTINGS = [None, "office", "community", "home", "hospital", "residential", "justice", "other"]


@pytest.mark.parametrize("setting", SETTINGS)
@pytest.mark.parametrize("modality", ["in_person", "video", "phone"])
def test_encounter_class_table(
    profile: Profile, session: EncounterRecord, modality: str, setting: str | None
) -> None:
    # The one rule: video or phone -> VR; else setting home -> HH; else AMB.
    if modality in ("video", "phone"):
        expected = "VR"
    elif setting == "home":
        expected = "HH"
    else:
        expected = "AMB"
    record = _with_service(session, modality=modality, setting=setting)
    assert _encounter(record, profile)["class"] == {
        "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
        "code": expected,
        "display": CLASS_DISPLAYS[expected],
    }


@pytest.mark.parametrize(
    ("name", "expected"),
    [("in-person-session", "AMB"), ("batch-1", "VR"), ("batch-2", "AMB"), ("export-1", "VR")],
)
def test_encounter_class_of_examples(profile: Profile, name: str, expected: str) -> None:
    assert _encounter(_record(name), profile)["class"]["code"] == expected


def test_encounter_type_is_hcpcs(profile: Profile) -> None:
    hcpcs = "http://www.cms.gov/Medicare/Coding/HCPCSReleaseCodeSets"
    no_code = _record("batch-1")  # service.code absent: the profile's default
    assert no_code.service.code is None
    [service_type] = _encounter(no_code, profile)["type"]
    assert service_type["coding"] == [
        {"system": hcpcs, "code": "H0038", "display": "Self-help/peer services, per 15 minutes"}
    ]
    other = dataclasses.replace(profile, service_code="H2015")
    [service_type] = _encounter(no_code, other)["type"]
    assert service_type == {"coding": [{"system": hcpcs, "code": "H2015"}], "text": "HCPCS H2015"}
    explicit = _with_service(no_code, code="H0039")
    [service_type] = _encounter(explicit, other)["type"]
    assert service_type["coding"][0]["code"] == "H0039"


def test_encounter_period_keeps_offsets_and_length(profile: Profile) -> None:
    enc = _encounter(_record("export-1"), profile)
    assert enc["period"] == {
        "start": "2026-11-22T13:00:00-06:00",
        "end": "2026-11-22T13:40:00-06:00",
    }
    assert enc["length"] == {
        "value": 40,
        "unit": "min",
        "system": "http://unitsofmeasure.org",
        "code": "min",
    }


def test_encounter_reason_codes_are_goal_texts(profile: Profile) -> None:
    assert _encounter(_record("export-1"), profile)["reasonCode"] == [
        {"text": "employment"},
        {"text": "wellness"},
    ]
    assert "reasonCode" not in _encounter(_record("batch-3"), profile)


def test_encounter_without_organization_has_no_service_provider(
    profile: Profile, session: EncounterRecord
) -> None:
    assert "serviceProvider" not in _encounter(session, profile, organization_ref=None)


def test_local_only_fields_are_never_sent(profile: Profile) -> None:
    record = _record("batch-2")  # setting office, group_size 6, consent C-3301
    assert record.service.group_size == 6 and record.consent is not None
    for resource in (_encounter(record, profile), _docref(record, profile)):
        keys = set(_keys(resource))
        assert not keys & {"setting", "group_size", "groupSize", "consent"}
        dumped = json.dumps(resource)
        assert "C-3301" not in dumped
        assert "office" not in dumped
        assert "consent" not in dumped.lower()


def test_part2_encounter_carries_security_labels(profile: Profile) -> None:
    assert _encounter(_record("batch-2"), profile)["meta"] == {"security": PART2_LABELS}
    assert "meta" not in _encounter(_record("batch-1"), profile)


def test_part2_labels_helper() -> None:
    labels = res.part2_security_labels()
    assert [label.model_dump(mode="json") for label in labels] == PART2_LABELS


# --- DocumentReference -----------------------------------------------------


def test_docref_required_and_must_support(profile: Profile, session: EncounterRecord) -> None:
    doc = _docref(session, profile, organization_ref=ORGANIZATION)
    for element in ("status", "type", "category", "subject", "content"):  # US Core 1..
        assert doc[element]
    assert doc["status"] == "current"
    assert doc["docStatus"] == "final"
    assert doc["subject"] == {"reference": PATIENT}
    assert doc["author"] == [{"reference": PRACTITIONER}]
    assert doc["custodian"] == {"reference": ORGANIZATION}
    assert doc["category"] == [
        {
            "coding": [
                {
                    "system": (
                        "http://hl7.org/fhir/us/core/CodeSystem/us-core-documentreference-category"
                    ),
                    "code": "clinical-note",
                    "display": "Clinical Note",
                }
            ]
        }
    ]
    assert doc["context"] == {
        "encounter": [{"reference": ENCOUNTER}],
        "period": {"start": "2026-11-20T14:00:00-05:00", "end": "2026-11-20T14:50:00-05:00"},
    }
    attachment = doc["content"][0]["attachment"]
    assert attachment["contentType"] and attachment["data"]  # us-core-6: data or url
    assert doc["content"][0]["format"]["code"] == "urn:ihe:iti:xds:2017:mimeTypeSufficient"


def test_docref_identifiers_stable_and_per_version(profile: Profile) -> None:
    v1 = _docref(_record("in-person-session"), profile)["identifier"]
    v2 = _docref(_record("amendment"), profile)["identifier"]
    assert v1[0] == v2[0] == {"system": profile.note_system(SOURCE), "value": "N-88812"}
    assert v1[1] == {"system": profile.note_version_system(SOURCE), "value": "N-88812.v1"}
    assert v2[1] == {"system": profile.note_version_system(SOURCE), "value": "N-88812.v2"}


def test_docref_loinc_type_both_codes(
    profile: Profile, example_profile: Profile, session: EncounterRecord
) -> None:
    assert _docref(session, profile)["type"] == {
        "coding": [{"system": "http://loinc.org", "code": "11506-3", "display": "Progress note"}],
        "text": "Progress note",
    }
    assert _docref(session, example_profile)["type"] == {
        "coding": [
            {
                "system": "http://loinc.org",
                "code": "34904-3",
                "display": "Mental health Progress note",
            }
        ],
        "text": "Mental health Progress note",
    }


def test_docref_date_is_signed_at_or_end(profile: Profile) -> None:
    signed = _docref(_record("in-person-session"), profile)["date"]
    unsigned = _docref(_record("batch-1"), profile)["date"]  # no signed_at: the contact's end
    assert signed == "2026-11-20T15:05:00-05:00"
    assert unsigned == "2026-11-21T09:20:00-05:00"
    for value in (signed, unsigned):
        assert INSTANT.match(value)


def test_docref_without_encounter_ref_keeps_period(
    profile: Profile, session: EncounterRecord
) -> None:
    doc = _docref(session, profile, encounter_ref=None)
    assert "encounter" not in doc["context"]
    assert doc["context"]["period"]["start"] == "2026-11-20T14:00:00-05:00"
    assert "custodian" not in doc


NOTE_TEXTS = {
    "unicode": "Renée said: café ☕ — «merci» 🙂👩🏽‍🦱 日本語",
    "crlf": "line one\r\nline two\r\n\r\nafter a blank line\r\n",
    "mixed endings": "unix\nwindows\r\nold mac\rend",
    "decomposed accents": "Rene\u0301e (NFD, must stay NFD)",
    "whitespace": "  leading and trailing  \t\n\n",
    "controls and bom": "\ufeffBOM first, form feed \x0c, NUL \x00, DEL \x7f",
    "markup": "<b>not html</b> & 'quotes' \"double\"",
}


@pytest.mark.parametrize("case", list(NOTE_TEXTS))
def test_note_travels_byte_for_byte(profile: Profile, session: EncounterRecord, case: str) -> None:
    text = NOTE_TEXTS[case]
    doc = _docref(_with_note(session, text=text), profile)
    attachment = doc["content"][0]["attachment"]
    assert attachment["contentType"] == "text/plain; charset=utf-8"
    raw = _decoded(attachment)
    assert raw == text.encode("utf-8")
    assert raw.decode("utf-8") == text


def test_crlf_survives(profile: Profile, session: EncounterRecord) -> None:
    doc = _docref(_with_note(session, text="a\r\nb"), profile)
    assert _decoded(doc["content"][0]["attachment"]) == b"a\r\nb"


def test_attachment_title_has_no_phi(profile: Profile, session: EncounterRecord) -> None:
    attachment = _docref(session, profile)["content"][0]["attachment"]
    assert attachment["title"] == "Peer support progress note"
    assert "Dana" not in json.dumps(attachment["title"])


def test_markdown_only_when_the_profile_allows_it(
    profile: Profile, example_profile: Profile, session: EncounterRecord
) -> None:
    markdown = _with_note(
        session, text="# Plan\n\n- **housing** form\r\n", content_type="text/markdown"
    )
    assert profile.allow_markdown is False and example_profile.allow_markdown is True
    refused = _docref(markdown, profile)["content"][0]["attachment"]
    allowed = _docref(markdown, example_profile)["content"][0]["attachment"]
    assert refused["contentType"] == "text/plain; charset=utf-8"
    assert allowed["contentType"] == "text/markdown; charset=utf-8"
    assert _decoded(refused) == _decoded(allowed) == b"# Plan\n\n- **housing** form\r\n"
    plain = _docref(session, example_profile)["content"][0]["attachment"]
    assert plain["contentType"] == "text/plain; charset=utf-8"


def test_xhtml_mode_escapes_and_is_well_formed(profile: Profile, session: EncounterRecord) -> None:
    text = "<script>alert('x')</script> & </pre></div> ]]> <!-- \r\nRenée 🙂\x0c end"
    doc = _docref(_with_note(session, text=text), profile, note_format=res.NOTE_XHTML)
    attachment = doc["content"][0]["attachment"]
    assert attachment["contentType"] == "application/xhtml+xml"
    xhtml = _decoded(attachment).decode("utf-8")
    assert xhtml.startswith('<div xmlns="http://www.w3.org/1999/xhtml"><pre>')
    assert xhtml.endswith("</pre></div>")
    assert "<script>" not in xhtml
    assert "&lt;script&gt;" in xhtml and "&amp;" in xhtml
    root = ET.fromstring(xhtml)  # well-formed XML, or this raises
    assert root.tag == f"{XHTML_NS}div"
    [pre] = list(root)
    assert pre.tag == f"{XHTML_NS}pre"
    assert list(pre) == []  # no element smuggled in
    # Text survives except what XML itself changes: CR LF -> LF, forbidden characters -> U+FFFD.
    assert pre.text == text.replace("\r\n", "\n").replace("\x0c", "\ufffd")


def test_xhtml_helper_matches_the_attachment(profile: Profile, session: EncounterRecord) -> None:
    assert session.note is not None
    doc = _docref(session, profile, note_format=res.NOTE_XHTML)
    assert _decoded(doc["content"][0]["attachment"]).decode() == notes.note_xhtml(session.note.text)


def _notice(profile: Profile) -> str:
    """The Part 2 notice as it travels: the profile's notice, then its consent scope."""
    assert profile.part2_consent_scope.strip()  # the default profile has one
    return profile.part2_notice + "\n\nConsent: " + profile.part2_consent_scope.strip()


def test_part2_note_has_labels_and_notice_after_the_exact_note(profile: Profile) -> None:
    record = _record("batch-2")
    assert record.part2 and record.note is not None
    doc = _docref(record, profile)
    assert doc["meta"] == {"security": PART2_LABELS}
    note, notice = doc["content"]
    assert _decoded(note["attachment"]) == record.note.text.encode("utf-8")
    assert note["attachment"]["title"] == "Peer support progress note"
    assert notice["attachment"]["contentType"] == "text/plain; charset=utf-8"
    assert notice["attachment"]["title"] == "42 CFR Part 2 redisclosure notice"
    assert _decoded(notice["attachment"]).decode("utf-8") == _notice(profile)
    # an empty consent scope: the notice alone
    bare = _docref(record, dataclasses.replace(profile, part2_consent_scope=""))
    assert _decoded(bare["content"][1]["attachment"]).decode("utf-8") == profile.part2_notice


def test_part2_notice_also_in_xhtml_mode(profile: Profile) -> None:
    doc = _docref(_record("batch-2"), profile, note_format=res.NOTE_XHTML)
    note, notice = doc["content"]
    assert note["attachment"]["contentType"] == "application/xhtml+xml"
    assert _decoded(notice["attachment"]).decode("utf-8") == _notice(profile)


def test_non_part2_note_has_one_content_and_no_labels(
    profile: Profile, session: EncounterRecord
) -> None:
    doc = _docref(session, profile)
    assert len(doc["content"]) == 1
    assert "meta" not in doc


def test_superseded_override(profile: Profile, session: EncounterRecord) -> None:
    doc = _docref(session, profile, status="superseded")
    assert doc["status"] == "superseded"
    assert doc["docStatus"] == "final"
    with pytest.raises(ValueError):
        _docref(session, profile, status="bogus")


def test_retracted_record_gives_entered_in_error(
    profile: Profile, session: EncounterRecord
) -> None:
    doc = _docref(_with(session, status="entered_in_error"), profile)
    assert doc["status"] == "entered-in-error"
    for status in ("completed", "cancelled", "no_show"):
        assert _docref(_with(session, status=status), profile)["status"] == "current"


def test_amendment_replaces_the_old_version(profile: Profile) -> None:
    doc = _docref(_record("amendment"), profile, replaces_ref=OLD_NOTE)
    assert doc["relatesTo"] == [{"code": "replaces", "target": {"reference": OLD_NOTE}}]
    assert doc["status"] == "current"
    assert "relatesTo" not in _docref(_record("in-person-session"), profile)


def test_docref_argument_errors(profile: Profile, session: EncounterRecord) -> None:
    with pytest.raises(ValueError):
        _docref(_record("batch-3"), profile)  # no note
    with pytest.raises(ValueError):
        _docref(session, profile, note_format="text/html")


def test_unencodable_note_is_an_invalid_record_without_the_text(
    profile: Profile, session: EncounterRecord
) -> None:
    record = _with_note(session, text="secret \ud800 text")
    with pytest.raises(RecordInvalid) as info:
        _docref(record, profile)
    assert "note.text" in str(info.value)
    assert "secret" not in str(info.value)
    assert info.value.record_id == session.id
    # XHTML mode replaces what XML cannot carry instead.
    doc = _docref(record, profile, note_format=res.NOTE_XHTML)
    assert "\ufffd" in _decoded(doc["content"][0]["attachment"]).decode("utf-8")


# --- Practitioner ----------------------------------------------------------


def test_practitioner_identifiers_name_qualification(profile: Profile) -> None:
    specialist = _record("in-person-session").specialist
    prac = json.loads(res.map_practitioner(specialist, profile).model_dump_json())
    assert prac["identifier"] == [
        {"system": "https://riverside-peer.example/fhir/sid/staff", "value": "S-17"},
        {"system": "http://hl7.org/fhir/sid/us-npi", "value": "1234567893"},
    ]
    assert prac["name"] == [{"family": "Kim", "given": ["Alex"]}]
    assert prac["qualification"] == [{"code": {"text": "CPRS"}}]
    assert prac["active"] is True


def test_practitioner_without_npi_name_or_credential(profile: Profile) -> None:
    specialist = _record("batch-1").specialist  # staff id only
    prac = json.loads(res.map_practitioner(specialist, profile).model_dump_json())
    assert prac["identifier"] == [
        {"system": "https://riverside-peer.example/fhir/sid/staff", "value": "S-17"}
    ]
    assert "name" not in prac and "qualification" not in prac


def test_practitioner_with_given_name_only(profile: Profile) -> None:
    specialist = dataclasses.replace(_record("batch-1").specialist, given="Casey")
    prac = json.loads(res.map_practitioner(specialist, profile).model_dump_json())
    assert prac["name"] == [{"given": ["Casey"]}]


# --- Patient ---------------------------------------------------------------


def test_patient_for_create_missing(example_profile: Profile) -> None:
    record = _record("in-person-session")
    patient = json.loads(res.map_patient(record, example_profile).model_dump_json())
    assert patient["gender"] == "unknown"
    assert patient["identifier"] == [
        {"system": "urn:oid:2.16.840.1.113883.19.5", "value": "MRN-55821"},
        {"system": example_profile.participant_system(SOURCE), "value": "P-1001"},
    ]
    assert patient["name"] == [{"family": "Lopez", "given": ["Dana"]}]
    assert patient["birthDate"] == "1988-04-12"


def test_patient_without_mrn_or_birth_date(example_profile: Profile) -> None:
    record = _record("batch-3")  # no mrn, no birth date
    patient = json.loads(res.map_patient(record, example_profile).model_dump_json())
    assert patient["identifier"] == [
        {"system": example_profile.participant_system(SOURCE), "value": "P-1004"}
    ]
    assert "birthDate" not in patient
    assert patient["gender"] == "unknown"


def test_patient_without_a_name_says_why(example_profile: Profile) -> None:
    record = _record("batch-3")
    nameless = _with(
        record, participant=dataclasses.replace(record.participant, given=None, family=None)
    )
    patient = json.loads(res.map_patient(nameless, example_profile).model_dump_json())
    # US Core us-core-6: given/family, or the data-absent-reason extension.
    assert patient["name"] == [
        {
            "extension": [
                {
                    "url": "http://hl7.org/fhir/StructureDefinition/data-absent-reason",
                    "valueCode": "unknown",
                }
            ]
        }
    ]


def test_patient_name_keeps_unicode(example_profile: Profile) -> None:
    patient = json.loads(res.map_patient(_record("batch-2"), example_profile).model_dump_json())
    assert patient["name"] == [{"family": "Dubois", "given": ["Renée"]}]


# --- Organization, Device --------------------------------------------------


def test_organization(profile: Profile) -> None:
    org = json.loads(res.map_organization(profile).model_dump_json())
    assert org == {
        "resourceType": "Organization",
        "identifier": [
            {"system": "https://riverside-peer.example/fhir/sid/org", "value": "riverside"}
        ],
        "active": True,
        "name": "Riverside Peer Recovery Center",
    }


def test_device(profile: Profile) -> None:
    device = json.loads(res.map_device(profile, organization_ref=ORGANIZATION).model_dump_json())
    assert device["identifier"] == [
        {"system": "https://riverside-peer.example/fhir/sid/device", "value": "peersync-1"}
    ]
    assert device["deviceName"] == [{"name": "PeerSync connector", "type": "user-friendly-name"}]
    assert device["owner"] == {"reference": ORGANIZATION}
    assert "owner" not in json.loads(res.map_device(profile).model_dump_json())
    Device.model_validate(device)
    Organization.model_validate(json.loads(res.map_organization(profile).model_dump_json()))


# --- Provenance ------------------------------------------------------------


def test_provenance_agents_and_targets() -> None:
    prov = _provenance()
    assert prov["target"] == [{"reference": ENCOUNTER}, {"reference": "urn:uuid:doc"}]
    assert prov["recorded"] == "2026-11-20T16:12:30-05:00"  # as given, offset kept
    author, transmitter = prov["agent"]
    assert author == {
        "type": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/provenance-participant-type",
                    "code": "author",
                    "display": "Author",
                }
            ]
        },
        "who": {"reference": PRACTITIONER},
        "onBehalfOf": {"reference": ORGANIZATION},
    }
    assert transmitter == {
        "type": {
            "coding": [
                {
                    "system": (
                        "http://hl7.org/fhir/us/core/CodeSystem/us-core-provenance-participant-type"
                    ),
                    "code": "transmitter",
                    "display": "Transmitter",
                }
            ]
        },
        "who": {"reference": DEVICE},
        "onBehalfOf": {"reference": ORGANIZATION},
    }
    assert "activity" not in prov and "meta" not in prov


def test_provenance_recorded_in_utc_is_an_instant() -> None:
    recorded = datetime(2026, 11, 20, 21, 12, 30, 250000, tzinfo=UTC)
    value = _provenance(recorded=recorded)["recorded"]
    assert INSTANT.match(value)
    assert datetime.fromisoformat(value.replace("Z", "+00:00")) == recorded


@pytest.mark.parametrize(
    ("code", "display"), [("CREATE", "create"), ("UPDATE", "revise"), ("NULLIFY", "nullify")]
)
def test_provenance_activity(code: str, display: str) -> None:
    assert _provenance(activity=code)["activity"] == {
        "coding": [
            {
                "system": "http://terminology.hl7.org/CodeSystem/v3-DataOperation",
                "code": code,
                "display": display,
            }
        ]
    }


def test_provenance_part2_labels() -> None:
    assert _provenance(part2=True)["meta"] == {"security": PART2_LABELS}


@pytest.mark.parametrize(
    "bad",
    [
        {"activity": "bogus"},
        {"targets": []},
        {"targets": "Encounter/1"},
        {"recorded": datetime(2026, 11, 20, 16, 0)},  # no offset: not an instant
        {"device_ref": ""},
    ],
)
def test_provenance_argument_errors(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        _provenance(**bad)


# --- purity ----------------------------------------------------------------


def _all_resources(profile: Profile) -> list[str]:
    out = []
    for name in EXAMPLE_IDS:
        record = _record(name)
        for kind, (_, build) in _builders(profile).items():
            if kind.startswith("DocumentReference") and record.note is None:
                continue
            out.append(build(record).model_dump_json())
    out.append(res.map_organization(profile).model_dump_json())
    out.append(res.map_device(profile, organization_ref=ORGANIZATION).model_dump_json())
    return out


def test_mappers_are_pure(profile: Profile, monkeypatch: pytest.MonkeyPatch) -> None:
    first = _all_resources(profile)

    def forbidden(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a mapper read the clock or randomness")

    import os
    import random
    import secrets
    import time
    import uuid

    for module, names in [
        (uuid, ("uuid1", "uuid4")),
        (time, ("time", "time_ns", "localtime", "gmtime")),
        (random, ("random", "randint", "choice", "getrandbits")),
        (secrets, ("token_hex", "token_bytes", "token_urlsafe")),
        (os, ("urandom",)),
    ]:
        for name in names:
            monkeypatch.setattr(module, name, forbidden)

    # datetime.now() and friends cannot be patched on the C type: the AST test below
    # checks that the module never calls them.
    assert _all_resources(profile) == first


def test_mapping_module_imports_no_clock_or_randomness() -> None:
    tree = ast.parse(inspect.getsource(res))
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
        elif isinstance(node, ast.Attribute):
            assert node.attr not in {"now", "utcnow", "today", "uuid4", "urandom"}, node.attr
    assert not imported & {"uuid", "random", "secrets", "time", "os", "io", "requests", "socket"}
