"""The raw floor, the naive script and mapping alone: PeerSync's own writes, without PeerSync.

Every write comes from the real planner (``connector.sync.plan_record``, the
generic preset, literal references to the seeded Patients and Practitioners)
and, for the raw floor, the real ``bundle_for``, packed as the engine packs a
claim (``max_bundle_entries // 3`` records, at most ``max_bundle_entries``
entries). First versions are planned against an empty ledger; amendments
against a ledger of what the first pass wrote (so they supersede the note
they replace, as in a sync). Building is timed apart: that is "mapping alone".
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import requests

from .records import SOURCE, Dataset, Seeded

JSON = {"Content-Type": "application/fhir+json; charset=utf-8", "Accept": "application/fhir+json",
        "Prefer": "return=representation"}
MAX_ENTRIES = 50


class DictLedger:
    """A LedgerView over what an earlier pass wrote (confirmed entries)."""

    def __init__(self) -> None:
        self.entries: dict[tuple[str, str], list[Any]] = {}  # (source, record id) -> entries
        self.latest: dict[tuple[str, str, str], Any] = {}
        self.records: dict[int, Any] = {}

    def add(self, record: Any, rvid: int, write: Any, ehr_id: str, version: str | None) -> None:
        from connector.store import LedgerEntry

        self.records[rvid] = record
        entry = LedgerEntry(write.resource_type, write.system, write.value, ehr_id, version,
                            write.action, "confirmed", rvid)
        self.entries.setdefault((record.source, record.id), []).append(entry)
        self.latest[(write.resource_type, write.system, write.value)] = entry

    def ledger_latest(self, resource_type: str, system: str, value: str) -> Any:
        return self.latest.get((resource_type, system, value))

    def ledger_for_record(self, source: str, record_id: str,
                          resource_type: str | None = None) -> list[Any]:
        return [e for e in self.entries.get((source, record_id), [])
                if resource_type in (None, e.resource_type)]

    def load_records(self, ids: Sequence[int]) -> dict[int, Any]:
        return {i: self.records[i] for i in ids if i in self.records}


@dataclass
class Planned:
    record: Any
    rvid: int
    writes: list[Any]


@dataclass
class Pass:
    plans: list[Planned] = field(default_factory=list)
    bundles: list[tuple[bytes, list[Planned]]] = field(default_factory=list)
    build_wall_s: float = 0.0
    build_cpu_s: float = 0.0


class Planner:
    """Plans the dataset's record versions against one seeded EHR (generic preset)."""

    def __init__(self, data: Dataset, seeded: Seeded, profile: Any, base_url: str) -> None:
        from connector.config import EhrConfig
        from connector.records import EncounterRecord
        from connector.writeplan import resolve_plan

        self.data, self.seeded, self.profile = data, seeded, profile
        self.plan = resolve_plan(EhrConfig(base_url=base_url, preset="generic"))
        self.records = [EncounterRecord.from_dict(SOURCE, r) for r in data.records]
        self.recorded = datetime.now(UTC).replace(microsecond=0)

    def refs(self, record: Any) -> Any:
        from connector.sync import Refs

        return Refs(patient=f"Patient/{self.seeded.patients[record.participant.mrn]}",
                    practitioner=f"Practitioner/{self.seeded.practitioners[record.specialist.id]}",
                    organization=f"Organization/{self.seeded.organization}",
                    device=f"Device/{self.seeded.device}" if self.seeded.device else "")

    def build(self, first: bool, ledger: Any, *, bundles: bool = True) -> Pass:
        """Plan one pass (first versions, or the amendments) and serialise its bundles."""
        from connector.sync import plan_record

        span = range(0, self.data.first) if first else range(self.data.first, len(self.records))
        out = Pass()
        wall, cpu = time.perf_counter(), time.process_time()
        per_claim = max(1, MAX_ENTRIES // 3)
        claim: list[Planned] = []
        for i in span:
            record = self.records[i]
            planned = plan_record(record, self.refs(record), key=str(i + 1), profile=self.profile,
                                  plan=self.plan, ledger=ledger, recorded=self.recorded,
                                  ledger_key=str(i + 1))
            claim.append(Planned(record, i + 1, planned.writes))
            if len(claim) == per_claim or i == span[-1]:
                out.plans.extend(claim)
                if bundles:
                    self._pack(claim, out)
                claim = []
        out.build_wall_s = time.perf_counter() - wall
        out.build_cpu_s = time.process_time() - cpu
        return out

    def _pack(self, claim: list[Planned], out: Pass) -> None:
        from connector.sync import bundle_for

        group: list[Planned] = []
        size = 0
        for planned in claim + [None]:  # type: ignore[list-item]
            if group and (planned is None or size + len(planned.writes) > MAX_ENTRIES):
                writes = [w for p in group for w in p.writes]
                body = json.dumps(bundle_for(writes, self.plan), separators=(",", ":"))
                out.bundles.append((body.encode(), group))
                group, size = [], 0
            if planned is not None:
                group.append(planned)
                size += len(planned.writes)


def raw_floor(planner: Planner, base_url: str) -> dict[str, Any]:
    """Pre-built bundles POSTed back to back on one keep-alive session."""
    from connector.fhir_client import entry_results

    ledger = DictLedger()
    posted = 0.0
    requests_sent = 0
    cpu = {"wall": 0.0, "cpu": 0.0}
    with requests.Session() as http:
        for first in (True, False):
            built = planner.build(first, ledger)
            cpu["wall"] += built.build_wall_s
            cpu["cpu"] += built.build_cpu_s
            answers: list[bytes] = []
            start = time.perf_counter()
            for body, _ in built.bundles:
                resp = http.post(base_url, data=body, headers=JSON, timeout=120)
                if resp.status_code != 200:
                    raise RuntimeError(f"raw floor: transaction refused ({resp.status_code}): "
                                       f"{resp.text[:300]}")
                answers.append(resp.content)
            posted += time.perf_counter() - start
            requests_sent += len(built.bundles)
            for answer, (_, group) in zip(answers, built.bundles, strict=True):
                results = entry_results(json.loads(answer))
                writes = [(p, w) for p in group for w in p.writes]
                for (p, w), result in zip(writes, results, strict=True):
                    ledger.add(p.record, p.rvid, w, str(result.id), result.version_id)
    n = len(planner.records)
    return {
        "records": n, "seconds": round(posted, 3), "records_per_s": round(n / posted, 1),
        "requests": requests_sent,
        "mapping": {"records": n, "wall_s": round(cpu["wall"], 3),
                    "cpu_s": round(cpu["cpu"], 3),
                    "records_per_s_wall": round(n / cpu["wall"], 1),
                    "records_per_cpu_s": round(n / max(cpu["cpu"], 1e-9), 1)},
    }


def naive(planner: Planner, base_url: str) -> dict[str, Any]:
    """A naive script: a patient search per record, one POST/PUT per resource, no session."""
    from mappings.resources import search_token

    base = base_url.rstrip("/")
    ledger = DictLedger()
    took = 0.0
    sent = 0
    for first in (True, False):
        built = planner.build(first, ledger, bundles=False)  # planning is not timed here
        start = time.perf_counter()
        for planned in built.plans:
            mrn = planned.record.participant.mrn
            resp = requests.get(f"{base}/Patient", timeout=60, headers={"Accept": JSON["Accept"]},
                                params={"identifier": search_token(planner.profile.mrn_system,
                                                                   mrn)})
            resp.raise_for_status()
            sent += 1
            ids: dict[str, str] = {}
            for write in planned.writes:
                resource = dict(write.resource, id=write.ehr_id) if write.ehr_id \
                    else write.resource
                text = json.dumps(resource)
                for urn, literal in ids.items():
                    text = text.replace(urn, literal)
                if write.ehr_id:
                    resp = requests.put(f"{base}/{write.resource_type}/{write.ehr_id}",
                                        data=text.encode(), headers=JSON, timeout=60)
                else:
                    resp = requests.post(f"{base}/{write.resource_type}", data=text.encode(),
                                         headers=JSON, timeout=60)
                sent += 1
                if resp.status_code >= 300:
                    raise RuntimeError(f"naive: {write.resource_type} refused "
                                       f"({resp.status_code}): {resp.text[:300]}")
                body = resp.json()
                ids[write.full_url] = f"{write.resource_type}/{body['id']}"
                ledger.add(planned.record, planned.rvid, write, str(body["id"]),
                           (body.get("meta") or {}).get("versionId"))
        took += time.perf_counter() - start
    n = len(planner.records)
    return {"records": n, "seconds": round(took, 3), "records_per_s": round(n / took, 1),
            "requests": sent}
