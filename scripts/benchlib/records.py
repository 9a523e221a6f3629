"""Generated back-fill records (the contract's shapes) and what the EHR holds before a sync.

Seeded from one ``random.Random``, so every run of a size gets the same records:
notes of 200 B to 20 KB (one exactly 20,000 characters), the three modalities
and the settings, text/plain and text/markdown, group sessions, goals, a few
cancelled and no-show sessions (no note), Part 2 shares with an active consent,
and amendments (note version 2 of ~10 % of the records, after every first version).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import requests

MAX_NOTE = 20_000
SOURCE = "peer-tool"
TZ = timezone(timedelta(hours=-5))
SETTINGS = ["office", "community", "home", "hospital", "residential", "justice", "other"]
GOALS = ["housing", "wellness", "employment", "recovery", "education", "family", "benefits"]
GIVEN = ["Dana", "Sam", "Renée", "Lee", "Morgan", "Alex", "Priya", "Jordan", "Kai", "Noor",
         "Tomás", "Ines", "Marcus", "Aiyana", "Yuki", "Olu"]
FAMILY = ["Lopez", "Okafor", "Dubois", "Park", "Hale", "Kim", "Natarajan", "Nguyen", "Cohen",
          "Mbeki", "Novak", "Silva", "O'Brien", "Haddad", "Larsen", "Ito"]
SENTENCES = [
    "Met {p} at the library to work on the housing application.",
    "{p} said the week felt steadier than last month.",
    "We reviewed the recovery plan and the triggers {p} named last time.",
    "Talked through the morning routine; {p} is keeping it most days.",
    "{p} asked about the Thursday recovery group and whether a friend can come.",
    "Practised the phone call to the benefits office together; {p} will call on Monday.",
    "Discussed a setback at work; {p} used the breathing exercise and left early instead.",
    "Shared my own experience of the first months back at work, as {p} asked.",
    "{p} brought proof of income; sections 1-4 of the form are complete.",
    "Walked to the pharmacy together and sorted out the refill problem.",
    "{p} is sleeping better and wants to try the evening walking group.",
    "Agreed next steps: {p} drafts the letter to the landlord, we read it together Friday.",
]


@dataclass
class Dataset:
    patients: list[dict[str, Any]]  # participant dicts (id, mrn, given, family, birth_date)
    staff: list[dict[str, Any]]  # specialist dicts (id, npi, given, family, credential)
    records: list[dict[str, Any]]  # every record version: first versions, then amendments
    first: int = 0  # how many of ``records`` are first versions
    stats: dict[str, Any] = field(default_factory=dict)

    def write_jsonl(self, path: Path) -> Path:
        with path.open("w", encoding="utf-8") as out:
            for record in self.records:
                out.write(json.dumps(record, ensure_ascii=False) + "\n")
        return path


def _npi(body: str) -> str:
    """A valid NPI (Luhn over 80840 + the digits) from 9 digits."""
    digits = [int(c) for c in "80840" + body]
    total = 0
    for i, d in enumerate(reversed(digits)):
        if i % 2 == 0:
            d *= 2
            d = d - 9 if d > 9 else d
        total += d
    return body + str((10 - total % 10) % 10)


def _note_text(rng: random.Random, name: str, size: int, markdown: bool) -> str:
    parts: list[str] = []
    length = 0
    while length < size:
        line = rng.choice(SENTENCES).format(p=name)
        if markdown and rng.random() < 0.15:
            line = f"- **{rng.choice(GOALS)}**: {line}"
        parts.append(line)
        length += len(line) + 1
    return "\n".join(parts)[:size].rstrip() or "Check-in."


def _size(rng: random.Random) -> int:
    roll = rng.random()
    if roll < 0.70:
        return rng.randint(200, 2_000)
    if roll < 0.95:
        return rng.randint(2_000, 8_000)
    return rng.randint(8_000, MAX_NOTE)


def generate(n: int, *, seed: int = 9) -> Dataset:
    """``n`` record versions: ~90 % first versions, ~10 % amendments (note version 2)."""
    rng = random.Random(seed)
    amendments = n // 10
    first = n - amendments
    patients = [{
        "id": f"P-{i:05d}", "mrn": f"MRN-B{i:06d}", "given": rng.choice(GIVEN),
        "family": rng.choice(FAMILY),
        "birth_date": f"{rng.randint(1950, 2005)}-{rng.randint(1, 12):02d}-"
                      f"{rng.randint(1, 28):02d}",
    } for i in range(max(3, min(200, first // 5)))]
    staff = [{
        "id": f"S-{100 + i}", "npi": _npi(f"{rng.randint(10**8, 10**9 - 1)}"),
        "given": rng.choice(GIVEN), "family": rng.choice(FAMILY),
        "credential": rng.choice(["CPRS", "CPSS", "PRSS"]),
    } for i in range(8)]
    records: list[dict[str, Any]] = []
    day0 = datetime(2025, 1, 6, 8, 0, tzinfo=TZ)
    counts = {"part2": 0, "cancelled_or_no_show": 0, "markdown": 0, "group": 0}
    modalities = {"in_person": 0, "video": 0, "phone": 0}
    for i in range(first):
        patient = patients[rng.randrange(len(patients))]
        modality = rng.choices(list(modalities), weights=[6, 2, 2])[0]
        modalities[modality] += 1
        start = day0 + timedelta(days=rng.randrange(600), minutes=15 * rng.randrange(40))
        end = start + timedelta(minutes=rng.choice([15, 20, 30, 45, 50, 60, 90]))
        service: dict[str, Any] = {"code": "H0038", "modality": modality}
        if modality == "in_person":
            service["setting"] = rng.choice(SETTINGS)
            if rng.random() < 0.1:
                service["group_size"] = rng.randint(3, 12)
                counts["group"] += 1
        record: dict[str, Any] = {
            "id": f"bf-{i:07d}", "participant": patient,
            "specialist": rng.choice(staff), "service": service,
            "start": start.isoformat(), "end": end.isoformat(),
        }
        roll = rng.random()
        if i > 0 and roll < 0.04:
            record["status"] = rng.choice(["cancelled", "no_show"])
            counts["cancelled_or_no_show"] += 1
        else:
            markdown = rng.random() < 0.2
            counts["markdown"] += markdown
            size = MAX_NOTE if i == 0 else _size(rng)
            note: dict[str, Any] = {
                "id": f"N-bf-{i:07d}",
                "text": _note_text(rng, patient["given"], size, markdown),
                "signed_at": (end + timedelta(minutes=rng.randint(5, 240))).isoformat(),
                "documentation_minutes": rng.randint(2, 20),
            }
            if markdown:
                note["content_type"] = "text/markdown"
            record["note"] = note
            if rng.random() < 0.5:
                record["goals"] = rng.sample(GOALS, rng.randint(1, 3))
            if rng.random() < 0.08:
                record["part2"] = True
                record["consent"] = {"status": "active", "id": f"C-{patient['id']}"}
                counts["part2"] += 1
        records.append(record)
    with_notes = [r for r in records if "note" in r]
    for k in range(amendments):
        old = with_notes[k % len(with_notes)] if k < len(with_notes) else None
        if old is None:
            break
        new = json.loads(json.dumps(old))
        new["note"]["version"] = 2
        new["note"]["text"] = (new["note"]["text"][: MAX_NOTE - 80]
                               + "\nAddendum: corrected the session length.")
        new["end"] = (datetime.fromisoformat(old["end"]) + timedelta(minutes=5)).isoformat()
        records.append(new)
    sizes = [len(r["note"]["text"].encode()) for r in records if "note" in r]
    stats = {
        "record_versions": len(records), "first_versions": first,
        "amendments": len(records) - first, "patients": len(patients), "specialists": len(staff),
        "modalities": modalities, **counts,
        "note_bytes_max": max(sizes, default=0),
        "note_bytes_mean": round(sum(sizes) / len(sizes)) if sizes else 0,
    }
    return Dataset(patients, staff, records, first, stats)


@dataclass
class Seeded:
    patients: dict[str, str]  # MRN -> Patient id
    practitioners: dict[str, str]  # staff id -> Practitioner id
    organization: str
    device: str


def seed(base_url: str, profile: Any, data: Dataset, *, device: bool = True) -> Seeded:
    """What the agency's EHR already holds: Patients (by MRN), Practitioners, Organization."""
    from mappings.resources import NPI, map_device, map_organization

    base = base_url.rstrip("/")
    with requests.Session() as http:
        def post(resource: dict[str, Any]) -> str:
            resp = http.post(f"{base}/{resource['resourceType']}", json=resource, timeout=30,
                             headers={"Content-Type": "application/fhir+json"})
            resp.raise_for_status()
            return str(resp.json()["id"])

        patients = {p["mrn"]: post({
            "resourceType": "Patient", "gender": "unknown", "birthDate": p["birth_date"],
            "identifier": [{"system": profile.mrn_system, "value": p["mrn"]}],
            "name": [{"family": p["family"], "given": [p["given"]]}],
        }) for p in data.patients}
        practitioners = {s["id"]: post({
            "resourceType": "Practitioner", "active": True,
            "identifier": [{"system": profile.staff_system, "value": s["id"]},
                           {"system": NPI, "value": s["npi"]}],
            "name": [{"family": s["family"], "given": [s["given"]]}],
        }) for s in data.staff}
        org = post(map_organization(profile).model_dump(mode="json"))
        dev = post(map_device(profile, organization_ref=f"Organization/{org}")
                   .model_dump(mode="json")) if device else ""
    return Seeded(patients, practitioners, org, dev)
