"""The store, on a real SQLite file and a real PostgreSQL database.

Every test that takes the ``store`` fixture runs twice (SQLite, PostgreSQL)
on a fresh, migrated database. No FHIR server is involved: the store is the
outbox, the write ledger, the links, consent and the audit log.
"""

from __future__ import annotations

import copy
import json
import threading
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy import inspect, select

from connector.intake import Accepted, iter_records
from connector.records import EncounterRecord
from connector.schema import audit_events, jobs, ledger, links, metadata, specialists
from connector.states import ALL_STATES, RESOLVED_BY_SYNC, JobState
from connector.store import AddSummary, Job, Store, StoreError
from tests.conftest import DATA, EXAMPLES, example_dict, load_example

ACTOR = "test-intake"
SRC = "peer-tool"
T0 = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)  # a fixed "now", after every example


# -- helpers -------------------------------------------------------------------


def make(
    name: str = "in-person-session.json",
    *,
    id: str | None = None,
    source: str = SRC,
    **fields: Any,
) -> EncounterRecord:
    """An example record with a new id and/or top-level fields replaced."""
    data = copy.deepcopy(example_dict(name))
    if id is not None:
        data["id"] = id
    data.update(fields)
    return EncounterRecord.from_dict(source, data)


def many(n: int, prefix: str = "ps-bulk-") -> list[EncounterRecord]:
    return [make(id=f"{prefix}{i:05d}") for i in range(n)]


def claim(
    store: Store,
    *,
    run: str = "run-1",
    worker: str = "w1",
    limit: int = 100,
    now: datetime = T0,
    **kwargs: Any,
) -> list[Job]:
    return store.claim(worker=worker, run_id=run, limit=limit, now=now, **kwargs)


def settle(store: Store, job: Job, state: JobState, **kwargs: Any) -> None:
    """Finish a claimed job in a transaction of its own, as the worker does."""
    with store.begin() as conn:
        store.finish(conn, job, state, actor="w1", **kwargs)


def all_jobs(store: Store) -> list[dict[str, Any]]:
    with store.engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(select(jobs).order_by(jobs.c.id))]


def job_row(store: Store, job_id: int) -> dict[str, Any]:
    (row,) = [r for r in all_jobs(store) if r["id"] == job_id]
    return row


def events(store: Store, action: str | None = None) -> list[dict[str, Any]]:
    rows = store.audit_events(limit=100_000)
    return [e for e in rows if action is None or e["action"] == action]


