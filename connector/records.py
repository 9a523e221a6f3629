"""Domain records: one peer support encounter, as the intake contract defines it.

An :class:`EncounterRecord` is built only from a dict that already passed the
contract's validation (:mod:`connector.intake`). It is immutable, keyed by
``(source, id)``, and carries its canonical JSON form so that the store can
hash it: two records with the same canonical JSON are the same version.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

# The values the contract allows, named once.
STATUSES = ("completed", "cancelled", "no_show", "entered_in_error")
MODALITIES = ("in_person", "video", "phone")
SETTINGS = ("office", "community", "home", "hospital", "residential", "justice", "other")
CONSENT_STATUSES = ("active", "revoked", "none")
NOTE_CONTENT_TYPES = ("text/plain", "text/markdown")


def parse_datetime(value: str) -> datetime:
    """Parse an RFC 3339 date-time that intake already checked (offset required)."""
    return datetime.fromisoformat(value.replace("z", "Z").replace("Z", "+00:00"))


@dataclass(frozen=True, slots=True)
class Participant:
    id: str
    mrn: str | None = None
    given: str | None = None
    family: str | None = None
    birth_date: date | None = None


@dataclass(frozen=True, slots=True)
class Specialist:
    id: str
    npi: str | None = None
    given: str | None = None
    family: str | None = None
    credential: str | None = None

    @property
    def has_name(self) -> bool:
        """Enough of a name to create a Practitioner (US Core requires name.family)."""
        return bool(self.family)


@dataclass(frozen=True, slots=True)
class Service:
    code: str | None = None  # None: the agency profile's default (H0038)
    modality: str = "in_person"
    setting: str | None = None
    group_size: int | None = None


@dataclass(frozen=True, slots=True)
class Note:
    id: str
    text: str
    version: int = 1
    content_type: str = "text/plain"
    signed_at: datetime | None = None
    documentation_minutes: float | None = None
    documentation_started: datetime | None = None
    documentation_finished: datetime | None = None
    cosigned_by: str | None = None  # contract v2: the supervisor's staff id, signed in the tool
    cosigned_at: datetime | None = None

    @property
    def minutes_spent(self) -> float | None:
        """Documentation time in minutes: the interval if given, else the stated minutes."""
        if self.documentation_started and self.documentation_finished:
            delta = self.documentation_finished - self.documentation_started
            return delta.total_seconds() / 60
        return self.documentation_minutes


@dataclass(frozen=True, slots=True)
class Consent:
    status: str | None = None
    id: str | None = None


@dataclass(frozen=True, slots=True)
class EncounterRecord:
    """One contact between a specialist and a participant, with its note."""

    source: str
    id: str
    participant: Participant
    specialist: Specialist
    start: datetime
    end: datetime
    service: Service = field(default_factory=Service)
    status: str = "completed"
    note: Note | None = None
    goals: tuple[str, ...] = ()
    part2: bool = False
    consent: Consent | None = None
    # The validated contract object, canonical (see canonical_json); not compared.
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def key(self) -> tuple[str, str]:
        return (self.source, self.id)

    @property
    def minutes(self) -> int:
        """Length of the contact in whole minutes (Encounter.length)."""
        return int(round((self.end - self.start).total_seconds() / 60))

    @property
    def canonical_json(self) -> str:
        return canonical_json(self.raw)

    @property
    def content_hash(self) -> str:
        return content_hash(self.raw)

    @classmethod
    def from_dict(cls, source: str, data: dict[str, Any]) -> EncounterRecord:
        """Build from a contract object that passed validation (no checks here)."""
        p = data["participant"]
        s = data["specialist"]
        svc = data.get("service") or {}
        n = data.get("note")
        c = data.get("consent")
        note = None
        if n is not None:
            note = Note(
                id=n["id"],
                text=n["text"],
                version=n.get("version", 1),
                content_type=n.get("content_type", "text/plain"),
                signed_at=_opt_dt(n.get("signed_at")),
                documentation_minutes=n.get("documentation_minutes"),
                documentation_started=_opt_dt(n.get("documentation_started")),
                documentation_finished=_opt_dt(n.get("documentation_finished")),
                cosigned_by=n.get("cosigned_by"),
                cosigned_at=_opt_dt(n.get("cosigned_at")),
            )
        return cls(
            source=source,
            id=data["id"],
            participant=Participant(
                id=p["id"],
                mrn=p.get("mrn"),
                given=p.get("given"),
                family=p.get("family"),
                birth_date=date.fromisoformat(p["birth_date"]) if p.get("birth_date") else None,
            ),
            specialist=Specialist(
                id=s["id"],
                npi=s.get("npi"),
                given=s.get("given"),
                family=s.get("family"),
                credential=s.get("credential"),
            ),
            service=Service(
                code=svc.get("code"),
                modality=svc.get("modality", "in_person"),
                setting=svc.get("setting"),
                group_size=svc.get("group_size"),
            ),
            start=parse_datetime(data["start"]),
            end=parse_datetime(data["end"]),
            status=data.get("status", "completed"),
            note=note,
            goals=tuple(data.get("goals") or ()),
            part2=bool(data.get("part2", False)),
            consent=Consent(status=c.get("status"), id=c.get("id")) if c is not None else None,
            raw=data,
        )

    @classmethod
    def from_json(cls, source: str, text: str) -> EncounterRecord:
        return cls.from_dict(source, json.loads(text))


def _opt_dt(value: str | None) -> datetime | None:
    return parse_datetime(value) if value else None


def canonical_json(data: dict[str, Any]) -> str:
    """Key-sorted compact JSON: the form that is stored and hashed."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def content_hash(data: dict[str, Any]) -> str:
    return hashlib.sha256(canonical_json(data).encode("utf-8")).hexdigest()
