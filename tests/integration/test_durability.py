"""Durability: faults between the connector and the EHR, workers killed mid-send, and
several workers on one PostgreSQL queue. Nothing duplicated, nothing lost.

Every test prints its measured figures on one ``DURABILITY`` line (run pytest
with ``-s`` or ``-rP`` to see them): records, faults injected by kind,
duplicates, losses, seconds, records per second.

What "duplicate" and "lost" mean here, counted on the EHR itself (sekmet, read
directly, not through the proxy):

- duplicate: an encounter or note-version identifier held by more than one
  resource, more Provenance than changes (one per record), or an Encounter or
  note written twice (``meta.versionId`` above 1: an applied write re-sent);
- lost: a record that is not ``synced`` in the store, or whose Encounter or
  note version is not in the EHR.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from sqlalchemy import func, select

from connector import retry
from connector.demo import seed_patients
from connector.fhir_client import FhirClient
from connector.schema import audit_events, jobs, ledger
from mappings.profile import default_profile_path, load_profile
from tests.faultproxy import FAULT_KINDS, FaultProxy
from tests.integration.conftest import (
    DATA,
    ENC_SYSTEM,
    FIRST_IMPORT,
    NOTE_VERSION_SYSTEM,
    SOURCE,
    Env,
)

pytestmark = pytest.mark.integration

PEERSYNC = Path(sys.executable).parent / "peersync"
# (participant id, MRN): the six patients seed_patients puts in the EHR.
PATIENTS = [("P-1001", "MRN-55821"), ("P-1002", "MRN-60210"), ("P-1003", "MRN-61877"),
            ("P-1005", "MRN-70011"), ("P-1006", "MRN-70012"), ("P-1007", "MRN-70013")]
SPECIALISTS = [
    {"id": "S-17", "npi": "1234567893", "given": "Alex", "family": "Kim", "credential": "CPRS"},
    {"id": "S-22", "given": "Priya", "family": "Natarajan", "credential": "CPSS"},
    {"id": "S-31", "given": "Casey", "family": "Whitfield"},
]
UNSETTLED = ("pending", "in_flight", "retry_scheduled", "unknown")


# -- helpers ---------------------------------------------------------------------

def write_records(path: Path, n: int, *, prefix: str) -> list[str]:
    """``n`` copies of the in-person sample, each its own record and note, over six patients."""
    base = json.loads((DATA / "in-person-session.json").read_text("utf-8"))
    ids = []
    with path.open("w", encoding="utf-8") as out:
        for i in range(n):
            record = json.loads(json.dumps(base))
            record["id"] = f"{prefix}-{i:05d}"
            record["note"]["id"] = f"N-{prefix}-{i:05d}"
            participant_id, mrn = PATIENTS[i % len(PATIENTS)]
            record["participant"] = {"id": participant_id, "mrn": mrn}
            record["specialist"] = SPECIALISTS[i % len(SPECIALISTS)]
            out.write(json.dumps(record) + "\n")
            ids.append(record["id"])
    return ids


def seed(base_url: str) -> None:
    profile = load_profile(default_profile_path())
    with FhirClient(base_url=base_url, timeout_s=10) as client:
        seed_patients(client, profile, [DATA / n for n in [*FIRST_IMPORT, "amendment.json"]])


def fetch_all(base_url: str, resource_type: str) -> list[dict[str, Any]]:
    """Every resource of a type, read from the EHR directly (all pages)."""
    out: list[dict[str, Any]] = []
    url: str | None = f"{base_url}/{resource_type}?_count=1000"
    pages = 0
    while url and pages < 50:
        resp = requests.get(url, timeout=30)
        resp.raise_for_status()
        bundle = resp.json()
        out.extend(e["resource"] for e in bundle.get("entry", [])
                   if (e.get("search") or {}).get("mode", "match") == "match")
        url = next((link["url"] for link in bundle.get("link", [])
                    if link.get("relation") == "next"), None)
        pages += 1
    return out


def ehr_tally(base_url: str, record_ids: list[str]) -> dict[str, Any]:
    """Duplicates and losses as the EHR shows them."""
    encounters = fetch_all(base_url, "Encounter")
    docs = fetch_all(base_url, "DocumentReference")
    provenance = fetch_all(base_url, "Provenance")
    enc_ids = Counter(i["value"] for r in encounters for i in r.get("identifier", [])
                      if i.get("system") == ENC_SYSTEM)
    note_ids = Counter(i["value"] for r in docs for i in r.get("identifier", [])
                       if i.get("system") == NOTE_VERSION_SYSTEM)
    expected_notes = {f"N-{rid}.v1" for rid in record_ids}
    # Each Provenance points at the Encounter (and note) of one change.
    prov_targets = Counter(t["reference"] for p in provenance for t in p.get("target", [])
                           if t["reference"].startswith("Encounter/"))
    enc_refs = {f"Encounter/{r['id']}" for r in encounters}
    tally: dict[str, Any] = {
        "encounters": len(encounters),
        "documents": len(docs),
        "provenance": len(provenance),
        "duplicate_encounters": sum(n - 1 for n in enc_ids.values() if n > 1)
        + sum(1 for r in encounters if not any(i.get("system") == ENC_SYSTEM
                                               for i in r.get("identifier", []))),
        "duplicate_documents": sum(n - 1 for n in note_ids.values() if n > 1),
        "duplicate_provenance": max(0, len(provenance) - len(record_ids))
        + sum(n - 1 for n in prov_targets.values() if n > 1),
        "rewritten": sum(1 for r in encounters + docs
                         if (r.get("meta") or {}).get("versionId") not in ("1", None)),
        "lost_in_ehr": len(set(record_ids) - set(enc_ids))
        + len(expected_notes - set(note_ids))
        + len(enc_refs - set(prov_targets)),
        "practitioners": Counter(i["value"] for r in fetch_all(base_url, "Practitioner")
                                 for i in r.get("identifier", [])[:1]),
        "organizations": len(fetch_all(base_url, "Organization")),
        "devices": len(fetch_all(base_url, "Device")),
    }
    tally["duplicates"] = (tally["duplicate_encounters"] + tally["duplicate_documents"]
                           + tally["duplicate_provenance"] + tally["rewritten"])
    return tally


def store_counts(env: Env) -> dict[str, int]:
    store = env.store()
    try:
        return store.counts_by_state()
    finally:
        store.close()


def assert_exactly_once(tally: dict[str, Any], counts: dict[str, int], n: int) -> None:
    lost = (n - counts["synced"]) + tally["lost_in_ehr"]
    assert counts["synced"] == n, counts
    assert tally["duplicates"] == 0 and lost == 0, tally
    assert tally["encounters"] == n and tally["documents"] == n and tally["provenance"] == n, tally
    # matched or created once each, even with lost answers and dead workers
    assert tally["practitioners"] == Counter({"S-17": 1, "S-22": 1, "S-31": 1}), tally
    assert tally["organizations"] == 1 and tally["devices"] == 1, tally


def report(name: str, **figures: Any) -> None:
    print(f"\nDURABILITY {name}: " + ", ".join(f"{k}={v}" for k, v in figures.items()),
          flush=True)


def make_env(tmp_path: Path, base_url: str, database_url: str,
             monkeypatch: pytest.MonkeyPatch, **settings: Any) -> Env:
    env = Env(tmp_path / "home", base_url, database_url, monkeypatch)
    env.configure(**settings)
    return env


# -- worker processes --------------------------------------------------------------

class Workers:
    """Real `peersync worker` processes, each in its own session; all killed in close()."""

    def __init__(self, home: Path, logs: Path) -> None:
        self.home = home
        self.logs = logs
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, poll: float = 0.2) -> subprocess.Popen[bytes]:
        env = {k: v for k, v in os.environ.items()
               if k not in ("PEERSYNC_EHR_URL", "PEERSYNC_DATABASE_URL")}
        env["PEERSYNC_HOME"] = str(self.home)
        self.logs.mkdir(parents=True, exist_ok=True)
        log = open(self.logs / f"worker-{len(self.procs)}.log", "wb")  # noqa: SIM115
        try:
            proc = subprocess.Popen(
                [str(PEERSYNC), "worker", "--poll", str(poll)], env=env, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True,
            )
        finally:
            log.close()
        self.procs.append(proc)
        return proc

    @staticmethod
    def kill(proc: subprocess.Popen[bytes], sig: int = signal.SIGKILL) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                self.kill(proc)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)

    def kill_at(self, proxy: FaultProxy, phase: str, nth: int, paths: tuple[str, ...]) -> None:
        """Start a worker and SIGKILL it at one kill point, then let the proxy go on: held
        ``phase`` ("before"/"after") the ``nth`` write to ``paths``, or ("time") as soon as
        ``nth`` more writes were applied."""
        if phase == "time":
            target = proxy.counts["writes_applied"] + nth
            proc = self.start()
            assert proxy.wait_writes(target, 60), self.output()
        else:
            proxy.arm(phase, nth, paths)
            proc = self.start()
            assert proxy.paused.wait(60), (phase, nth, paths, self.output())
        self.kill(proc)
        assert proc.wait(timeout=10) == -signal.SIGKILL
        proxy.release()

    def output(self) -> str:
        return "\n".join(p.read_text("utf-8", "replace")[-2000:]
                         for p in sorted(self.logs.glob("worker-*.log")))


@contextlib.contextmanager
def workers(home: Path, logs: Path) -> Iterator[Workers]:
    pool = Workers(home, logs)
    try:
        yield pool
    finally:
        pool.close()


def wait_settled(env: Env, n: int, *, timeout_s: float, pool: Workers | None = None
                 ) -> dict[str, int]:
    """Poll the store until nothing is left to send (bounded)."""
    deadline = time.monotonic() + timeout_s
    counts = store_counts(env)
    while time.monotonic() < deadline:
        counts = store_counts(env)
        if not any(counts[s] for s in UNSETTLED):
            return counts
        if pool is not None:
            dead = [p.returncode for p in pool.procs if p.poll() is not None
                    and p.returncode not in (0, -signal.SIGKILL)]
            assert not dead, (dead, pool.output())
        time.sleep(0.25)
    extra = pool.output() if pool else ""
    raise AssertionError(f"not settled within {timeout_s:.0f} s: {counts}\n{extra}")


# -- 1. a fault-injecting proxy between the connector and the EHR ------------------

FAULT_RATES = {"status_5xx": 0.04, "throttle_429": 0.04, "reset_before": 0.05,
               "reset_after": 0.05, "timeout_after": 0.03, "gateway_504_after": 0.04}


def outcome_events(env: Env) -> Counter[str]:
    """From the audit log: how often jobs went to each state (unknown: an answer was lost),
    and how each got to synced (``synced:sent``, ``synced:settled-by-lookup``, ...)."""
    store = env.store()
    try:
        with store.engine.connect() as conn:
            rows = conn.execute(
                select(audit_events.c.state_to, audit_events.c.detail)
                .where(audit_events.c.action == "job.state")).all()
    finally:
        store.close()
    tally: Counter[str] = Counter()
    for state, detail in rows:
        tally[state] += 1
        if state == "synced":
            tally[f"synced:{(detail or {}).get('reason') or 'sent'}"] += 1
    return tally


def how_synced(outcomes: Counter[str]) -> str:
    return "|".join(f"{k.split(':', 1)[1]}={v}" for k, v in sorted(outcomes.items())
                    if k.startswith("synced:"))


@pytest.mark.parametrize(("mode", "n", "settings", "methods"), [
    # many bundles: 5 records per transaction, 100 transactions before any retry
    ("transaction", 500, {"mode": "transaction", "max_bundle_entries": 15}, {"POST", "PUT"}),
    # idempotency rests on the ledger and look-ups alone; the look-ups are faulted too
    ("single-unconditional", 150, {"mode": "single", "conditional": False,
                                   "max_bundle_entries": 30}, {"POST", "PUT", "GET"}),
], ids=["transaction-500", "single-unconditional-150"])
def test_faults_between_connector_and_ehr(
    tmp_path: Path, sekmet: Any, monkeypatch: pytest.MonkeyPatch,
    mode: str, n: int, settings: dict[str, Any], methods: set[str],
) -> None:
    # Time compressed: the backoff of a transient failure starts at 0.25 s, not 2 s (the
    # decisions are the same; a 429's Retry-After of 1 s is still honoured).
    monkeypatch.setattr(retry, "BASE_DELAY_S", 0.25)
    seed(sekmet.base_url)
    upstream = sekmet.base_url.removesuffix("/fhir")
    proxy = FaultProxy(upstream, seed=20261120, rates=FAULT_RATES, max_faults=60,
                       methods=methods, hold_s=1.0)
    proxy.start()
    try:
        env = make_env(tmp_path, proxy.base_url, f"sqlite:///{tmp_path / 'peersync.db'}",
                       monkeypatch, timeout_s=0.5, max_wait_s=60, probe_every_s=0.2,
                       probe_max_s=1, **settings)  # the EHR gate's pauses scaled down
        ids = write_records(tmp_path / "records.jsonl", n, prefix=f"dur-{mode[:6]}")
        env.run("import", "--source", SOURCE, str(tmp_path / "records.jsonl"))
        started = time.monotonic()
        runs = 0
        counts = store_counts(env)
        while runs < 4 and (runs == 0 or any(counts[s] for s in UNSETTLED)):
            env.run("sync", expect=None)  # exit 1 while some records were retried: expected
            runs += 1
            counts = store_counts(env)
        elapsed = time.monotonic() - started
    finally:
        proxy.stop()
    faults = proxy.faults
    tally = ehr_tally(sekmet.base_url, ids)
    outcomes = outcome_events(env)
    report(f"faults/{mode}", records=n, synced=counts["synced"], sync_runs=runs,
           faults_total=sum(faults.values()), **faults,
           requests=proxy.counts["requests"], writes=proxy.counts["writes"],
           jobs_unknown=outcomes["unknown"], jobs_retry_scheduled=outcomes["retry_scheduled"],
           how_synced=how_synced(outcomes),
           duplicates=tally["duplicates"],
           lost=(n - counts["synced"]) + tally["lost_in_ehr"],
           provenance=tally["provenance"], seconds=round(elapsed, 1),
           records_per_s=round(n / elapsed, 1))
    assert all(faults[k] > 0 for k in FAULT_KINDS), faults  # every kind was exercised
    assert_exactly_once(tally, counts, n)


# -- 2. a worker killed with SIGKILL mid-send, then restarted -----------------------

# (phase, nth, paths): pause that write at the proxy, SIGKILL the worker while it is
# held (before: the EHR never saw it; after: the EHR applied it, the answer is lost),
# or ("time", writes, ()): SIGKILL as soon as that many more writes were applied.
KILLS = {
    "transaction": [("before", 1, ("/fhir",)), ("after", 3, ("/fhir",)),
                    ("time", 5, ()), ("after", 7, ("/fhir",))],
    "single-unconditional": [("after", 2, ("/fhir/Encounter",)),
                             ("before", 3, ("/fhir/DocumentReference",)),
                             ("after", 4, ("/fhir/Provenance",)),
                             ("time", 11, ())],
}


@pytest.mark.parametrize(("mode", "n", "settings"), [
    ("transaction", 200, {"mode": "transaction", "max_bundle_entries": 9}),
    ("single-unconditional", 100, {"mode": "single", "conditional": False,
                                   "max_bundle_entries": 15}),
], ids=["transaction-200", "single-unconditional-100"])
def test_worker_killed_mid_send_then_restarted(
    tmp_path: Path, sekmet: Any, monkeypatch: pytest.MonkeyPatch,
    mode: str, n: int, settings: dict[str, Any],
) -> None:
    seed(sekmet.base_url)
    upstream = sekmet.base_url.removesuffix("/fhir")
    # a slower EHR (every write held 10 ms) so that a timed kill lands mid-send
    proxy = FaultProxy(upstream, delay_s=0.01)
    proxy.start()
    kills: list[str] = []
    try:
        env = make_env(tmp_path, proxy.base_url, f"sqlite:///{tmp_path / 'peersync.db'}",
                       monkeypatch, lease_s=3, renew_every_s=1, timeout_s=10, **settings)
        ids = write_records(tmp_path / "records.jsonl", n, prefix=f"kill-{mode[:6]}")
        env.run("import", "--source", SOURCE, str(tmp_path / "records.jsonl"))
        started = time.monotonic()
        with workers(env.home, tmp_path / "logs") as pool:
            for phase, nth, paths in KILLS[mode]:
                pool.kill_at(proxy, phase, nth, paths)
                counts = store_counts(env)
                kills.append(f"{phase}:{'|'.join(paths) or 'any'}#{nth}"
                             f"(at={time.monotonic() - started:.1f}s,"
                             f"in_flight={counts['in_flight']},synced={counts['synced']})")
            assert store_counts(env)["synced"] < n, "the kills came too late to land mid-send"
            final = pool.start()
            counts = wait_settled(env, n, timeout_s=90, pool=pool)
            final.send_signal(signal.SIGTERM)
            assert final.wait(timeout=30) == 0, pool.output()
        elapsed = time.monotonic() - started
    finally:
        proxy.stop()
    tally = ehr_tally(sekmet.base_url, ids)
    report(f"sigkill/{mode}", records=n, kills=len(kills), points=" ".join(kills),
           how_synced=how_synced(outcome_events(env)),
           duplicates=tally["duplicates"], lost=(n - counts["synced"]) + tally["lost_in_ehr"],
           provenance=tally["provenance"], seconds=round(elapsed, 1))
    assert_exactly_once(tally, counts, n)


# -- 3. four worker processes on one PostgreSQL queue ------------------------------

def test_four_workers_on_postgresql(
    tmp_path: Path, sekmet: Any, pg_url: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    n = 2000
    seed(sekmet.base_url)
    env = make_env(tmp_path, sekmet.base_url, pg_url, monkeypatch, mode="transaction")
    ids = write_records(tmp_path / "records.jsonl", n, prefix="pg4")
    env.run("import", "--source", SOURCE, str(tmp_path / "records.jsonl"))
    with workers(env.home, tmp_path / "logs") as pool:
        started = time.monotonic()
        procs = [pool.start() for _ in range(4)]
        counts = wait_settled(env, n, timeout_s=240, pool=pool)
        elapsed = time.monotonic() - started
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        codes = [proc.wait(timeout=30) for proc in procs]
        assert codes == [0, 0, 0, 0], (codes, pool.output())
    store = env.store()
    try:
        with store.engine.connect() as conn:
            synced_events = Counter(dict(conn.execute(
                select(audit_events.c.job_id, func.count())
                .where(audit_events.c.action == "job.state",
                       audit_events.c.state_to == "synced")
                .group_by(audit_events.c.job_id)).all()))
            claim_rows = conn.execute(
                select(audit_events.c.job_id, audit_events.c.at, audit_events.c.actor,
                       audit_events.c.state_from)
                .where(audit_events.c.action == "job.claimed")
                .order_by(audit_events.c.seq)).all()
            claims = Counter(dict(conn.execute(
                select(audit_events.c.job_id, func.count())
                .where(audit_events.c.action == "job.claimed")
                .group_by(audit_events.c.job_id)).all()))
            states = Counter(dict(conn.execute(
                select(jobs.c.state, func.count()).group_by(jobs.c.state)).all()))
            per_worker = sorted(n for _, n in conn.execute(
                select(audit_events.c.actor, func.count())
                .where(audit_events.c.action == "job.state",
                       audit_events.c.state_to == "synced")
                .group_by(audit_events.c.actor)).all())
            creates = Counter(dict(conn.execute(
                select(ledger.c.identifier_value, func.count())
                .where(ledger.c.resource_type == "Encounter")
                .group_by(ledger.c.identifier_value)).all()))
    finally:
        store.close()
    tally = ehr_tally(sekmet.base_url, ids)
    # the audit chain (HMAC-linked events, written by four processes at once) verifies
    verified = subprocess.run([str(PEERSYNC), "audit", "verify"], env={
        **os.environ, "PEERSYNC_HOME": str(env.home)}, capture_output=True, text=True,
        timeout=120, check=False)
    report("postgresql/4-workers", records=n, synced_per_worker=per_worker,
           duplicates=tally["duplicates"], lost=(n - counts["synced"]) + tally["lost_in_ehr"],
           seconds=round(elapsed, 1), records_per_s=round(n / elapsed, 1),
           audit_verify=f"exit {verified.returncode}: {verified.stdout.strip()}")
    assert states == Counter({"synced": n})
    assert len(synced_events) == n and set(synced_events.values()) == {1}
    twice = sorted(job for job, count in claims.items() if count > 1)
    assert len(claims) == n and not twice, (
        "a job was taken twice", [r for r in claim_rows if twice and r.job_id == twice[0]])
    assert len(creates) == n and set(creates.values()) == {1}  # one ledger write per Encounter
    assert len(per_worker) == 4, per_worker  # all four took part
    assert_exactly_once(tally, counts, n)
    assert verified.returncode == 0, (verified.stdout, verified.stderr)


# -- 4. workers starting together match or create shared resources once ------------

def test_workers_starting_together_create_agency_and_practitioner_once(
    tmp_path: Path, sekmet: Any, database_url: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A conditional create is racy on sekmet (search, then create, not atomic): four
    workers that start at the same instant must still make one Organization, one Device
    and one Practitioner per staff id. Several rounds, each with fresh identifiers."""
    import dataclasses
    import threading

    from connector.config import load_config
    from connector.records import EncounterRecord
    from connector.store import Store
    from connector.sync import SyncEngine, ensure_agency

    env = make_env(tmp_path, sekmet.base_url, database_url, monkeypatch)
    config = load_config(env.home / "peersync.toml")
    base = json.loads((DATA / "in-person-session.json").read_text("utf-8"))
    for round_ in range(4):
        profile = load_profile(default_profile_path())
        profile = dataclasses.replace(
            profile,
            organization=dataclasses.replace(profile.organization, value=f"org-{round_}"),
            device=dataclasses.replace(profile.device, value=f"dev-{round_}"))
        record = EncounterRecord.from_dict(SOURCE, {
            **base, "specialist": {**base["specialist"], "id": f"S-race-{round_}"}})
        barrier = threading.Barrier(4)
        errors: list[BaseException] = []

        def worker(profile: Any = profile, record: EncounterRecord = record,
                   barrier: threading.Barrier = barrier,
                   errors: list[BaseException] = errors) -> None:
            store = Store.from_url(config.database_url)
            try:
                with FhirClient(base_url=sekmet.base_url, timeout_s=10) as client:
                    engine = SyncEngine(store=store, client=client, profile=profile,
                                        config=config)
                    barrier.wait(timeout=30)
                    ensure_agency(store, client, profile, engine.plan)
                    engine.refs.practitioner(record)
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)
            finally:
                store.close()

        threads = [threading.Thread(target=worker) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert not errors, errors
        for resource_type, system, value in (
            ("Organization", profile.organization.system, f"org-{round_}"),
            ("Device", profile.device.system, f"dev-{round_}"),
            ("Practitioner", "", f"S-race-{round_}"),
        ):
            found = [r for r in fetch_all(sekmet.base_url, resource_type)
                     if any(i.get("value") == value and (not system or i.get("system") == system)
                            for i in r.get("identifier", []))]
            assert len(found) == 1, (round_, resource_type, len(found))
