"""The sync's value objects: what a record waits for, its writes, its plan, the ledger views."""

from __future__ import annotations

import threading
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

from connector.records import EncounterRecord
from connector.states import JobState
from connector.store import Job, LedgerEntry, Store

if TYPE_CHECKING:
    from connector.config import Config
    from connector.fhir_client import FhirClient
    from connector.writeplan import WritePlan
    from mappings.profile import Profile

# Provenance has no identifier of its own: the ledger keys ours by record version and time.
PROVENANCE_SYSTEM = "urn:peersync:provenance"
NAMESPACE = uuid.UUID("4f7d0c9e-2b1a-4a47-9a55-6a1f0f5b3c21")


@dataclass(frozen=True, slots=True)
class SyncContext:
    """What every part of one worker's sync shares: built once by the engine."""

    store: Store
    client: FhirClient
    profile: Profile
    config: Config
    plan: WritePlan
    worker: str
    clock: Callable[[], datetime]
    marker_key: bytes


@dataclass(frozen=True, slots=True)
class Wait:
    """A record that cannot go yet (or needs nothing sent)."""

    state: JobState
    reason: str
    outcome_text: str | None = None
    delay_s: float | None = None  # look again after this long (an unknown write's grace)


@dataclass(slots=True)
class Write:
    """One resource write of a record's plan (one bundle entry, or one request in single mode)."""

    resource_type: str
    resource: dict[str, Any]
    full_url: str
    action: str  # create | update | amend | supersede | retract | provenance
    system: str = ""  # the identifier the ledger keys it by ("" for Provenance)
    value: str = ""
    ehr_id: str | None = None  # known from the ledger: update by id
    done: bool = False  # staged modes: already in the EHR (ledger-confirmed)
    # the version we last wrote or saw: an update by id is sent with If-Match,
    # so an edit made in the EHR meanwhile is never overwritten unseen
    if_match: str | None = None
    refreshed: bool = False  # the version was re-read after an If-Match conflict

    @property
    def token(self) -> str:
        from mappings.resources import search_token

        return search_token(self.system, self.value)

    def request(self, plan: WritePlan) -> dict[str, Any]:
        if self.resource_type == "Provenance":
            return {"method": "POST", "url": "Provenance"}
        if self.ehr_id:
            request = {"method": "PUT", "url": f"{self.resource_type}/{self.ehr_id}"}
            if self.if_match:
                request["ifMatch"] = f'W/"{self.if_match}"'
            return request
        if plan.conditional_update:
            return {"method": "PUT", "url": f"{self.resource_type}?identifier={self.token}"}
        if plan.conditional_create:
            return {"method": "POST", "url": self.resource_type,
                    "ifNoneExist": f"identifier={self.token}"}
        return {"method": "POST", "url": self.resource_type}


@dataclass(slots=True)
class Plan:
    job: Job
    record: EncounterRecord
    writes: list[Write]
    # the write whose presence in the EHR proves this plan was applied
    proof: Write | None = None
    # staged modes: urn:uuid of a write -> its literal reference once written
    ids: dict[str, str] = field(default_factory=dict)
    # what this EHR cannot carry of the record (reason codes), and how Part 2 travelled
    omitted: list[str] = field(default_factory=list)
    part2_form: str | None = None


@dataclass(slots=True)
class SyncSummary:
    claimed: int = 0
    states: Counter[str] = field(default_factory=Counter)
    bundles: int = 0
    requests: int = 0
    waited_s: float = 0.0
    errors: list[str] = field(default_factory=list)
    # outcomes are counted from the planning thread and the sending thread (pipelining)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, state: JobState, error: str | None = None) -> None:
        with self._lock:
            self.states[state.value] += 1
            if error is not None:
                self.errors.append(error)


@dataclass(frozen=True, slots=True)
class Refs:
    """References resolved before planning: literal ids, or conditional ones in `map`.

    ``organization`` and ``device`` are "" where the write plan neither writes nor
    matches them (the note then names the agency as custodian by display only).
    ``encounter`` is the EHR's own Encounter where the EHR owns them ("" for none).
    ``authenticator`` is the co-signing supervisor's Practitioner ("" for none), and
    ``earlier_authenticators`` those of earlier versions of the note by record version
    id (a superseded or retracted version keeps its own co-signer when re-written).
    """

    patient: str
    practitioner: str
    organization: str = ""
    device: str = ""
    encounter: str = ""
    authenticator: str = ""
    earlier_authenticators: dict[int, str] = field(default_factory=dict)


class LedgerView(Protocol):
    def ledger_latest(self, resource_type: str, system: str, value: str) -> LedgerEntry | None: ...

    def ledger_for_record(
        self, source: str, record_id: str, resource_type: str | None = None
    ) -> list[LedgerEntry]: ...

    def load_records(self, record_version_ids: Sequence[int]) -> dict[int, EncounterRecord]: ...


class EmptyLedger:
    """A ledger with nothing in it: what `peersync map` plans against (no store, no EHR)."""

    def ledger_latest(self, resource_type: str, system: str, value: str) -> LedgerEntry | None:
        return None

    def ledger_for_record(
        self, source: str, record_id: str, resource_type: str | None = None
    ) -> list[LedgerEntry]:
        return []

    def load_records(self, record_version_ids: Sequence[int]) -> dict[int, EncounterRecord]:
        return {}


class RecordLedger:
    """One record's ledger rows, read once per claimed batch (a LedgerView).

    Every row a record's writes produce carries its (source, id), and a batch
    never holds two versions of one record, so the snapshot answers every
    question planning asks about that record without another query.
    """

    def __init__(self, entries: list[LedgerEntry], store: Store) -> None:
        self.entries = entries
        self.store = store

    def ledger_latest(self, resource_type: str, system: str, value: str) -> LedgerEntry | None:
        for entry in reversed(self.entries):
            if (entry.resource_type, entry.identifier_system,
                    entry.identifier_value) == (resource_type, system, value):
                return entry
        return None

    def ledger_for_record(
        self, source: str, record_id: str, resource_type: str | None = None
    ) -> list[LedgerEntry]:
        newest: dict[tuple[str, str, str], LedgerEntry] = {}
        for entry in self.entries:
            if resource_type in (None, entry.resource_type):
                newest[(entry.resource_type, entry.identifier_system,
                        entry.identifier_value)] = entry
        return list(newest.values())

    def load_records(self, record_version_ids: Sequence[int]) -> dict[int, EncounterRecord]:
        return self.store.load_records(record_version_ids)


def urn(*parts: str) -> str:
    return f"urn:uuid:{uuid.uuid5(NAMESPACE, '|'.join(parts))}"


def version_of(resource: dict[str, Any]) -> str | None:
    return (resource.get("meta") or {}).get("versionId")


def as_int(value: str | None) -> int:
    try:
        return int(value or 0)
    except ValueError:
        return 0


def note_version_number(value: str) -> int:
    _, _, tail = value.rpartition(".v")
    return as_int(tail)
