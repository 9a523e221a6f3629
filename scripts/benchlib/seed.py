"""Bulk-seed a migrated PeerSync store as two years of an agency's use (``bench.py pages``).

Rows go straight into the tables the admin pages read (record versions, jobs,
the ledger, links, consents, specialists, the audit log), in chunks:
``executemany`` on SQLite, ``COPY`` on PostgreSQL (:mod:`.bulk`). Nothing goes
through the store's own code paths, so 200,000 records and 1,000,000 audit rows
take 2-5 minutes (2 cores) instead of hours.

The shape, from one ``random.Random`` (the same rows every run of a size):

- record versions over the last two years, job ids in order of arrival; ~8 % are
  amendments (note version 2) of a record of the days before; 4 sources (70/20/7/3 %),
  40 specialists (some far busier than others), ~N/25 participants, ~8 % Part 2;
  note payloads of 200 B - 8 KB (the canonical contract JSON; synthetic names);
- job states: mostly ``synced``; ~1.5 % ``needs_attention``, ~4 % ``waiting_*`` at any
  age; in the last ~2,000 arrivals also ``pending``, ``in_flight``, ``retry_scheduled``
  and ``unknown``; reasons and the EHR's OperationOutcome text as the sync writes them;
- two ledger rows (Encounter, DocumentReference) per synced version;
- the audit log: per job ``record.accepted``, then ``job.claimed``/``job.state`` pairs
  (retries first), the rest logins and links, in time order. The MACs are random:
  **the chain does not verify** (`peersync audit verify` would report it); the head
  row is set to the last row so that new appends work.

PostgreSQL is then ``VACUUM ANALYZE``d, as autovacuum would after a bulk load;
SQLite is left as PeerSync leaves it (no ``ANALYZE``).
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from .bulk import CHUNK, COLUMNS, Writer

SOURCES = (("peer-tool", 70), ("web-form", 20), ("csv-import", 7), ("legacy-emr", 3))
STAFF = [f"S-{100 + i}" for i in range(40)]
STAFF_WEIGHTS = [1 + (i % 7) * 2 for i in range(40)]  # some specialists far busier
TEXT = ("Met at the library to work on the housing application. We reviewed the recovery plan "
        "and the triggers named last time. Practised the phone call to the benefits office "
        "together. Walked to the pharmacy and sorted out the refill problem.")
WORDS = TEXT.split()
# (state, reason, EHR OperationOutcome text) choices per state
REASONS: dict[str, list[tuple[str, str | None]]] = {
    "needs_attention": [
        ("412 multiple-matches: Encounter", "Multiple resources match this search"),
        ("422 invalid: DocumentReference.content", "Unable to decode attachment data"),
        ("409 version-conflict: Encounter", "Resource version mismatch"),
        ("400 business-rule: Practitioner inactive", "Practitioner is not active"),
        ("note-changed-in-ehr-meanwhile", None),
        ("marker-matches-2-notes", None),
    ],
    "waiting_patient": [("no-mrn", None), ("mrn-no-match", None),
                        ("mrn-matches-2-patients", None)],
    "waiting_staff": [("no-npi-to-match", None), ("staff-id-no-match-no-name", None)],
    "waiting_consent": [("part2-consent-none", None), ("part2-consent-revoked", None)],
    "waiting_encounter": [("no-ehr-encounter-in-session-window", None)],
    "retry_scheduled": [("503 transient: EHR unavailable", "Service temporarily unavailable"),
                        ("EhrTimeout: no answer in 30 s", None),
                        ("429 throttled", "Too many requests")],
    "unknown": [("no answer: settled by an identifier search before any re-send", None)],
}
OLD_MIX = (("synced", 9450), ("needs_attention", 150), ("waiting_patient", 200),
           ("waiting_staff", 50), ("waiting_consent", 80), ("waiting_encounter", 70))
RECENT_MIX = (("synced", 60), ("pending", 20), ("in_flight", 3), ("retry_scheduled", 12),
              ("unknown", 2), ("needs_attention", 3))
RECENT = 2_000  # the newest arrivals: some not settled yet


@dataclass
class JobSummary:
    """What the audit rows of one job need."""

    id: int
    source: str
    record_id: str
    created_at: datetime
    state: str
    attempts: int
    finished_at: datetime


def _pick(rng: random.Random, mix: Sequence[tuple[str, int]]) -> str:
    return rng.choices([s for s, _ in mix], weights=[w for _, w in mix])[0]


def _notes(rng: random.Random) -> list[str]:
    out = []
    for _ in range(97):
        roll = rng.random()
        size = rng.randint(200, 2_000) if roll < 0.75 else rng.randint(2_000, 8_000)
        words: list[str] = []
        length = 0
        while length < size:
            word = rng.choice(WORDS)
            words.append(word)
            length += len(word) + 1
        out.append(" ".join(words)[:size])
    return out


def _payload(rid: str, pid: str, staff: str, start: datetime, version: int, note: str,
             part2: bool) -> str:
    end = start + timedelta(minutes=50)
    data: dict[str, Any] = {
        "id": rid, "participant": {"id": pid, "mrn": f"MRN-B{pid[2:]}", "given": "Test",
                                   "family": "Participant", "birth_date": "1980-01-01"},
        "specialist": {"id": staff, "npi": "1234567893", "given": "Test", "family": "Staff",
                       "credential": "CPRS"},
        "service": {"code": "H0038", "modality": "in_person", "setting": "community"},
        "start": start.isoformat(), "end": end.isoformat(),
        "note": {"id": f"N-{rid}", "version": version, "text": note,
                 "signed_at": (end + timedelta(minutes=15)).isoformat(),
                 "documentation_minutes": 12},
    }
    if part2:
        data["part2"] = True
        data["consent"] = {"status": "active", "id": f"C-{pid}"}
    return json.dumps(data, separators=(",", ":"))


def generate_records(n: int, *, now: datetime, seed: int = 9
                     ) -> Iterator[tuple[list[tuple[Any, ...]], list[tuple[Any, ...]],
                                         list[tuple[Any, ...]], list[JobSummary]]]:
    """Chunks of (record_versions rows, jobs rows, ledger rows, job summaries)."""
    rng = random.Random(seed)
    notes = _notes(rng)
    sources = [s for s, _ in SOURCES]
    source_weights = [w for _, w in SOURCES]
    participants = max(50, n // 25)
    span = timedelta(days=730)
    t0 = now - span
    recent: list[tuple[str, str, str, str, datetime, bool]] = []
    ledger_id = 0
    for first in range(0, n, CHUNK):
        rvs: list[tuple[Any, ...]] = []
        jbs: list[tuple[Any, ...]] = []
        lgs: list[tuple[Any, ...]] = []
        summaries: list[JobSummary] = []
        for i in range(first, min(n, first + CHUNK)):
            ident = i + 1
            created = t0 + span * (i / n) + timedelta(seconds=rng.random() * 30)
            if recent and rng.random() < 0.08:  # an amendment of a record of the days before
                source, rid, pid, staff, start, part2 = rng.choice(recent)
                version = 2
            else:
                source = rng.choices(sources, weights=source_weights)[0]
                rid = f"ps-{created.year}-{i:07d}"
                pid = f"P-{rng.randrange(participants):05d}"
                staff = rng.choices(STAFF, weights=STAFF_WEIGHTS)[0]
                back = rng.random() * (60 if rng.random() < 0.1 else 3)  # back-filled: older
                start = (created - timedelta(days=back)).replace(second=0, microsecond=0)
                part2 = rng.random() < 0.08
                version = 1
                recent.append((source, rid, pid, staff, start, part2))
                if len(recent) > 500:
                    recent.pop(0)
            status = "completed" if rng.random() > 0.04 else rng.choice(["cancelled", "no_show"])
            note = notes[rng.randrange(len(notes))]
            rvs.append((
                ident, source, rid,
                hashlib.sha256(f"{rid}/{version}/{i}".encode()).hexdigest(),
                created, f"import:{source}" if source != "web-form" else "web:specialist",
                _payload(rid, pid, staff, start, version, note, part2),
                pid, staff, f"N-{rid}" if status == "completed" else None,
                version if status == "completed" else None, status, part2, start,
                float(rng.randint(2, 30)) if status == "completed" else None,
            ))
            state = _pick(rng, RECENT_MIX if i >= n - RECENT else OLD_MIX)
            attempts = 0 if state == "pending" else 1 + (rng.random() < 0.06) + (
                state in ("retry_scheduled", "unknown")) * rng.randint(0, 4)
            finished = created + timedelta(seconds=5 + rng.random() * 600)
            reason: str | None = None
            outcome: str | None = None
            if state in REASONS:
                reason, outcome = rng.choice(REASONS[state])
            elif state == "synced" and rng.random() < 0.02:
                reason = "already-in-ehr"
            next_at = finished + timedelta(minutes=rng.randint(1, 60)) \
                if state in ("retry_scheduled", "unknown") else None
            in_flight = state == "in_flight"
            jbs.append((
                ident, ident, source, rid, state, attempts, next_at,
                "worker:bench:4242" if in_flight else None,
                finished + timedelta(minutes=5) if in_flight else None,
                "pending" if attempts else None,
                f"{rng.getrandbits(64):016x}" if attempts else None,
                reason, outcome, created, finished if state != "pending" else created,
                finished if state == "synced" else None,
            ))
            summaries.append(JobSummary(ident, source, rid, created, state, int(attempts),
                                        finished))
            if state == "synced" and status == "completed":
                for rtype in ("Encounter", "DocumentReference"):
                    ledger_id += 1
                    lgs.append((ledger_id, ident, source, rid, rtype,
                                "urn:peersync:record", f"{source}|{rid}|{rtype}",
                                f"{rtype[:3].lower()}-{ident}", str(version),
                                "create" if version == 1 else "update", "confirmed",
                                finished))
        yield rvs, jbs, lgs, summaries


def generate_audit(m: int, jobs: Sequence[JobSummary], *, now: datetime, seed: int = 10
                   ) -> Iterator[list[tuple[Any, ...]]]:
    """Chunks of ``m`` audit_events rows spread over ``jobs`` (in order), times ascending."""
    rng = random.Random(seed)
    n = max(1, len(jobs))
    seq = 0
    chunk: list[tuple[Any, ...]] = []

    def row(at: datetime, actor: str, action: str, job: JobSummary | None,
            state_from: str | None, state_to: str | None, detail: dict[str, Any] | None
            ) -> None:
        nonlocal seq, chunk
        seq += 1
        chunk.append((
            seq, at, actor, action, job.source if job else None, job.record_id if job else None,
            job.id if job else None, job.id if job else None, state_from, state_to,
            json.dumps(detail, separators=(",", ":")) if detail is not None else None,
            f"{rng.getrandbits(256):064x}",
        ))

    for index, job in enumerate(jobs):
        quota = (index + 1) * m // n - index * m // n
        if quota <= 0:
            continue
        at = job.created_at
        row(at, f"import:{job.source}", "record.accepted", job, None, "pending",
            {"content_hash": f"{rng.getrandbits(256):064x}"})
        left = quota - 1
        pairs = min(left // 2, job.attempts) if job.state != "pending" else 0
        step = (job.finished_at - at) / (2 * pairs + 1) if pairs else timedelta(0)
        for p in range(pairs):
            at += step
            row(at, "worker:bench:4242", "job.claimed", job, "pending", "in_flight",
                {"run_id": f"{rng.getrandbits(64):016x}"})
            at += step
            last = p == pairs - 1
            to = job.state if last else "retry_scheduled"
            detail: dict[str, Any] = {"mode": "transaction", "preset": "generic"}
            if to == "synced":
                detail["resources"] = [f"Encounter/enc-{job.id}",
                                       f"DocumentReference/doc-{job.id}"]
            elif to != "in_flight":
                detail.update(error="EhrHttpError", status=503, attempt=p + 1)
            row(at, "worker:bench:4242", "job.state", job, "in_flight", to, detail)
        for _ in range(left - 2 * pairs):
            at += timedelta(seconds=1)
            if rng.random() < 0.7:
                row(at, "web:admin", "login.ok", None, None, None, {"role": "admin"})
            else:
                row(at, "web:admin", "link.set", None, None, None,
                    {"kind": "patient", "ehr_id": f"pat-{rng.randrange(10**6)}"})
        if len(chunk) >= CHUNK:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def seed_store(url: str, *, records: int, audit: int, seed: int = 9,
               log: Any = None) -> dict[str, Any]:
    """Fill the migrated, empty store at ``url``; returns counts and seconds per table."""
    from sqlalchemy import create_engine

    say = log or (lambda _msg: None)
    now = datetime.now(UTC).replace(microsecond=0)
    engine = create_engine(url)
    writer = Writer(engine)
    counts = dict.fromkeys(COLUMNS, 0)
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    summaries: list[JobSummary] = []
    pairs: dict[tuple[str, str], bool] = {}
    try:
        for rvs, jbs, lgs, summ in generate_records(records, now=now, seed=seed):
            counts["record_versions"] += writer.write("record_versions", rvs)
            counts["jobs"] += writer.write("jobs", jbs)
            counts["ledger"] += writer.write("ledger", lgs)
            summaries.extend(summ)
            for row in rvs:
                pairs[(row[1], row[7])] = pairs.get((row[1], row[7]), False) or bool(row[12])
            say(f"  {counts['jobs']:,} record versions")
        seconds["records"] = round(time.perf_counter() - started, 1)
        rng = random.Random(seed + 1)
        counts["specialists"] = writer.write("specialists", [
            (s, json.dumps({"given": "Test", "family": f"Staff {s}", "credential": "CPRS"}),
             now) for s in STAFF])
        counts["consents"] = writer.write("consents", [
            (source, pid, "active" if rng.random() < 0.9 else "revoked", f"C-{pid}",
             f"import:{source}", now - timedelta(days=rng.randint(0, 700)))
            for (source, pid), part2 in sorted(pairs.items()) if part2])
        counts["links"] = writer.write("links", [
            ("patient", f"{source}|{pid}", f"pat-{k}", "match", now - timedelta(days=700))
            for k, (source, pid) in enumerate(sorted(pairs))])
        mark = time.perf_counter()
        last_mac = "0" * 64
        for chunk in generate_audit(audit, summaries, now=now, seed=seed + 2):
            counts["audit_events"] += writer.write("audit_events", chunk)
            last_mac = chunk[-1][-1]
            if counts["audit_events"] % 200_000 < CHUNK:
                say(f"  {counts['audit_events']:,} audit rows")
        writer.execute("UPDATE audit_chain_head SET last_seq = ?, last_mac = ? WHERE id = 1",
                       (counts["audit_events"], last_mac))
        seconds["audit"] = round(time.perf_counter() - mark, 1)
        mark = time.perf_counter()
        writer.finish()
        seconds["finish"] = round(time.perf_counter() - mark, 1)
    finally:
        engine.dispose()
    states: dict[str, int] = {}
    for job in summaries:
        states[job.state] = states.get(job.state, 0) + 1
    return {"rows": counts, "states": dict(sorted(states.items(), key=lambda kv: -kv[1])),
            "seconds": seconds, "total_s": round(time.perf_counter() - started, 1),
            "audit_chain_verifies": False}