def aware(value: datetime | None) -> datetime | None:
    """SQLite hands datetimes back naive (they are UTC)."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


# -- schema --------------------------------------------------------------------


def test_an_empty_database_is_refused_until_migrated_and_migrate_is_idempotent(
    database_url: str,
) -> None:
    store = Store.from_url(database_url)
    try:
        with pytest.raises(StoreError, match="not initialised"):
            store.check_schema()

        store.migrate()
        store.check_schema()
        tables = set(inspect(store.engine).get_table_names())
        assert set(metadata.tables) <= tables
        assert "alembic_version" in tables

        store.add_records([load_example("in-person-session.json")], actor=ACTOR)
        store.migrate()  # again: nothing to do, nothing lost
        store.check_schema()
        assert set(inspect(store.engine).get_table_names()) == tables
        assert store.counts_by_state()["pending"] == 1
    finally:
        store.close()


# -- add_records ---------------------------------------------------------------


def test_new_versions_get_one_pending_job_and_an_accepted_event(store: Store) -> None:
    records = [load_example("in-person-session.json"), load_example("part2-without-consent.json")]

    summary = store.add_records(records, actor=ACTOR)

    assert summary == AddSummary(new_versions=2, unchanged=0)
    rows = all_jobs(store)
    assert [(r["source"], r["record_id"], r["state"], r["attempts"]) for r in rows] == [
        (SRC, "ps-2026-000123", "pending", 0),
        (SRC, "ps-2026-000129", "pending", 0),
    ]
    accepted = events(store, "record.accepted")
    assert [(e["job_id"], e["record_version_id"]) for e in accepted] == [
        (r["id"], r["record_version_id"]) for r in rows
    ]
    for event, record in zip(accepted, records, strict=True):
        assert event["actor"] == ACTOR
        assert (event["source"], event["record_id"]) == record.key
        assert (event["state_from"], event["state_to"]) == (None, "pending")
        assert event["detail"] == {"content_hash": record.content_hash}
    loaded = store.load_records([r["record_version_id"] for r in rows])
    assert {r.key for r in loaded.values()} == {r.key for r in records}
    assert loaded[rows[0]["record_version_id"]] == records[0]


def test_identical_content_adds_nothing_again_or_twice_in_one_call(store: Store) -> None:
    record = load_example("in-person-session.json")

    summary = store.add_records([record, record, copy.deepcopy(record)], actor=ACTOR)
    assert summary == AddSummary(new_versions=1, unchanged=2)
    assert len(all_jobs(store)) == 1
    before = events(store)
    assert len(before) == 1

    summary = store.add_records([load_example("in-person-session.json")], actor="someone-else")
    assert summary == AddSummary(new_versions=0, unchanged=1)
    assert len(all_jobs(store)) == 1
    assert events(store) == before


def test_the_same_id_from_two_sources_is_two_records(store: Store) -> None:
    a = load_example("in-person-session.json", source="tool-a")
    b = load_example("in-person-session.json", source="tool-b")
    assert a.content_hash == b.content_hash

    summary = store.add_records([a, b], actor=ACTOR)

    assert summary.new_versions == 2
    assert [(r["source"], r["record_id"]) for r in all_jobs(store)] == [
        ("tool-a", "ps-2026-000123"),
        ("tool-b", "ps-2026-000123"),
    ]
    assert store.add_records([b], actor=ACTOR) == AddSummary(unchanged=1)


def test_changed_content_is_a_new_version_with_a_new_job(store: Store) -> None:
    first = load_example("in-person-session.json")
    amended = load_example("amendment.json")
    assert first.key == amended.key and first.content_hash != amended.content_hash

    assert store.add_records([first], actor=ACTOR) == AddSummary(new_versions=1)
    assert store.add_records([amended, first], actor=ACTOR) == AddSummary(
        new_versions=1, unchanged=1
    )

    rows = all_jobs(store)
    assert [(r["record_id"], r["state"]) for r in rows] == [
        ("ps-2026-000123", "pending"),
        ("ps-2026-000123", "pending"),
    ]
    assert rows[0]["record_version_id"] != rows[1]["record_version_id"]
    versions = store.load_records([r["record_version_id"] for r in rows])
    assert versions[rows[1]["record_version_id"]].note.version == 2  # type: ignore[union-attr]


@pytest.mark.parametrize(("count", "batch_size"), [(1201, 500), (7, 1)])
def test_batches_store_every_record_once(store: Store, count: int, batch_size: int) -> None:
    records = many(count)
    # The first record again at the very end: a duplicate that lands in a later batch.
    summary = store.add_records([*records, records[0]], actor=ACTOR, batch_size=batch_size)

    assert summary == AddSummary(new_versions=count, unchanged=1)
    rows = all_jobs(store)
    assert [r["record_id"] for r in rows] == [r.id for r in records]
    assert len(events(store, "record.accepted")) == count
    assert store.add_records(records, actor=ACTOR, batch_size=batch_size) == AddSummary(
        unchanged=count
    )
    # Exactly one batch, and one batch plus one record.
    more = many(batch_size + 1, prefix="ps-more-")
    assert store.add_records(more[:batch_size], actor=ACTOR, batch_size=batch_size) == (
        AddSummary(new_versions=batch_size)
    )
    assert store.add_records(more, actor=ACTOR, batch_size=batch_size) == AddSummary(
        new_versions=1, unchanged=batch_size
    )
    assert len(all_jobs(store)) == count + batch_size + 1


def test_two_processes_adding_the_same_records_store_each_once(database_url: str) -> None:
    """The loser of a race on the unique key falls back to one record at a time."""
    setup = Store.from_url(database_url)
    setup.migrate()
    records = many(150)
    stores = [Store.from_url(database_url) for _ in range(2)]
    start = threading.Barrier(len(stores))
    summaries: list[AddSummary] = []
    errors: list[BaseException] = []

    def add(index: int) -> None:
        try:
            start.wait(timeout=10)
            summaries.append(stores[index].add_records(records, actor=f"p{index}"))
        except BaseException as exc:  # reported below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=add, args=(i,)) for i in range(len(stores))]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert errors == []
        assert sum(s.new_versions for s in summaries) == len(records)
        assert sum(s.unchanged for s in summaries) == len(records)
        assert [r["record_id"] for r in all_jobs(setup)] == [r.id for r in records]
        assert len(events(setup, "record.accepted")) == len(records)
    finally:
        for thread in threads:
            thread.join(timeout=60)
        for s in stores:
            s.close()
        setup.close()


def test_specialist_names_are_remembered_only_with_a_family_name(store: Store) -> None:
    named = load_example("in-person-session.json")  # S-17: Alex Kim, CPRS, NPI
    unnamed = make(id="ps-x-1", specialist={"id": "S-17"})  # the same one, no name this time
    given_only = make(id="ps-x-2", specialist={"id": "S-90", "given": "Robin"})

    store.add_records([named, unnamed, given_only], actor=ACTOR)

    assert store.specialist_details("S-17") == {
        "given": "Alex",
        "family": "Kim",
        "credential": "CPRS",
        "npi": "1234567893",
    }
    assert store.specialist_details("S-90") is None
    assert store.specialist_details("S-404") is None

    store.add_records(
        [make(id="ps-x-3", specialist={"id": "S-90", "given": "Robin", "family": "Ash"})],
        actor=ACTOR,
    )
    assert store.specialist_details("S-90") == {"given": "Robin", "family": "Ash"}
    # A later record without a family name does not erase what is known.
    store.add_records([make(id="ps-x-4", specialist={"id": "S-17", "given": "Al"})], actor=ACTOR)
    assert store.specialist_details("S-17") == {
        "given": "Alex",
        "family": "Kim",
        "credential": "CPRS",
        "npi": "1234567893",
    }
    with store.engine.connect() as conn:
        known = conn.execute(select(specialists.c.specialist_id)).scalars().all()
    assert sorted(known) == ["S-17", "S-90"]


# -- claim ---------------------------------------------------------------------


def test_a_claim_takes_due_jobs_in_order_and_two_claims_never_share_one(store: Store) -> None:
    store.add_records(many(10), actor=ACTOR)

    first = claim(store, worker="w1", limit=4, lease_s=60)
    second = claim(store, worker="w2", limit=4, lease_s=60)
    third = claim(store, worker="w3", limit=4, lease_s=60)

    ids = [r["id"] for r in all_jobs(store)]
    assert [j.id for j in first] == ids[:4]
    assert [j.id for j in second] == ids[4:8]
    assert [j.id for j in third] == ids[8:]
    assert claim(store, worker="w4") == []
    for job in first + second + third:
        assert job.state == "in_flight"
        assert job.claimed_from == "pending"
        assert job.attempts == 0
    owners = {r["id"]: (r["lease_owner"], aware(r["lease_expires_at"])) for r in all_jobs(store)}
    assert owners[first[0].id] == ("w1", T0 + timedelta(seconds=60))
    assert owners[third[-1].id] == ("w3", T0 + timedelta(seconds=60))
    claimed = events(store, "job.claimed")
    assert len(claimed) == 10
    assert all(e["state_from"] == "pending" and e["state_to"] == "in_flight" for e in claimed)
    assert claimed[0]["detail"] == {"run_id": "run-1"}


@pytest.mark.parametrize(("due", "limit", "taken"), [
    (64, 32, 32), (100, 32, 32), (63, 32, 32), (40, 32, 20), (20, 32, 10), (10, 32, 8),
    (5, 32, 5), (1, 32, 1), (3, 1, 1), (1, 1, 1), (2, 4, 1)])
def test_a_claim_takes_a_full_share_until_the_end_of_the_queue_then_half(
        due: int, limit: int, taken: int) -> None:
    from connector.store.outbox import _share_of

    assert _share_of(min(due, 2 * limit), limit) == taken


def test_sharing_the_tail_a_claim_takes_half_of_what_is_left(store: Store) -> None:
    """The engine's claims (``share_tail``): full while two claims' worth are due, then
    half of what is left, so the last records go to every worker asking."""
    store.add_records(many(10), actor=ACTOR)
    ids = [r["id"] for r in all_jobs(store)]
    taken = [[j.id for j in claim(store, worker=f"w{i}", limit=4, share_tail=True)]
             for i in range(5)]
    assert taken == [ids[:4], ids[4:7], ids[7:9], ids[9:], []]


def test_concurrent_claims_hand_out_every_job_exactly_once(database_url: str) -> None:
    setup = Store.from_url(database_url)
    setup.migrate()
    setup.add_records(many(100), actor=ACTOR)
    expected = sorted(r["id"] for r in all_jobs(setup))

    workers = [Store.from_url(database_url) for _ in range(4)]
    start = threading.Barrier(len(workers))
    taken: list[list[int]] = [[] for _ in workers]
    errors: list[BaseException] = []

    def work(index: int) -> None:
        try:
            start.wait(timeout=10)
            while True:
                got = workers[index].claim(worker=f"w{index}", run_id="run-1", limit=5, lease_s=300)
                if not got:
                    return
                taken[index].extend(job.id for job in got)
        except BaseException as exc:  # reported below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(workers))]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert not any(thread.is_alive() for thread in threads)
        assert errors == []
        everything = [job_id for ids in taken for job_id in ids]
        assert sorted(everything) == expected  # every job once: none lost, none twice
        assert setup.counts_by_state()["in_flight"] == 100
        owners = {r["id"]: r["lease_owner"] for r in all_jobs(setup)}
        for index, ids in enumerate(taken):
            assert {owners[job_id] for job_id in ids} <= {f"w{index}"}
        assert len(events(setup, "job.claimed")) == 100
    finally:
        for thread in threads:
            thread.join(timeout=60)
        for s in workers:
            s.close()
        setup.close()


EARLIER_VERSION_FINISHED = {
    JobState.SYNCED: True,
    JobState.NEEDS_ATTENTION: True,
    JobState.RETRY_SCHEDULED: False,
    JobState.UNKNOWN: False,
    JobState.WAITING_PATIENT: False,
    JobState.WAITING_CONSENT: False,
}


def test_a_later_version_waits_until_the_earlier_one_is_finished(store: Store) -> None:
    # One record per outcome of its first version, all in this one database.
    for n in range(len(EARLIER_VERSION_FINISHED)):
        first = make(id=f"ps-v-{n}")
        second = make("amendment.json", id=f"ps-v-{n}")
        store.add_records([first, second], actor=ACTOR)
    versions: dict[str, list[int]] = {}
    for row in all_jobs(store):
        versions.setdefault(row["record_id"], []).append(row["id"])

    claimed = claim(store, run="run-1")
    assert [j.id for j in claimed] == [v1 for v1, _ in versions.values()]  # no v2 yet
    assert claim(store, run="run-2", worker="w2") == []  # nor while v1 is in flight

    for job, state in zip(claimed, EARLIER_VERSION_FINISHED, strict=True):
        settle(store, job, state, next_attempt_at=T0 + timedelta(hours=1))
    later = claim(store, run="run-1", include_waiting=False)

    expected = [
        versions[f"ps-v-{n}"][1]
        for n, finished in enumerate(EARLIER_VERSION_FINISHED.values())
        if finished
    ]
    assert [j.id for j in later] == expected


def test_a_retry_or_an_unknown_outcome_is_claimed_only_when_due(store: Store) -> None:
    store.add_records(many(2), actor=ACTOR)
    retry, unknown = claim(store)
    due = T0 + timedelta(seconds=90)
    settle(store, retry, JobState.RETRY_SCHEDULED, next_attempt_at=due, count_attempt=True)
    settle(store, unknown, JobState.UNKNOWN, next_attempt_at=due + timedelta(seconds=10))

    assert store.count_due(now=T0) == 0
    assert claim(store, now=T0) == []
    assert claim(store, now=due - timedelta(seconds=1)) == []
    assert store.count_due(now=due) == 1

    (again,) = claim(store, now=due)
    assert again.id == retry.id
    assert again.claimed_from == "retry_scheduled"
    assert again.attempts == 1

    (settled,) = claim(store, now=due + timedelta(seconds=10))
    assert settled.id == unknown.id
    assert settled.claimed_from == "unknown"


def test_times_in_other_zones_compare_as_instants(store: Store) -> None:
    """A clock in another zone (or a naive UTC one) must not move due times by hours."""
    store.add_records([load_example("in-person-session.json")], actor=ACTOR)
    (job,) = claim(store)
    new_york = timezone(timedelta(hours=-5))
    due = (T0 + timedelta(hours=1)).astimezone(new_york)
    settle(store, job, JobState.RETRY_SCHEDULED, next_attempt_at=due)

    assert aware(job_row(store, job.id)["next_attempt_at"]) == T0 + timedelta(hours=1)
    assert store.next_due_at() == T0 + timedelta(hours=1)
    plus_five = timezone(timedelta(hours=5))
    assert claim(store, now=T0.astimezone(plus_five)) == []  # 12:00 UTC, 17:00 on its face
    assert store.count_due(now=T0.astimezone(plus_five)) == 0
    assert claim(store, now=(T0 + timedelta(minutes=59)).replace(tzinfo=None)) == []
    (again,) = claim(store, now=(T0 + timedelta(hours=1)).astimezone(new_york))
    assert again.id == job.id


def test_an_expired_lease_is_taken_again(store: Store) -> None:
    store.add_records([load_example("in-person-session.json")], actor=ACTOR)
    (job,) = claim(store, worker="w1", lease_s=30)

    assert claim(store, worker="w2", now=T0 + timedelta(seconds=29)) == []
    assert store.count_due(now=T0 + timedelta(seconds=29)) == 0
    assert store.count_due(now=T0 + timedelta(seconds=31)) == 1

    (again,) = claim(store, worker="w2", now=T0 + timedelta(seconds=31), lease_s=30)
    assert again.id == job.id
    assert again.claimed_from == "in_flight"
    assert job_row(store, job.id)["lease_owner"] == "w2"
    last = events(store, "job.claimed")[-1]
    assert (last["actor"], last["state_from"], last["state_to"]) == ("w2", "in_flight", "in_flight")


def test_a_worker_never_takes_again_the_jobs_it_says_it_still_works_on(store: Store) -> None:
    """Pipelining: a worker claims while its earlier claim is still being sent; if that
    claim's lease ran out meanwhile (a renewal starved on a loaded machine), the worker
    must not take those jobs a second time (seen: a record sent twice by one worker)."""
    store.add_records(many(3), actor=ACTOR)
    held = claim(store, worker="w1", lease_s=5)
    later = T0 + timedelta(seconds=6)
    assert claim(store, worker="w1", now=later, exclude=[j.id for j in held]) == []
    # another worker (or this one, once it has let them go) may take them
    assert [j.id for j in claim(store, worker="w2", now=later)] == [j.id for j in held]


def test_waiting_jobs_are_claimed_once_per_run(store: Store) -> None:
    # every waiting state but waiting_review (only a co-signature releases it: test_review.py)
    waiting = sorted(RESOLVED_BY_SYNC)
    store.add_records(many(len(waiting)), actor=ACTOR)
    first = claim(store, run="run-1")
    for job, state in zip(first, waiting, strict=True):
        settle(store, job, state, reason=f"no-{state.value}")
    ids = [j.id for j in first]

    assert claim(store, run="run-1") == []  # this run already looked at them
    assert claim(store, run="run-2", include_waiting=False) == []
    again = claim(store, run="run-2")
    assert [j.id for j in again] == ids
    assert [j.claimed_from for j in again] == [s.value for s in waiting]
    assert [j.reason for j in again] == [f"no-{s.value}" for s in waiting]

    for job, state in zip(again, waiting, strict=True):
        settle(store, job, state, reason="still")
    assert claim(store, run="run-2") == []
    assert [j.id for j in claim(store, run="run-3")] == ids


def test_renewing_leases_extends_only_the_owners_in_flight_jobs(store: Store) -> None:
    store.add_records(many(4), actor=ACTOR)
    mine = claim(store, worker="w1", limit=3, lease_s=30)
    (theirs,) = claim(store, worker="w2", limit=1, lease_s=30)
    settle(store, mine[2], JobState.SYNCED)  # finished: no lease to renew
    ids = [j.id for j in mine] + [theirs.id]

    before = datetime.now(UTC)
    assert store.renew_lease(ids, worker="w1", lease_s=600) == 2

    rows = {r["id"]: r for r in all_jobs(store)}
    for job in mine[:2]:
        assert aware(rows[job.id]["lease_expires_at"]) >= before + timedelta(seconds=590)
        assert rows[job.id]["lease_owner"] == "w1"
    assert aware(rows[theirs.id]["lease_expires_at"]) == T0 + timedelta(seconds=30)
    assert rows[theirs.id]["lease_owner"] == "w2"
    assert rows[mine[2].id]["lease_expires_at"] is None
    assert store.renew_lease(ids, worker="w3", lease_s=600) == 0
    assert store.renew_lease([], worker="w1", lease_s=600) == 0


# -- finish and requeue ----------------------------------------------------------


def test_finish_records_state_reason_attempts_and_an_event(store: Store) -> None:
    store.add_records([load_example("in-person-session.json")], actor=ACTOR)
    (job,) = claim(store)
    due = T0 + timedelta(minutes=2)

    settle(
        store,
        job,
        JobState.RETRY_SCHEDULED,
        reason="x" * 300,
        outcome_text="the server said no",
        next_attempt_at=due,
        count_attempt=True,
        detail={"error": "EhrTransient", "status": 503},
    )

    row = job_row(store, job.id)
    assert row["state"] == "retry_scheduled"
    assert row["reason"] == "x" * 200
    assert row["outcome_text"] == "the server said no"
    assert row["attempts"] == 1
    assert aware(row["next_attempt_at"]) == due
    assert row["lease_owner"] is None and row["lease_expires_at"] is None
    assert row["synced_at"] is None
    event = events(store, "job.state")[-1]
    assert (event["job_id"], event["record_version_id"]) == (job.id, job.record_version_id)
    assert (event["source"], event["record_id"]) == (SRC, "ps-2026-000123")
    assert (event["state_from"], event["state_to"]) == ("in_flight", "retry_scheduled")
    assert event["detail"] == {
        "error": "EhrTransient",
        "status": 503,
        "reason": "x" * 200,
        "next_attempt_at": due.isoformat(),
    }

    (again,) = claim(store, now=due)
    settle(store, again, JobState.SYNCED)
    row = job_row(store, job.id)
    assert row["state"] == "synced"
    assert row["attempts"] == 1  # not counted unless asked
    assert row["reason"] is None and row["next_attempt_at"] is None
    assert row["synced_at"] is not None
    event = events(store, "job.state")[-1]
    assert (event["state_from"], event["state_to"], event["detail"]) == (
        "in_flight",
        "synced",
        None,
    )


def test_requeue_puts_jobs_needing_attention_back_to_pending(store: Store) -> None:
    store.add_records(many(4), actor=ACTOR)
    a, b, c, d = claim(store)
    for job in (a, b, c):
        settle(store, job, JobState.NEEDS_ATTENTION, reason="rejected", count_attempt=True)
    settle(store, d, JobState.SYNCED)

    assert store.requeue([b.id, d.id], actor="admin") == 1  # d is synced: untouched
    assert job_row(store, b.id)["state"] == "pending"
    assert job_row(store, b.id)["reason"] is None
    assert job_row(store, d.id)["state"] == "synced"

    assert store.requeue(None, actor="admin") == 2
    assert [r["state"] for r in all_jobs(store)] == ["pending", "pending", "pending", "synced"]
    assert store.requeue(None, actor="admin") == 0
    assert store.requeue([], actor="admin") == 0

    released = events(store, "job.released")
    assert [e["job_id"] for e in released] == [b.id, a.id, c.id]
    for event in released:
        assert event["actor"] == "admin"
        assert (event["state_from"], event["state_to"]) == ("needs_attention", "pending")
        assert event["detail"] == {"why": "retry requested"}

    # After an admin's fix a job gets a fresh set of attempts: it must not be
    # given up for good at its first transient error.
    again = claim(store)
    assert [(j.id, j.attempts) for j in again] == [(a.id, 0), (b.id, 0), (c.id, 0)]


# -- consent ---------------------------------------------------------------------


def test_a_record_with_active_consent_releases_that_participants_waiting_jobs(
    store: Store,
) -> None:
    store.add_records(
        [
            load_example("part2-without-consent.json"),  # P-1007, consent "none"
            load_example("part2-without-consent.json", source="other-tool"),
            make(id="ps-unrelated", part2=True),  # P-1001
        ],
        actor=ACTOR,
    )
    waiting = claim(store)
    for job in waiting:
        settle(store, job, JobState.WAITING_CONSENT, reason="part2-consent-none")
    assert store.consent_status(SRC, "P-1007") == "none"
    assert store.consent_status(SRC, "P-1001") is None  # its records carry no consent

    consenting = make(
        "part2-without-consent.json",
        id="ps-2026-000200",
        consent={"status": "active", "id": "C-77"},
    )
    assert store.add_records([consenting], actor=ACTOR) == AddSummary(new_versions=1)

    states = {(r["source"], r["record_id"]): r["state"] for r in all_jobs(store)}
    assert states == {
        (SRC, "ps-2026-000129"): "pending",  # released
        ("other-tool", "ps-2026-000129"): "waiting_consent",  # another source's participant
        (SRC, "ps-unrelated"): "waiting_consent",  # another participant
        (SRC, "ps-2026-000200"): "pending",  # new
    }
    assert store.consent_status(SRC, "P-1007") == "active"
    assert store.consent_status("other-tool", "P-1007") == "none"
    (released,) = events(store, "job.released")
    assert (released["source"], released["record_id"]) == (SRC, "ps-2026-000129")
    assert (released["state_from"], released["state_to"]) == ("waiting_consent", "pending")
    assert released["detail"] == {"why": "consent active"}


def test_set_consent_releases_waiting_jobs_and_is_audited(store: Store) -> None:
    assert store.consent_status(SRC, "P-1007") is None
    store.add_records([load_example("part2-without-consent.json")], actor=ACTOR)
    (job,) = claim(store)
    settle(store, job, JobState.WAITING_CONSENT)

    assert store.set_consent(source=SRC, participant_id="P-1007", status="revoked", actor="a") == 0
    assert store.consent_status(SRC, "P-1007") == "revoked"
    assert job_row(store, job.id)["state"] == "waiting_consent"

    released = store.set_consent(
        source=SRC, participant_id="P-1007", status="active", actor="admin", consent_id="C-1"
    )
    assert released == 1
    assert store.consent_status(SRC, "P-1007") == "active"
    assert job_row(store, job.id)["state"] == "pending"
    audited = events(store, "consent.set")
    assert [e["detail"] for e in audited] == [
        {"participant_id": "P-1007", "status": "revoked"},
        {"participant_id": "P-1007", "status": "active"},
    ]
    assert audited[-1]["actor"] == "admin"
    # Active again: nothing left to release; another source has nothing to release.
    assert store.set_consent(source=SRC, participant_id="P-1007", status="active", actor="a") == 0
    assert store.set_consent(source="x", participant_id="P-1007", status="active", actor="a") == 0
    assert store.consent_status("x", "P-1007") == "active"


# -- ledger and links ------------------------------------------------------------


def test_the_ledger_answers_with_the_newest_entry_per_identifier(store: Store) -> None:
    store.add_records([load_example("in-person-session.json")], actor=ACTOR)
    (job,) = claim(store)
    enc = ("Encounter", "urn:peersync:encounter", "ps-2026-000123")
    doc = ("DocumentReference", "urn:peersync:note", "N-88812")
    assert store.ledger_latest(*enc) is None

    with store.begin() as conn:
        for resource_type, system, value in (enc, doc):
            store.ledger_add(
                conn,
                resource_type=resource_type,
                system=system,
                value=value,
                ehr_id=None,
                ehr_version=None,
                action="create",
                job=job,
                state="sent",
            )
    with store.begin() as conn:
        store.ledger_add(
            conn,
            resource_type="Encounter",
            system=enc[1],
            value=enc[2],
            ehr_id="enc-1",
            ehr_version="1",
            action="create",
            job=job,
        )
        store.ledger_add(  # no job: e.g. a Practitioner match
            conn,
            resource_type="Practitioner",
            system="urn:staff",
            value="S-17",
            ehr_id="pr-1",
            ehr_version="3",
            action="match",
        )

    latest = store.ledger_latest(*enc)
    assert latest is not None
    assert (latest.ehr_id, latest.ehr_version, latest.state) == ("enc-1", "1", "confirmed")
    assert latest.record_version_id == job.record_version_id
    practitioner = store.ledger_latest("Practitioner", "urn:staff", "S-17")
    assert practitioner is not None and practitioner.record_version_id is None
    assert store.ledger_latest("Encounter", enc[1], "someone-else") is None
    # the same answers for many keys at once (one query per claim's stage)
    keys = [enc, doc, ("Practitioner", "urn:staff", "S-17"), ("Encounter", enc[1], "nobody")]
    many = store.ledger_latest_many(keys)
    assert list(many) == keys
    assert many == {key: store.ledger_latest(*key) for key in keys}
    assert many[enc] is not None and many[enc].ehr_id == "enc-1"
    assert many[keys[3]] is None

    entries = store.ledger_for_record(SRC, "ps-2026-000123")
    assert [(e.resource_type, e.ehr_id, e.state) for e in entries] == [
        ("Encounter", "enc-1", "confirmed"),
        ("DocumentReference", None, "sent"),
    ]
    only = store.ledger_for_record(SRC, "ps-2026-000123", "DocumentReference")
    assert [(e.identifier_value, e.action) for e in only] == [("N-88812", "create")]
    assert store.ledger_for_record("other-tool", "ps-2026-000123") == []
    with store.engine.connect() as conn:
        assert len(conn.execute(select(ledger.c.id)).all()) == 4  # append-only


def test_links_are_set_once_and_updated_in_place(store: Store) -> None:
    assert store.get_link("patient", "peer-tool|P-1001") is None

    store.set_link("patient", "peer-tool|P-1001", "pat-1", linked_by="match")
    store.set_link("practitioner", "S-17", "pr-1", linked_by="create")
    assert store.get_link("patient", "peer-tool|P-1001") == "pat-1"

    with store.begin() as conn:  # in the caller's transaction
        store.set_link("patient", "peer-tool|P-1001", "pat-2", linked_by="admin", conn=conn)

    assert store.get_link("patient", "peer-tool|P-1001") == "pat-2"
    assert store.get_link("practitioner", "S-17") == "pr-1"
    with store.engine.connect() as conn:
        rows = conn.execute(select(links).order_by(links.c.kind)).all()
    assert [(r.kind, r.key, r.ehr_id, r.linked_by) for r in rows] == [
        ("patient", "peer-tool|P-1001", "pat-2", "admin"),
        ("practitioner", "S-17", "pr-1", "create"),
    ]
    audited = events(store, "link.set")
    assert [e["detail"] for e in audited] == [
        {"kind": "patient", "ehr_id": "pat-1"},  # a patient's key names a participant
        {"kind": "practitioner", "ehr_id": "pr-1", "key": "S-17"},
        {"kind": "patient", "ehr_id": "pat-2"},
    ]


# -- counts --------------------------------------------------------------------


def test_counts_and_due_times(store: Store) -> None:
    assert store.counts_by_state() == dict.fromkeys(ALL_STATES, 0)  # every state, zeros too
    assert store.count_due(now=T0) == 0
    assert store.next_due_at() is None

    store.add_records(many(6), actor=ACTOR)
    assert store.count_due(now=T0) == 6
    a, b, c, d, e = claim(store, limit=5, lease_s=600)
    assert store.count_due(now=T0) == 1  # in flight, leases running
    settle(store, a, JobState.RETRY_SCHEDULED, next_attempt_at=T0 + timedelta(minutes=5))
    settle(store, b, JobState.UNKNOWN, next_attempt_at=T0 + timedelta(minutes=3))
    settle(store, c, JobState.WAITING_PATIENT)  # waiting: not "due" in this sense
    settle(store, d, JobState.SYNCED)

    counts = store.counts_by_state()
    assert list(counts) == list(ALL_STATES)
    assert counts == {
        **dict.fromkeys(ALL_STATES, 0),
        "pending": 1,
        "in_flight": 1,
        "retry_scheduled": 1,
        "unknown": 1,
        "waiting_patient": 1,
        "synced": 1,
    }
    assert store.next_due_at() == T0 + timedelta(minutes=3)
    assert store.count_due(now=T0) == 1
    assert store.count_due(now=T0 + timedelta(minutes=3)) == 2
    assert store.count_due(now=T0 + timedelta(minutes=11)) == 4  # + e's lease has expired
    due = store.next_due_at()
    assert due is not None and due.utcoffset() == timedelta(0)


# -- no PHI outside the payload ------------------------------------------------------


def _examples() -> list[EncounterRecord]:
    records = []
    for name, count in EXAMPLES.items():
        results = list(iter_records(DATA / name, source=SRC))
        assert all(isinstance(r, Accepted) for r in results), name
        assert len(results) == count, name
        records.extend(r.record for r in results if isinstance(r, Accepted))
    return records


def _phi(records: list[EncounterRecord]) -> set[str]:
    """The participant-identifying values and every line of note text."""
    found: set[str] = set()
    for record in records:
        p = record.participant
        found.update(v for v in (p.given, p.family, p.mrn) if v)
        if p.birth_date:
            found.add(p.birth_date.isoformat())
        if record.note:
            found.add(record.note.text)
            found.update(line for line in record.note.text.splitlines() if line.strip())
    return found


def test_nothing_outside_the_payload_holds_names_mrns_or_note_text(store: Store) -> None:
    records = _examples()
    assert len(records) == sum(EXAMPLES.values())
    phi = _phi(records)
    assert {"Dana", "Lopez", "MRN-55821", "Renée", "O'Neil", "1988-04-12"} <= phi

    store.add_records(records, actor=ACTOR)
    store.set_consent(source=SRC, participant_id="P-1007", status="active", actor="admin")
    store.set_link("patient", "peer-tool|P-1001", "pat-1", linked_by="match")
    jobs_ = claim(store)
    for job, state in zip(
        jobs_,
        [JobState.SYNCED, JobState.WAITING_PATIENT, JobState.RETRY_SCHEDULED, JobState.UNKNOWN],
        strict=False,
    ):
        settle(store, job, state, reason=f"code-{state.value}", next_attempt_at=T0)
    store.requeue(None, actor="admin")

    leaks = []
    with store.engine.connect() as conn:
        for table in metadata.sorted_tables:
            for row in conn.execute(select(table)):
                for column, value in row._mapping.items():
                    if table.name == "record_versions" and column == "payload":
                        continue  # the record itself: PHI by design
                    text = (
                        json.dumps(value, ensure_ascii=False)
                        if isinstance(value, dict | list)
                        else str(value)
                    )
                    leaks += [(table.name, column, s) for s in phi if s in text]
    assert leaks == []
    with store.engine.connect() as conn:  # and the audit log was really looked at
        assert len(conn.execute(select(audit_events.c.seq)).all()) > len(records)


def test_a_worker_that_lost_its_lease_cannot_overwrite_the_new_holder(store: Store) -> None:
    store.add_records([make(id="ps-lease-1")], actor=ACTOR)
    [first] = claim(store, worker="w1", lease_s=30)
    # w1 stalls past its lease; w2 takes the job over
    [second] = claim(store, worker="w2", run="run-2", now=T0 + timedelta(seconds=31))
    assert second.id == first.id and second.claimed_from == JobState.IN_FLIGHT
    with store.begin() as conn:
        assert store.finish(conn, first, JobState.NEEDS_ATTENTION, actor="w1") is False
    row = job_row(store, first.id)
    assert (row["state"], row["lease_owner"]) == (JobState.IN_FLIGHT, "w2")
    with store.begin() as conn:
        assert store.finish(conn, second, JobState.SYNCED, actor="w2") is True
    assert job_row(store, first.id)["state"] == JobState.SYNCED


# -- issue 8: a row the database refuses is named; the rest of the batch is kept --


def _hostile(id: str, path: str, value: Any) -> EncounterRecord:
    """A record built through the Python API (no intake checks) with one bad value."""
    data = copy.deepcopy(example_dict("in-person-session.json"))
    data["id"] = id
    group, _, leaf = path.rpartition(".")
    (data[group] if group else data)[leaf] = value
    return EncounterRecord.from_dict(SRC, data)


def test_a_refused_row_is_named_and_the_rest_of_the_batch_kept(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "Dana\x00Lopez-MRN-55821"
    batch = [
        make(id="ps-good-a"),
        _hostile("ps-big-version", "note.version", 2**63),
        _hostile("ps-early-start", "start", "0001-01-01T00:30:00+01:00"),
        _hostile("ps-nul-participant", "participant.id", secret),
        make(id="ps-good-b"),
    ]
    with caplog.at_level("WARNING"):
        summary = store.add_records(batch, actor=ACTOR)
    refused = {(r.record_id, r.field) for r in summary.refused}
    expected = {
        ("ps-big-version", "note.version"),
        ("ps-early-start", "start"),
    }
    if store.dialect == "postgresql":  # SQLite stores a NUL in text; PostgreSQL refuses it
        expected.add(("ps-nul-participant", "participant.id"))
    assert refused == expected
    assert summary.new_versions == len(batch) - len(expected)
    stored = {row["record_id"] for row in store.jobs_overview()}
    assert {"ps-good-a", "ps-good-b"} <= stored
    assert not stored & {rid for rid, _ in expected}
    text = caplog.text + "".join(str(r) for r in summary.refused)
    for rid, field in expected:
        assert f"id={rid}" in text and field in text
    assert "Dana" not in text and "55821" not in text and str(2**63) not in text


def test_engines_hide_sql_parameters(store: Store) -> None:
    assert store.engine.hide_parameters is True


def test_a_new_sqlite_database_and_its_wal_files_are_private(tmp_path: Any) -> None:
    import os
    import stat

    old = os.umask(0o022)
    try:
        path = tmp_path / "peersync.db"
        store = Store.from_url(f"sqlite:///{path}")
        try:
            store.migrate()
            store.add_records([make(id="ps-private")], actor=ACTOR)
            files = [path, tmp_path / "peersync.db-wal", tmp_path / "peersync.db-shm"]
            with store.engine.connect():
                modes = {f.name: stat.S_IMODE(f.stat().st_mode) for f in files if f.exists()}
        finally:
            store.close()
    finally:
        os.umask(old)
    assert set(modes) == {"peersync.db", "peersync.db-wal", "peersync.db-shm"}
    assert set(modes.values()) == {0o600}, modes
