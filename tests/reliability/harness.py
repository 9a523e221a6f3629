"""The reliability matrix, shared by tests/reliability and scripts/reliability.py.

Six cells: three capability modes of the ``generic`` preset (transaction, batch,
single without conditional requests, set by ``[ehr]`` overrides) and the three EHR
presets through their strict emulators (us-core-notes, epic, oracle-health). Each
cell runs on its own in-memory sekmet, behind (for the presets) its emulator,
behind a :class:`tests.faultproxy.FaultProxy`:

    connector -> FaultProxy -> [EhrEmulator] -> sekmet

Here: the cells, the record generator, one cell's stack (:func:`stack`) and the one
checker (:func:`check`) of all three scenarios (tests/reliability/scenarios.py:
faults on a fifth of requests, a worker SIGKILLed at each step of a send, the EHR
unreachable mid-sync). tests/reliability/runner.py runs cells side by side, each in
its own process.

The checker counts on the upstream sekmet itself, read directly by FHIR search:
every record's note exactly once (keyed by the session's start, which the generator
makes unique, so it works where the EHR drops identifiers), no note rewritten, no
Encounter, Provenance, Practitioner, Organization or Device made twice; every record
``synced`` in the store, none ``needs_attention``; nothing refused by the emulator;
``peersync audit verify`` exits 0.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from connector.ehr_sandbox import SekmetServer
from mappings.profile import default_profile_path, load_profile
from tests.emulators import EhrEmulator, seed_encounters, seed_organization, seed_practitioners
from tests.faultproxy import FaultProxy
from tests.integration.conftest import SOURCE, Env
from tests.integration.test_durability import (
    PATIENTS,
    SPECIALISTS,
    UNSETTLED,
    ehr_tally,
    fetch_all,
    seed,
    store_counts,
)

PEERSYNC = Path(sys.executable).parent / "peersync"

# -- the matrix --------------------------------------------------------------------

BUNDLE = ("/fhir",)
DOC = ("/fhir/DocumentReference",)


@dataclass(frozen=True)
class Cell:
    name: str
    preset: str
    ehr: dict[str, Any]  # [ehr] overrides
    rules: str | None  # the emulator's rule set; None: straight to sekmet
    # kill points: (phase, nth, paths) as FaultProxy.arm, or ("time", writes, ())
    kills: tuple[tuple[str, int, tuple[str, ...]], ...]
    seeded_encounters: bool = False  # the EHR keeps its own Encounters (epic, oracle)


_BUNDLE_KILLS = (("before", 1, BUNDLE), ("after", 1, BUNDLE), ("time", 3, ()))
_NOTE_KILLS = (("before", 1, DOC), ("after", 1, DOC), ("time", 3, ()))

CELLS: dict[str, Cell] = {c.name: c for c in (
    Cell("transaction", "generic", {"mode": "transaction", "max_bundle_entries": 15}, None,
         _BUNDLE_KILLS),
    Cell("batch", "generic", {"mode": "batch", "max_bundle_entries": 15}, None, _BUNDLE_KILLS),
    # every write its own request, not one conditional request (the emulator refuses any)
    Cell("single-unconditional", "generic", {"mode": "single", "conditional": False},
         "no-conditional",
         (("after", 1, ("/fhir/Practitioner",)),
          ("before", 1, ("/fhir/Encounter",)), ("after", 1, ("/fhir/Encounter",)),
          ("before", 1, DOC), ("after", 1, DOC),
          ("before", 1, ("/fhir/Provenance",)), ("after", 1, ("/fhir/Provenance",)),
          ("time", 5, ()))),
    Cell("us-core-notes", "us-core-notes", {}, "us-core-notes", _NOTE_KILLS),
    Cell("epic", "epic", {}, "epic", _NOTE_KILLS, seeded_encounters=True),
    Cell("oracle-health", "oracle-health", {}, "oracle-health", _NOTE_KILLS,
         seeded_encounters=True),
)}

# 20 % of requests, every kind of fault. A timeout costs a full read timeout and a 429's
# Retry-After (1 s) pauses every worker (the EHR gate), so those two take smaller shares.
FAULT_RATES = {"status_5xx": 0.05, "throttle_429": 0.01, "reset_before": 0.05,
               "reset_after": 0.04, "timeout_after": 0.02, "gateway_504_after": 0.03}
# Backoff and the EHR gate's probe interval scaled down (by config) about 8x: the same
# decisions, less waiting. give_up_after stays at its default (72 h).
SCALED_SYNC = {"retry_base_s": 0.25, "retry_max_s": 2.0, "probe_every_s": 0.1,
               "probe_max_s": 1.0}


# -- records -------------------------------------------------------------------------

_EPOCH = datetime(2026, 9, 1, 9, 0, tzinfo=timezone(timedelta(hours=-5)))
_TEXT = ("Met {given} at the drop-in centre to work on the housing application.\n"
         "Completed section {n}; follow-up next week.")


def make_records(n: int, prefix: str) -> list[dict[str, Any]]:
    """``n`` single-version records over six patients and three specialists, each session
    in its own three-hour slot (so a session's start identifies its note in any EHR)."""
    records = []
    for i in range(n):
        start = _EPOCH + timedelta(hours=3 * i)
        end = start + timedelta(minutes=50)
        participant_id, mrn = PATIENTS[i % len(PATIENTS)]
        specialist = SPECIALISTS[i % len(SPECIALISTS)]
        rid = f"{prefix}-{i:05d}"
        records.append({
            "id": rid,
            "participant": {"id": participant_id, "mrn": mrn},
            "specialist": specialist,
            "service": {"code": "H0038", "modality": "in_person", "setting": "community"},
            "start": start.isoformat(),
            "end": end.isoformat(),
            "note": {
                "id": f"N-{rid}",
                "text": _TEXT.format(given=specialist["given"], n=i),
                "signed_at": (end + timedelta(minutes=15)).isoformat(),
                "documentation_started": (end + timedelta(minutes=2)).isoformat(),
                "documentation_finished": (end + timedelta(minutes=14)).isoformat(),
            },
            "goals": ["housing"],
        })
    return records


def _utc(value: str) -> str:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(
        UTC).strftime("%Y-%m-%dT%H:%M")


# -- one cell's EHR, proxy and PeerSync home -----------------------------------------

@dataclass
class Stack:
    cell: Cell
    workdir: Path
    monkeypatch: pytest.MonkeyPatch
    database_url: str | None = None
    records: list[dict[str, Any]] = field(default_factory=list)
    sekmet: Any = None
    emulator: EhrEmulator | None = None
    proxy: FaultProxy | None = None
    env: Env | None = None
    seeded_encounters: int = 0

    @property
    def upstream(self) -> str:
        return str(self.sekmet.base_url)

    def ids(self) -> list[str]:
        return [r["id"] for r in self.records]

    def cli(self, *args: str, expect: int | None = 0) -> Any:
        assert self.env is not None
        self.monkeypatch.setenv("PEERSYNC_HOME", str(self.env.home))
        return self.env.run(*args, expect=expect)


@contextlib.contextmanager
def stack(cell: Cell, workdir: Path, monkeypatch: pytest.MonkeyPatch, records: list[dict[str, Any]],
          *, database_url: str | None = None, hold_s: float = 1.5,
          ehr: dict[str, Any] | None = None, sync: dict[str, Any] | None = None,
          slow_after_s: float | None = None) -> Iterator[Stack]:
    """sekmet seeded as the agency's EHR, the emulator, the proxy (no faults yet), PeerSync
    initialised with the cell's preset and overrides, ``config check`` passed, the records
    imported. Everything is stopped on the way out."""
    workdir.mkdir(parents=True, exist_ok=True)
    st = Stack(cell, workdir, monkeypatch, database_url, records)
    with contextlib.ExitStack() as stop:
        st.sekmet = SekmetServer(workdir / "ehr")
        st.sekmet.start()
        stop.callback(st.sekmet.stop)
        org_id = _seed(st)
        upstream = st.upstream.removesuffix("/fhir")
        if cell.rules is not None:
            st.emulator = EhrEmulator(st.upstream, cell.rules).start()
            stop.callback(st.emulator.stop)
            upstream = st.emulator.origin
        st.proxy = FaultProxy(upstream, seed=20261120, methods={"GET", "POST", "PUT"},
                              hold_s=hold_s, slow_after_s=slow_after_s).start()
        stop.callback(_stop_proxy, st.proxy)
        db = database_url or f"sqlite:///{workdir / 'peersync.db'}"
        st.env = Env(workdir / "home", st.proxy.base_url, db, monkeypatch,
                     init_args=("--preset", cell.preset))
        keys = {**cell.ehr, **(ehr or {})}
        if cell.preset == "epic":
            keys["organization_id"] = org_id
        st.env.set_keys("ehr", **keys)
        st.env.set_keys("sync", **{"lookup_grace_s": 0.5, **SCALED_SYNC, **(sync or {})})
        check = st.cli("config", "check", expect=None)
        assert check.exit_code == 0, check.output
        path = workdir / "records.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in records), "utf-8")
        st.cli("import", "--source", SOURCE, str(path))
        yield st


def _stop_proxy(proxy: FaultProxy) -> None:
    proxy.wait_outage_over(120)
    proxy.stop()


def _seed(st: Stack) -> str:
    """What the agency's EHR holds before PeerSync: patients; for the presets also the
    practitioners and the Organization (matched, never created) and, where the EHR keeps
    its own, each session's Encounter (five minutes either side, as the front desk booked)."""
    seed(st.upstream)
    if st.cell.preset == "generic":
        return ""
    profile = load_profile(default_profile_path())
    org_id = seed_organization(st.upstream, profile)
    seed_practitioners(st.upstream, profile, SPECIALISTS)
    if st.cell.seeded_encounters:
        patients = {p["identifier"][0]["value"]: p["id"]
                    for p in fetch_all(st.upstream, "Patient")}
        sessions = [(patients[r["participant"]["mrn"]],
                     (datetime.fromisoformat(r["start"]) - timedelta(minutes=5)).isoformat(),
                     (datetime.fromisoformat(r["end"]) + timedelta(minutes=10)).isoformat())
                    for r in st.records]
        st.seeded_encounters = len(seed_encounters(st.upstream, sessions))
    return org_id


# -- the checker -------------------------------------------------------------------------

def audit_verify(home: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("PEERSYNC_EHR_URL", "PEERSYNC_DATABASE_URL")}
    return subprocess.run([str(PEERSYNC), "audit", "verify"], env={**env, "PEERSYNC_HOME":
                          str(home)}, capture_output=True, text=True, timeout=120, check=False)


def check(st: Stack) -> dict[str, Any]:
    """Exactly once, as the EHR itself shows it (sekmet read directly), and the store."""
    assert st.env is not None
    n = len(st.records)
    counts = store_counts(st.env)
    docs = fetch_all(st.upstream, "DocumentReference")
    per_session = Counter(_utc(d["context"]["period"]["start"]) for d in docs
                          if (d.get("context") or {}).get("period", {}).get("start"))
    expected = {_utc(r["start"]) for r in st.records}
    duplicates: Counter[str] = Counter()
    duplicates["notes"] = (sum(c - 1 for c in per_session.values() if c > 1)
                           + len(set(per_session) - expected)
                           + sum(1 for d in docs if (d.get("meta") or {}).get("versionId")
                                 not in ("1", None)))
    lost = len(expected - set(per_session))
    encounters = fetch_all(st.upstream, "Encounter")
    practitioners = Counter(i["value"] for p in fetch_all(st.upstream, "Practitioner")
                            for i in p.get("identifier", [])[:1])
    duplicates["practitioners"] = sum(c - 1 for c in practitioners.values() if c > 1)
    duplicates["organizations"] = max(0, len(fetch_all(st.upstream, "Organization")) - 1)
    duplicates["devices"] = max(0, len(fetch_all(st.upstream, "Device")) - 1)
    if st.cell.preset == "generic":
        tally = ehr_tally(st.upstream, st.ids())
        duplicates["encounters"] = tally["duplicate_encounters"]
        duplicates["provenance"] = tally["duplicate_provenance"]
        duplicates["rewritten"] = tally["rewritten"]
        lost = max(lost, tally["lost_in_ehr"])
    else:  # the EHR's own Encounters (or none: us-core-notes contains it in the note)
        duplicates["encounters"] = max(0, len(encounters) - st.seeded_encounters)
    verified = audit_verify(st.env.home)
    return {
        "records": n,
        "synced": counts["synced"],
        "needs_attention": counts["needs_attention"],
        "unsettled": {s: counts[s] for s in UNSETTLED if counts[s]},
        "other_states": {s: c for s, c in counts.items() if c and s not in (
            "synced", "needs_attention", *UNSETTLED)},
        "duplicates": sum(duplicates.values()),
        "duplicates_by_kind": {k: v for k, v in duplicates.items() if v},
        "lost": max(n - counts["synced"], lost),
        "refused": len(st.emulator.refused) if st.emulator else 0,
        "refusals": [tuple(r) for r in (st.emulator.refused if st.emulator else [])[:3]],
        "audit_verify": verified.returncode,
        "audit_output": (verified.stdout + verified.stderr).strip()[-300:],
    }


def assert_exactly_once(result: dict[str, Any]) -> None:
    assert result["synced"] == result["records"], result
    assert result["needs_attention"] == 0, result
    assert result["lost"] == 0 and result["duplicates"] == 0, result
    assert result["refused"] == 0, result
    assert result["audit_verify"] == 0, result
