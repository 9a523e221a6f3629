"""Record + agency profile -> FHIR R4 resources (US Core 6.1.0), as R4B models.

Every function here is pure: no I/O, no clock, no random ids. Whatever varies
between calls (references, the Provenance's ``recorded`` instant) is passed in,
so the same arguments always give the same JSON.

References are plain strings put in ``Reference.reference`` as given: a literal
``Patient/123``, a bundle-local ``urn:uuid:...`` or a conditional
``Patient?identifier=...``.

``fhir.resources`` accepts any string where FHIR wants a code, so the codes
chosen here are checked by the unit tests, not by the models.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from fhir.resources.R4B.coding import Coding
from fhir.resources.R4B.device import Device
from fhir.resources.R4B.encounter import Encounter
from fhir.resources.R4B.organization import Organization
from fhir.resources.R4B.patient import Patient
from fhir.resources.R4B.practitioner import Practitioner
from fhir.resources.R4B.provenance import Provenance
from pydantic import BaseModel

if TYPE_CHECKING:
    from datetime import datetime

    from connector.records import EncounterRecord, Note, Specialist
    from mappings.profile import Profile

# How a note's text travels in DocumentReference.content[0].
NOTE_PLAIN = "text/plain"  # the note's exact UTF-8 bytes
NOTE_XHTML = "application/xhtml+xml"  # escaped into <div><pre>, for EHRs that take only XHTML
NOTE_FORMATS = (NOTE_PLAIN, NOTE_XHTML)

# Code systems and identifier systems.
ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
CONFIDENTIALITY = "http://terminology.hl7.org/CodeSystem/v3-Confidentiality"
PARTICIPATION_TYPE = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
DATA_OPERATION = "http://terminology.hl7.org/CodeSystem/v3-DataOperation"
HCPCS = "http://www.cms.gov/Medicare/Coding/HCPCSReleaseCodeSets"
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
NPI = "http://hl7.org/fhir/sid/us-npi"
DOCREF_CATEGORY = "http://hl7.org/fhir/us/core/CodeSystem/us-core-documentreference-category"
PROVENANCE_PARTICIPANT = "http://terminology.hl7.org/CodeSystem/provenance-participant-type"
US_CORE_PROVENANCE_PARTICIPANT = (
    "http://hl7.org/fhir/us/core/CodeSystem/us-core-provenance-participant-type"
)
FORMAT_CODES = "urn:oid:1.3.6.1.4.1.19376.1.2.3"  # HL7/IHE format codes
DATA_ABSENT_REASON = "http://hl7.org/fhir/StructureDefinition/data-absent-reason"

# record.status -> Encounter.status
ENCOUNTER_STATUS = {
    "completed": "finished",
    "cancelled": "cancelled",
    "no_show": "cancelled",
    "entered_in_error": "entered-in-error",
}
# Encounter.class (v3-ActCode): code -> display
ENCOUNTER_CLASSES = {"VR": "virtual", "HH": "home health", "AMB": "ambulatory"}
HCPCS_DISPLAYS = {"H0038": "Self-help/peer services, per 15 minutes"}
DOCREF_STATUSES = ("current", "superseded", "entered-in-error")
# Provenance.activity (v3-DataOperation): code -> display
PROVENANCE_ACTIVITIES = {"CREATE": "create", "UPDATE": "revise", "NULLIFY": "nullify"}

NOTE_TITLE = "Peer support progress note"  # no PHI in titles
PART2_NOTICE_TITLE = "42 CFR Part 2 redisclosure notice"
_PLAIN_CONTENT_TYPE = "text/plain; charset=utf-8"
_MARKDOWN_CONTENT_TYPE = "text/markdown; charset=utf-8"
_MIME_TYPE_SUFFICIENT = {
    "system": FORMAT_CODES,
    "code": "urn:ihe:iti:xds:2017:mimeTypeSufficient",
    "display": "mimeType Sufficient",
}
# Characters XML 1.0 forbids even as references (tab, LF and CR are allowed).
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff\ud800-\udfff]")


# --- identifiers -----------------------------------------------------------


class IdentifierKey(NamedTuple):
    """An identifier as (system, value): the key of conditional writes and look-ups."""

    system: str
    value: str

    @property
    def token(self) -> str:
        """``system|value`` escaped for a FHIR ``identifier=`` search."""
        return search_token(self.system, self.value)

    def as_fhir(self) -> dict[str, str]:
        return {"system": self.system, "value": self.value}


def _escape_search(part: str) -> str:
    # FHIR R4 search.html "Escaping Search Parameters": \ first, then the separators.
    for char in ("\\", "|", ",", "$"):
        part = part.replace(char, "\\" + char)
    return part


def search_token(system: str, value: str) -> str:
    """``system|value`` with ``\\ | , $`` escaped in each part (URL-encoding is the caller's)."""
    return f"{_escape_search(system)}|{_escape_search(value)}"


def encounter_identifier(record: EncounterRecord, profile: Profile) -> IdentifierKey:
    return IdentifierKey(profile.encounter_system(record.source), record.id)


def note_identifier(record: EncounterRecord, profile: Profile) -> IdentifierKey:
    """The note's stable identifier (the same for every version)."""
    note = _require_note(record)
    return IdentifierKey(profile.note_system(record.source), note.id)


def note_version_identifier(record: EncounterRecord, profile: Profile) -> IdentifierKey:
    """One note version's identifier: the key conditional writes and look-ups use."""
    note = _require_note(record)
    return IdentifierKey(profile.note_version_system(record.source), f"{note.id}.v{note.version}")


def staff_identifier(specialist: Specialist, profile: Profile) -> IdentifierKey:
    return IdentifierKey(profile.staff_system, specialist.id)


def mrn_identifier(mrn: str, profile: Profile) -> IdentifierKey:
    return IdentifierKey(profile.mrn_system, mrn)


def participant_identifier(record: EncounterRecord, profile: Profile) -> IdentifierKey:
    return IdentifierKey(profile.participant_system(record.source), record.participant.id)


# --- shared pieces ---------------------------------------------------------


def part2_security_labels() -> list[Coding]:
    """The 42 CFR Part 2 labels for ``meta.security``: restricted, SUD-sensitive, Part 2 policy."""
    return [
        Coding(system=CONFIDENTIALITY, code="R", display="restricted"),
        Coding(system=ACT_CODE, code="ETH", display="substance abuse information sensitivity"),
        Coding(system=ACT_CODE, code="42CFRPart2", display="42 CFR Part2"),
    ]


def _part2_meta() -> dict[str, Any]:
    return {"security": [c.model_dump(mode="json") for c in part2_security_labels()]}


def _ref(reference: str) -> dict[str, str]:
    if not reference:
        raise ValueError("a reference must not be empty")
    return {"reference": reference}


def _instant(value: datetime, what: str) -> str:
    """An aware datetime as an ISO 8601 instant, keeping its own offset."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{what} must carry a UTC offset")
    text = value.isoformat()
    # UTC as "Z", as the FHIR models write it: the JSON sent is the JSON validated
    return text[:-6] + "Z" if text.endswith("+00:00") else text


def validated(model: type[BaseModel], data: dict[str, Any]) -> dict[str, Any]:
    """``data`` itself, once the FHIR model accepts it (pydantic's ValidationError names
    the elements it refuses). The mapping builds JSON already in the models' own form, so
    what is sent is what was validated, without a second pass through the model to dump
    it (tests/unit/test_mapping_json.py holds the two equal)."""
    model.model_validate(data)
    return data


def _period(record: EncounterRecord) -> dict[str, str]:
    return {"start": _instant(record.start, "start"), "end": _instant(record.end, "end")}


def _concept(system: str, code: str, display: str | None = None) -> dict[str, Any]:
    coding = {"system": system, "code": code}
    if display:
        coding["display"] = display
    return {"coding": [coding]}


def _require_note(record: EncounterRecord) -> Note:
    if record.note is None:
        raise ValueError(f"record {record.id} has no note")
    return record.note


# --- Encounter -------------------------------------------------------------


def encounter_class(record: EncounterRecord) -> str:
    """One rule: video or phone -> VR; else a home setting -> HH; else AMB."""
    if record.service.modality in ("video", "phone"):
        return "VR"
    if record.service.setting == "home":
        return "HH"
    return "AMB"


def encounter_json(
    record: EncounterRecord,
    profile: Profile,
    *,
    patient_ref: str,
    practitioner_ref: str,
    organization_ref: str | None = None,
    validate: bool = True,
) -> dict[str, Any]:
    """The US Core Encounter of one record, as validated JSON.

    ``service.setting``, ``service.group_size`` and ``consent.id`` are kept
    locally and deliberately not sent. ``validate=False`` for an Encounter
    contained in a note: the note's own validation covers it.
    """
    code = record.service.code or profile.service_code
    display = HCPCS_DISPLAYS.get(code)
    service_type = _concept(HCPCS, code, display)
    service_type["text"] = display or f"HCPCS {code}"
    class_code = encounter_class(record)
    period = _period(record)

    data: dict[str, Any] = {
        "resourceType": "Encounter",
        "identifier": [encounter_identifier(record, profile).as_fhir()],
        "status": ENCOUNTER_STATUS[record.status],
        "class": {
            "system": ACT_CODE,
            "code": class_code,
            "display": ENCOUNTER_CLASSES[class_code],
        },
        "type": [service_type],
        "subject": _ref(patient_ref),
        "participant": [
            {
                "type": [_concept(PARTICIPATION_TYPE, "PPRF", "primary performer")],
                "period": period,
                "individual": _ref(practitioner_ref),
            }
        ],
        "period": period,
        "length": {"value": record.minutes, "unit": "min", "system": UCUM, "code": "min"},
    }
    if record.goals:
        data["reasonCode"] = [{"text": goal} for goal in record.goals]
    if organization_ref:
        data["serviceProvider"] = _ref(organization_ref)
    if record.part2:
        data["meta"] = _part2_meta()
    return validated(Encounter, data) if validate else data


def map_encounter(record: EncounterRecord, profile: Profile, **refs: Any) -> Encounter:
    """The US Core Encounter of one record (see :func:`encounter_json`)."""
    return Encounter.model_validate(encounter_json(record, profile, **refs))


# --- Practitioner, Patient, Organization, Device ---------------------------


def _human_name(given: str | None, family: str | None) -> dict[str, Any]:
    name: dict[str, Any] = {}
    if family:
        name["family"] = family
    if given:
        name["given"] = [given]
    return name


def map_practitioner(specialist: Specialist, profile: Profile) -> Practitioner:
    """The specialist as a Practitioner: staff id first (the match key), NPI second."""
    identifiers = [staff_identifier(specialist, profile).as_fhir()]
    if specialist.npi:
        identifiers.append({"system": NPI, "value": specialist.npi})
    data: dict[str, Any] = {
        "resourceType": "Practitioner",
        "identifier": identifiers,
        "active": True,
    }
    if specialist.given or specialist.family:
        data["name"] = [_human_name(specialist.given, specialist.family)]
    if specialist.credential:
        # No standard code system covers peer credentials (CPRS, CPSS, ...): text only.
        data["qualification"] = [{"code": {"text": specialist.credential}}]
    return Practitioner.model_validate(data)


def map_patient(record: EncounterRecord, profile: Profile) -> Patient:
    """A new Patient, for profiles that create missing ones (the EHR owns patients).

    Gender is ``unknown``: the contract does not carry it and US Core requires it.
    """
    person = record.participant
    identifiers = []
    if person.mrn:
        identifiers.append(mrn_identifier(person.mrn, profile).as_fhir())
    identifiers.append(participant_identifier(record, profile).as_fhir())
    name = _human_name(person.given, person.family)
    if not name:  # US Core us-core-6: a name, or a data-absent-reason on it
        name = {"extension": [{"url": DATA_ABSENT_REASON, "valueCode": "unknown"}]}
    data: dict[str, Any] = {
        "resourceType": "Patient",
        "identifier": identifiers,
        "active": True,
        "name": [name],
        "gender": "unknown",
    }
    if person.birth_date:
        data["birthDate"] = person.birth_date.isoformat()
    return Patient.model_validate(data)


def map_organization(profile: Profile) -> Organization:
    org = profile.organization
    return Organization.model_validate(
        {
            "resourceType": "Organization",
            "identifier": [{"system": org.system, "value": org.value}],
            "active": True,
            "name": org.name,
        }
    )


def map_device(profile: Profile, *, organization_ref: str | None = None) -> Device:
    device = profile.device
    data: dict[str, Any] = {
        "resourceType": "Device",
        "identifier": [{"system": device.system, "value": device.value}],
        "status": "active",
        "deviceName": [{"name": device.name, "type": "user-friendly-name"}],
    }
    if organization_ref:
        data["owner"] = _ref(organization_ref)
    return Device.model_validate(data)


# --- Provenance ------------------------------------------------------------


def provenance_json(
    *,
    targets: Sequence[str],
    recorded: datetime,
    practitioner_ref: str,
    device_ref: str,
    organization_ref: str,
    part2: bool = False,
    activity: str | None = None,
    verifier_ref: str | None = None,
) -> dict[str, Any]:
    """US Core Provenance, as validated JSON: the specialist authored, our Device transmitted,
    both for the agency; a co-signing supervisor (``verifier_ref``) verified.

    ``activity`` is a v3-DataOperation code: CREATE, UPDATE or NULLIFY (a retraction).
    An R4 agent has no time of its own: the co-signature's time is in the audit log.
    """
    if isinstance(targets, str) or not targets:
        raise ValueError("targets must be a non-empty sequence of references")
    on_behalf_of = _ref(organization_ref)
    data: dict[str, Any] = {
        "resourceType": "Provenance",
        "target": [_ref(target) for target in targets],
        "recorded": _instant(recorded, "recorded"),
        "agent": [
            {
                "type": _concept(PROVENANCE_PARTICIPANT, "author", "Author"),
                "who": _ref(practitioner_ref),
                "onBehalfOf": on_behalf_of,
            },
            {
                "type": _concept(US_CORE_PROVENANCE_PARTICIPANT, "transmitter", "Transmitter"),
                "who": _ref(device_ref),
                "onBehalfOf": on_behalf_of,
            },
        ],
    }
    if verifier_ref:
        data["agent"].append({
            "type": _concept(PROVENANCE_PARTICIPANT, "verifier", "Verifier"),
            "who": _ref(verifier_ref),
            "onBehalfOf": on_behalf_of,
        })
    if activity is not None:
        if activity not in PROVENANCE_ACTIVITIES:
            raise ValueError(f"activity must be one of {', '.join(PROVENANCE_ACTIVITIES)}")
        data["activity"] = _concept(DATA_OPERATION, activity, PROVENANCE_ACTIVITIES[activity])
    if part2:
        data["meta"] = _part2_meta()
    return validated(Provenance, data)


def map_provenance(**kwargs: Any) -> Provenance:
    """US Core Provenance (see :func:`provenance_json`)."""
    return Provenance.model_validate(provenance_json(**kwargs))
