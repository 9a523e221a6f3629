"""The tamper-evident audit log, on a real SQLite file and a real PostgreSQL database.

A chain written by the store's own methods verifies; each kind of tampering
(edited, inserted, deleted, re-ordered, truncated, wrong key) is found and
named; parallel writers never fork the chain; the key stays out of every
output; export writes rows and an anchor that `verify --anchor` checks.
"""

from __future__ import annotations

import base64
import copy
import csv
import io
import json
import logging
import os
import stat
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import delete, insert, select, update

from connector.audit import (
    CONTENT_COLUMNS,
    DEVELOPMENT_KEY,
    GENESIS_MAC,
    KEY_ENV,
    VerifyResult,
    append,
    canonical,
    ensure_key_file,
    export,
    load_audit_key,
    row_mac,
    verify,
)
from connector.cli import main
from connector.errors import ConfigError
from connector.records import EncounterRecord
from connector.schema import audit_chain_head, audit_events
from connector.states import JobState
from connector.store import Store
from tests.conftest import DATA, example_dict

KEY = bytes(range(32, 64))
OTHER_KEY = bytes(range(64, 96))
T0 = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)


# -- helpers -------------------------------------------------------------------


def make(id: str, name: str = "in-person-session.json", **fields: Any) -> EncounterRecord:
    data = copy.deepcopy(example_dict(name))
    data["id"] = id
    data.update(fields)
    return EncounterRecord.from_dict("peer-tool", data)


def build_chain(store: Store, prefix: str = "ps-audit") -> int:
    """Audit rows through the store's own methods (all three insertion paths); return count."""
    records = [make(f"{prefix}-{i}") for i in range(5)]
    records.append(make(f"{prefix}-p2", "part2-without-consent.json"))
    store.add_records(records, actor="import:peer-tool")  # bulk: record.accepted
    jobs = store.claim(worker="w1", run_id="run-1", limit=100, now=T0)  # Store.audit
    states = [JobState.SYNCED, JobState.NEEDS_ATTENTION, JobState.RETRY_SCHEDULED,
              JobState.SYNCED, JobState.SYNCED, JobState.WAITING_CONSENT]
    for job, state in zip(jobs, states, strict=True):
        later = T0 + timedelta(minutes=5) if state is JobState.RETRY_SCHEDULED else None
        with store.begin() as conn:
            store.finish(conn, job, state, actor="w1", next_attempt_at=later,
                         reason=None if state is JobState.SYNCED else "r")
    participant = records[-1].participant.id
    store.set_consent(source="peer-tool", participant_id=participant, status="active",
                      actor="admin")  # _release + Store.audit
    store.requeue([jobs[1].id], actor="admin")  # _release
    store.set_link("practitioner", f"S-{prefix}", "prac-9", linked_by="match")
    with store.begin() as conn:
        # what an EHR exchange row holds; a time in another zone; tuples; unsorted keys
        store.audit(
            conn,
            actor="w1",
            action="ehr.exchange",
            detail={"method": "PUT", "path": "/Encounter", "status": 200, "duration_ms": 12.5,
                    "outcome_codes": ("informational",), "ids": {"z": "e-1", "a": "é"}},
            at=datetime(2030, 1, 1, 7, 0, 0, 123456, tzinfo=timezone(timedelta(hours=-5))),
        )
    return len(all_rows(store))


def all_rows(store: Store) -> list[dict[str, Any]]:
    with store.engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(select(audit_events)
                                                       .order_by(audit_events.c.seq))]


def row(store: Store, seq: int) -> dict[str, Any]:
    (found,) = [r for r in all_rows(store) if r["seq"] == seq]
    return found


def head(store: Store) -> tuple[int, str]:
    with store.engine.connect() as conn:
        found = conn.execute(select(audit_chain_head.c.last_seq, audit_chain_head.c.last_mac)
                             ).one()
    return int(found[0]), str(found[1])


def set_row(store: Store, seq: int, **values: Any) -> None:
    with store.engine.begin() as conn:
        conn.execute(update(audit_events).where(audit_events.c.seq == seq).values(**values))


def set_head(store: Store, seq: int, mac: str) -> None:
    with store.engine.begin() as conn:
        conn.execute(update(audit_chain_head).values(last_seq=seq, last_mac=mac))


def delete_row(store: Store, seq: int) -> None:
    with store.engine.begin() as conn:
        conn.execute(delete(audit_events).where(audit_events.c.seq == seq))


def renumber(store: Store, first: int, by: int) -> None:
    """Move rows seq >= first by ``by`` (in two steps: the primary key is checked per row)."""
    with store.engine.begin() as conn:
        conn.execute(update(audit_events).where(audit_events.c.seq >= first)
                     .values(seq=audit_events.c.seq + 1_000_000))
        conn.execute(update(audit_events).where(audit_events.c.seq >= 1_000_000)
                     .values(seq=audit_events.c.seq - 1_000_000 + by))


def forge(store: Store, seq: int, like: int) -> None:
    """Insert a plausible row the forger made up (no key: its MAC is a guess)."""
    forged = {k: v for k, v in row(store, like).items()}
    forged.update(seq=seq, actor="mallory", mac=os.urandom(32).hex())
    with store.engine.begin() as conn:
        conn.execute(insert(audit_events).values(**forged))


def kinds(result: VerifyResult) -> set[str]:
    return {p.split(": ", 1)[1].split(" ", 1)[0] for p in result.problems}


def check(store: Store, **kwargs: Any) -> VerifyResult:
    return verify(store.engine, KEY, **kwargs)


@pytest.fixture
def keyed(store: Store) -> Store:
    """The migrated test database, written with a real (non-development) key."""
    return Store(store.engine, audit_key=KEY)


@pytest.fixture
def chain(keyed: Store) -> int:
    return build_chain(keyed)


# -- a chain that is as written ---------------------------------------------------


def test_a_chain_written_by_the_store_verifies(keyed: Store, chain: int) -> None:
    rows = all_rows(keyed)
    assert chain >= 20
    assert [r["seq"] for r in rows] == list(range(1, chain + 1))
    assert {r["action"] for r in rows} >= {"record.accepted", "job.claimed", "job.state",
                                           "job.released", "consent.set", "link.set",
                                           "ehr.exchange"}
    prev = GENESIS_MAC
    for r in rows:  # the documented construction, recomputed by hand
        assert r["mac"] == row_mac(KEY, prev, canonical(r))
        prev = r["mac"]
    assert head(keyed) == (chain, rows[-1]["mac"])

    result = check(keyed)
    assert result == VerifyResult(ok=True, rows=chain, last_seq=chain, last_mac=rows[-1]["mac"],
                                  problems=[], warnings=[], development_key=False, bad_rows=0)
    # small batches see the same chain (rows are streamed, never all read at once)
    assert check(keyed, batch_size=3) == result


def test_a_batch_of_events_is_chained_in_order_in_one_append(keyed: Store, chain: int) -> None:
    """Store.audit_batch (a claim's or a batch's many events): the rows appear in the order
    they were appended, with the next sequence numbers, and the chain still verifies."""
    with keyed.begin() as conn, keyed.audit_batch(conn):
        for i in range(5):
            keyed.audit(conn, actor="batch", action="job.claimed", detail={"i": i})
        assert head(keyed) == (chain, all_rows(keyed)[-1]["mac"])  # nothing chained yet
    rows = all_rows(keyed)
    batch = [r for r in rows if r["actor"] == "batch"]
    assert [r["detail"]["i"] for r in batch] == [0, 1, 2, 3, 4]
    assert [r["seq"] for r in batch] == list(range(chain + 1, chain + 6))
    assert check(keyed).ok


def test_a_batch_that_fails_appends_nothing(keyed: Store, chain: int) -> None:
    with pytest.raises(RuntimeError), keyed.begin() as conn, keyed.audit_batch(conn):
        keyed.audit(conn, actor="batch", action="job.claimed")
        raise RuntimeError("the transaction fails")
    assert len(all_rows(keyed)) == chain
    with keyed.begin() as conn:  # and the connection is not left batching
        keyed.audit(conn, actor="after", action="job.claimed")
    assert all_rows(keyed)[-1]["actor"] == "after" and check(keyed).ok


def test_canonical_form_is_sorted_compact_json_with_utc_microseconds() -> None:
    content = {"seq": 7, "at": datetime(2030, 1, 1, 7, 0, tzinfo=timezone(timedelta(hours=-5))),
               "actor": "w1", "action": "job.state", "job_id": 3,
               "detail": {"b": [1, 2], "a": "é"}, "mac": "ignored"}
    assert canonical(content) == (
        b'{"action":"job.state","actor":"w1","at":"2030-01-01T12:00:00.000000Z",'
        b'"detail":{"a":"\\u00e9","b":[1,2]},"job_id":3,"record_id":null,'
        b'"record_version_id":null,"seq":7,"source":null,"state_from":null,"state_to":null}'
    )
    assert set(json.loads(canonical(content))) == set(CONTENT_COLUMNS)


def test_without_a_key_the_store_uses_the_development_key_and_verify_fails(
    store: Store,
) -> None:
    # Finding 13: checked with the public development key, the chain proves nothing.
    assert verify(store.engine, DEVELOPMENT_KEY).problems == [
        "seq 0: unproven (no audit key is configured: checked with the public development key, "
        "with which anyone can rewrite the whole chain; set PEERSYNC_AUDIT_KEY or run "
        "`peersync audit init-key`)"]  # an empty log too
    assert store.audit_key == DEVELOPMENT_KEY
    n = build_chain(store)
    result = verify(store.engine, DEVELOPMENT_KEY)
    assert not result.ok and result.development_key and result.bad_rows == 0
    assert kinds(result) == {"unproven"}
    assert result.problems[0].startswith(f"seq 1-{n}: unproven (no audit key is configured")
    # Checked with a real key, a log keyed only with the public key proves nothing.
    strict = check(store)
    assert not strict.ok and kinds(strict) == {"edited"}
    assert "development key" in strict.problems[0]


def test_rows_keyed_with_the_development_key_fail_even_when_keyed_rows_follow(
    store: Store, keyed: Store
) -> None:
    build_chain(store)  # development key (or a forger who removed the key file) ...
    before = len(all_rows(store))
    keyed.add_records([make("ps-later")], actor="import:peer-tool")  # ... then a (new) key
    with keyed.begin() as conn:
        keyed.audit(conn, actor="w1", action="ehr.exchange", detail={"status": 200})
    result = check(keyed)
    assert not result.ok and result.development_key and result.warnings == []
    assert result.problems == [
        f"seq 1-{before}: unproven (keyed with the public development key, which anyone can "
        "recompute: written while no audit key was configured, or rewritten after the key "
        "file was removed)"
    ]
    # A development-keyed row after keyed ones is a forgery (or a lost key): not ok.
    with keyed.engine.begin() as conn:
        append(conn, [{"actor": "mallory", "action": "job.state"}], DEVELOPMENT_KEY)
    result = check(keyed)
    assert not result.ok and kinds(result) == {"edited", "unproven"}


# -- tampering -------------------------------------------------------------------


@pytest.mark.parametrize(
    "change",
    [
        {"actor": "someone-else"},
        {"detail": {"why": "nothing to see"}},
        {"detail": None},
        {"state_to": "synced"},
        {"record_id": "ps-other"},
        {"action": "job.forged"},
    ],
    ids=lambda c: next(iter(c)) + ("-null" if None in c.values() else ""),
)
def test_an_edited_row_is_named(keyed: Store, chain: int, change: dict[str, Any]) -> None:
    seq = 9
    set_row(keyed, seq, **change)
    for batch_size in (3, 2000):
        result = check(keyed, batch_size=batch_size)
        assert not result.ok
        assert result.problems == [f"seq {seq}: edited (its MAC does not match its content)"]
        assert result.bad_rows == 1


def test_an_edited_time_and_an_edited_mac_are_found(keyed: Store, chain: int) -> None:
    set_row(keyed, 4, at=row(keyed, 4)["at"] + timedelta(microseconds=1))
    set_row(keyed, 12, mac=os.urandom(32).hex())
    result = check(keyed)
    assert kinds(result) == {"edited"}
    assert [p.split(":")[0] for p in result.problems][:2] == ["seq 4", "seq 12"]


@pytest.mark.parametrize("fix_head", [True, False])
def test_a_row_inserted_in_the_middle_is_named(keyed: Store, chain: int, fix_head: bool) -> None:
    last_mac = head(keyed)[1]
    renumber(keyed, 6, by=1)
    forge(keyed, 6, like=5)
    if fix_head:
        set_head(keyed, chain + 1, last_mac)
    for batch_size in (4, 2000):
        result = check(keyed, batch_size=batch_size)
        assert not result.ok
        assert result.problems == [
            "seq 6: inserted (1 row(s) not written by PeerSync; the rows after were renumbered)"
        ]


def test_a_row_inserted_at_the_end_is_named(keyed: Store, chain: int) -> None:
    forge(keyed, chain + 1, like=chain)
    result = check(keyed)
    assert not result.ok
    assert result.problems == [
        f"seq {chain + 1}: inserted (after the chain head, which ends at seq {chain})"
    ]


def test_a_deleted_row_is_named(keyed: Store, chain: int) -> None:
    delete_row(keyed, 7)
    result = check(keyed)
    assert result.problems == ["seq 7: deleted (1 row(s) missing from the sequence)"]
    delete_row(keyed, 8)
    delete_row(keyed, 9)
    result = check(keyed, batch_size=2)
    assert result.problems == ["seq 7-9: deleted (3 row(s) missing from the sequence)"]


def test_a_deletion_hidden_by_renumbering_is_named(keyed: Store, chain: int) -> None:
    delete_row(keyed, 7)
    renumber(keyed, 8, by=-1)
    set_head(keyed, chain - 1, head(keyed)[1])
    result = check(keyed)
    assert not result.ok
    assert kinds(result) == {"deleted"}
    assert result.problems[0].startswith("seq 7: deleted")


def test_a_cut_off_tail_is_found_by_the_head_or_else_only_by_an_anchor(
    keyed: Store, chain: int
) -> None:
    anchor = export(keyed.engine, io.StringIO(), since=None, fmt="json")
    assert (anchor["last_seq"], anchor["last_mac"]) == head(keyed)

    delete_row(keyed, chain)
    result = check(keyed)
    assert result.problems == [
        f"seq {chain}: truncated (the chain head says the log ends at seq {chain}; "
        f"the last row is seq {chain - 1})"
    ]

    set_head(keyed, chain - 1, row(keyed, chain - 1)["mac"])  # a careful forger
    assert check(keyed).ok  # nothing in the database can tell ...
    result = check(keyed, anchor=anchor)  # ... but the anchor kept elsewhere can
    assert not result.ok and kinds(result) == {"truncated"}
    assert result.problems[0].startswith(f"seq {chain}: truncated (the anchor taken 20")


def test_an_emptied_log_is_found_by_the_anchor(keyed: Store, chain: int) -> None:
    anchor = export(keyed.engine, io.StringIO(), since=None, fmt="csv")
    with keyed.engine.begin() as conn:
        conn.execute(delete(audit_events))
    assert kinds(check(keyed)) == {"truncated"}
    set_head(keyed, 0, GENESIS_MAC)
    assert check(keyed).ok
    assert kinds(check(keyed, anchor=anchor)) == {"truncated"}


def test_an_anchor_that_disagrees_with_its_row_is_found(keyed: Store, chain: int) -> None:
    anchor = export(keyed.engine, io.StringIO(), since=None, fmt="csv")
    result = check(keyed, anchor=dict(anchor, last_mac="ab" * 32))
    assert kinds(result) == {"edited"}


def swap(store: Store, a: int, b: int, *, with_mac: bool) -> None:
    ra, rb = row(store, a), row(store, b)
    columns = [c for c in CONTENT_COLUMNS if c != "seq"] + (["mac"] if with_mac else [])
    set_row(store, a, **{c: rb[c] for c in columns})
    set_row(store, b, **{c: ra[c] for c in columns})


@pytest.mark.parametrize("with_mac", [True, False], ids=["with-macs", "content-only"])
@pytest.mark.parametrize("a,b", [(5, 11), (8, 9)], ids=["apart", "adjacent"])
def test_swapped_rows_are_named_reordered(
    keyed: Store, chain: int, a: int, b: int, with_mac: bool
) -> None:
    swap(keyed, a, b, with_mac=with_mac)
    result = check(keyed)
    assert not result.ok
    assert result.problems == [
        f"seq {a}: reordered (it holds the row written as seq {b})",
        f"seq {b}: reordered (it holds the row written as seq {a})",
    ]


def test_the_wrong_key_fails_every_row(keyed: Store, chain: int) -> None:
    result = verify(keyed.engine, OTHER_KEY)
    assert not result.ok
    assert result.bad_rows == result.rows == chain
    assert result.problems == [
        f"seq 1-{chain}: edited (no row verifies with this key: a wrong audit key, or every "
        "row rewritten)"
    ]


def test_a_missing_chain_head_refuses_appends(keyed: Store) -> None:
    from connector.audit import AuditError

    with keyed.engine.begin() as conn:
        conn.execute(delete(audit_chain_head))
    with pytest.raises(AuditError, match="peersync db upgrade"), keyed.begin() as conn:
        keyed.audit(conn, actor="w1", action="job.state")
    assert all_rows(keyed) == []


def test_rows_from_before_the_chain_stay_readable_and_are_reported(database_url: str) -> None:
    """Migration 0002 on a database with audit rows: the chain starts after them."""
    from alembic import command
    from alembic.config import Config

    from connector.store import MIGRATIONS

    store = Store.from_url(database_url, audit_key=KEY)
    try:
        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        with store.engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "0001")
        with store.engine.begin() as conn:
            for _ in range(3):
                conn.execute(insert(audit_events).values(at=T0, actor="old", action="job.state"))
        store.migrate()
        assert head(store) == (3, GENESIS_MAC)
        assert check(store).ok
        with store.begin() as conn:
            store.audit(conn, actor="w1", action="job.state")
        result = check(store)
        assert result.ok and result.rows == 4
        assert result.warnings == ["seq 1-3: written before the audit chain existed (no MAC): "
                                   "nothing proves they are unchanged"]
    finally:
        store.close()


# -- parallel writers ------------------------------------------------------------


def test_parallel_appends_never_fork_the_chain(database_url: str) -> None:
    setup = Store.from_url(database_url, audit_key=KEY)
    setup.migrate()
    workers = [Store.from_url(database_url, audit_key=KEY) for _ in range(4)]
    start = threading.Barrier(len(workers))
    errors: list[BaseException] = []
    per_worker = 200

    def work(index: int) -> None:
        store = workers[index]
        try:
            start.wait()
            for n in range(per_worker):
                with store.begin() as conn:
                    store.audit(conn, actor=f"w{index}", action="test.event", detail={"n": n})
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(workers))]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert not errors, errors
        rows = all_rows(setup)
        total = per_worker * len(workers)
        assert [r["seq"] for r in rows] == list(range(1, total + 1))
        for index in range(len(workers)):  # each writer's events in its own order
            mine = [r["detail"]["n"] for r in rows if r["actor"] == f"w{index}"]
            assert mine == list(range(per_worker))
        assert len({r["mac"] for r in rows}) == total
        result = check(setup)
        assert result.ok, result.problems
        assert (result.last_seq, result.last_mac) == head(setup) == (total, rows[-1]["mac"])
    finally:
        for s in [setup, *workers]:
            s.close()


def test_parallel_imports_claims_and_releases_keep_one_chain(database_url: str) -> None:
    """The three insertion paths at once: bulk intake, claim/finish, consent release."""
    setup = Store.from_url(database_url, audit_key=KEY)
    setup.migrate()
    stores = [Store.from_url(database_url, audit_key=KEY) for _ in range(4)]
    errors: list[BaseException] = []
    start = threading.Barrier(4)
    done = threading.Event()

    def importer() -> None:
        for batch in range(4):
            stores[0].add_records(
                [make(f"ps-par-{batch}-{i}") for i in range(25)]
                + [make(f"ps-par-p2-{batch}", "part2-without-consent.json",
                        consent={"status": "active" if batch % 2 else "none"})],
                actor="import:peer-tool",
            )

    def worker(index: int) -> None:
        store = stores[index]
        while not done.is_set():
            jobs = store.claim(worker=f"w{index}", run_id=f"r{index}", limit=7)
            for job in jobs:
                with store.begin() as conn:
                    store.finish(conn, job, JobState.WAITING_CONSENT, actor=f"w{index}")
            if not jobs:
                done.wait(0.01)

    def consent() -> None:
        for n in range(20):
            stores[3].set_consent(source="peer-tool", participant_id="P-1007",
                                  status="active" if n % 2 else "none", actor="admin")

    def run(target: Any, *args: Any) -> None:
        try:
            start.wait()
            target(*args)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(importer,)),
               threading.Thread(target=run, args=(worker, 1)),
               threading.Thread(target=run, args=(worker, 2)),
               threading.Thread(target=run, args=(consent,))]
    try:
        for t in threads:
            t.start()
        threads[0].join(timeout=120)
        threads[3].join(timeout=120)
        done.set()
        for t in threads:
            t.join(timeout=120)
        assert not errors, errors
        rows = all_rows(setup)
        assert [r["seq"] for r in rows] == list(range(1, len(rows) + 1))
        assert sum(r["action"] == "record.accepted" for r in rows) == 104
        result = check(setup)
        assert result.ok, result.problems
    finally:
        for s in [setup, *stores]:
            s.close()


# -- the key ---------------------------------------------------------------------


def test_init_key_file_is_created_0600_once(tmp_path: Path) -> None:
    old = os.umask(0)  # even with a permissive umask
    try:
        path = ensure_key_file(tmp_path)
    finally:
        os.umask(old)
    assert path == tmp_path / "peersync.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    key = load_audit_key(tmp_path, None, {})
    assert len(key) == 32 and key != DEVELOPMENT_KEY
    text = path.read_text()
    assert ensure_key_file(tmp_path) == path and path.read_text() == text  # never replaced


def test_a_key_file_readable_by_others_is_refused(tmp_path: Path) -> None:
    path = ensure_key_file(tmp_path)
    secret = path.read_text().strip()
    for mode in (0o644, 0o640, 0o604):
        path.chmod(mode)
        with pytest.raises(ConfigError) as caught:
            load_audit_key(tmp_path, None, {})
        message = str(caught.value)
        assert str(path) in message and "0600" in message and f"{mode:04o}" in message
        assert secret not in message


def test_a_configured_key_file_is_relative_to_the_config_and_must_exist(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="keys/audit.key: audit key file not found"):
        load_audit_key(tmp_path, "keys/audit.key", {})
    path = ensure_key_file(tmp_path, "keys/audit.key")
    assert path == tmp_path / "keys" / "audit.key"
    assert load_audit_key(tmp_path, "keys/audit.key", {}) == bytes.fromhex(path.read_text())


def test_no_key_at_all_means_the_development_key_and_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="peersync.audit"):
        assert load_audit_key(tmp_path, None, {}) == DEVELOPMENT_KEY
    assert "development key" in caplog.text


@pytest.mark.parametrize(
    "encode",
    [bytes.hex, lambda k: k.hex().upper(), lambda k: base64.b64encode(k).decode(),
     lambda k: base64.urlsafe_b64encode(k).decode().rstrip("=")],
    ids=["hex", "HEX", "base64", "base64url-unpadded"],
)
def test_the_environment_key_wins_over_the_file(tmp_path: Path, encode: Any) -> None:
    ensure_key_file(tmp_path)
    secret = os.urandom(48)
    assert load_audit_key(tmp_path, None, {KEY_ENV: f" {encode(secret)}\n"}) == secret


@pytest.mark.parametrize("value", ["ab" * 31, base64.b64encode(b"x" * 31).decode(), "not a key!"])
def test_a_short_or_garbled_environment_key_is_refused_without_echoing_it(
    tmp_path: Path, value: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_audit_key(tmp_path, None, {KEY_ENV: value})
    assert KEY_ENV in str(caught.value)
    assert value not in str(caught.value)


# -- the command line ------------------------------------------------------------


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, database_url: str) -> Iterator[Path]:
    folder = tmp_path / "home"
    folder.mkdir()
    monkeypatch.setenv("PEERSYNC_HOME", str(folder))
    for name in ("PEERSYNC_EHR_URL", "PEERSYNC_DATABASE_URL", KEY_ENV):
        monkeypatch.delenv(name, raising=False)
    result = run("init", "--database-url", database_url)
    assert result.exit_code == 0, result.output
    yield folder


def run(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def home_store(home: Path) -> Store:
    from connector.config import load_config

    config = load_config(home / "peersync.toml")
    key = load_audit_key(config.folder, config.audit_key_file, {})
    return Store.from_url(config.database_url, audit_key=key)


def test_the_key_never_appears_in_any_output_or_log(
    home: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    key_file = home / "peersync.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    key = bytes.fromhex(key_file.read_text())
    caplog.set_level(logging.DEBUG)
    outputs = [
        run("-vv", "import", str(DATA / "batch.jsonl")),
        run("-vv", "status"),
        run("-vv", "audit", "verify"),
        run("-vv", "audit", "export", "--since", "2000-01-01"),
        run("-vv", "audit", "export", "--since", "2000-01-01", "--format", "json"),
    ]
    assert outputs[2].exit_code == 0 and "audit log intact" in outputs[2].output
    assert "warning" not in outputs[2].output  # a real key: nothing to warn about
    monkeypatch.setenv(KEY_ENV, key.hex()[:-2])  # too short: refused, not echoed
    outputs.append(run("-vv", "audit", "verify"))
    assert outputs[-1].exit_code == 2 and KEY_ENV in outputs[-1].output
    monkeypatch.setenv(KEY_ENV, OTHER_KEY.hex())  # a wrong key: every row fails
    outputs.append(run("-vv", "audit", "verify"))
    assert outputs[-1].exit_code == 1
    monkeypatch.delenv(KEY_ENV)
    key_file.chmod(0o644)
    outputs.append(run("-vv", "status"))
    assert outputs[-1].exit_code == 2 and str(key_file) in outputs[-1].output
    seen = "\n".join(r.output for r in outputs) + caplog.text
    for form in (key.hex(), key.hex().upper(), base64.b64encode(key).decode(),
                 base64.urlsafe_b64encode(key).decode(), key.hex()[:16]):
        assert form not in seen
    assert OTHER_KEY.hex()[:16] not in seen


def test_init_keeps_an_existing_key(home: Path) -> None:
    key_file = home / "peersync.key"
    before = key_file.read_text()
    result = run("init", "--force", "--database-url", "sqlite:///peersync.db")
    assert result.exit_code == 0
    assert f"audit key: {key_file}" in result.output
    assert key_file.read_text() == before


def test_audit_init_key_for_a_home_made_before_keys(home: Path) -> None:
    key_file = home / "peersync.key"
    key_file.unlink()
    assert run("audit", "init-key").output.startswith(f"audit key written to {key_file}")
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert run("audit", "init-key").output.startswith(f"audit key already at {key_file}")


def write_dated_events(home: Path) -> Store:
    store = home_store(home)
    with store.begin() as conn:
        for day, n in ((datetime(2026, 1, 10, tzinfo=UTC), 3),
                       (datetime(2026, 2, 10, tzinfo=UTC), 4)):
            for i in range(n):
                store.audit(conn, actor="w1", action="ehr.exchange", record_id=f"ps-{i}",
                            detail={"method": "GET", "path": "/Patient", "status": 200},
                            at=day + timedelta(minutes=i))
    return store


def test_export_csv_writes_rows_since_and_an_anchor_that_verify_checks(home: Path) -> None:
    store = write_dated_events(home)
    try:
        out = home / "audit.csv"
        result = run("audit", "export", "--since", "2026-02-01", "--output", str(out))
        assert result.exit_code == 0, result.output
        with out.open(encoding="utf-8", newline="") as file:
            rows = list(csv.DictReader(file))
        assert [r["seq"] for r in rows] == ["4", "5", "6", "7"]
        assert rows[0]["at"] == "2026-02-10T00:00:00.000000Z"
        assert json.loads(rows[0]["detail"]) == {"method": "GET", "path": "/Patient",
                                                 "status": 200}
        assert rows[-1]["mac"] == head(store)[1]
        anchor_file = home / "audit.csv.anchor.json"
        anchor = json.loads(anchor_file.read_text())
        assert set(anchor) >= {"last_seq", "last_mac", "exported_at", "rows"}
        assert (anchor["last_seq"], anchor["last_mac"], anchor["rows"]) == (7, head(store)[1], 4)
        assert f"anchor (seq 7) written to {anchor_file}" in result.output

        result = run("audit", "verify", "--anchor", str(anchor_file))
        assert result.exit_code == 0, result.output
        assert "audit log intact: 7 row(s), last seq 7, anchor seq 7 found" in result.output

        # cut the tail off and rewrite the head: only the anchor can tell
        delete_row(store, 7)
        set_head(store, 6, row(store, 6)["mac"])
        assert run("audit", "verify").exit_code == 0
        result = run("audit", "verify", "--anchor", str(anchor_file))
        assert result.exit_code == 1
        assert "audit log NOT intact: 1 problem(s)" in result.output
        assert "seq 7: truncated (the anchor taken 20" in result.output
    finally:
        store.close()


def test_export_json_to_a_chosen_anchor_and_to_stdout(home: Path) -> None:
    store = write_dated_events(home)
    try:
        out, anchor_file = home / "audit.json", home / "elsewhere" / "anchor.json"
        anchor_file.parent.mkdir()
        result = run("audit", "export", "--since", "2026-01-10T00:01:00+00:00", "--format",
                     "json", "--output", str(out), "--anchor", str(anchor_file))
        assert result.exit_code == 0, result.output
        rows = json.loads(out.read_text())
        assert [r["seq"] for r in rows] == [2, 3, 4, 5, 6, 7]
        assert set(rows[0]) == {*CONTENT_COLUMNS, "mac"}
        assert rows[0]["detail"]["path"] == "/Patient"
        assert json.loads(anchor_file.read_text())["rows"] == 6
        assert not (home / "audit.json.anchor.json").exists()

        result = run("audit", "export", "--since", "2026-03-01", "--format", "json")
        assert result.exit_code == 0
        assert json.loads(result.stdout) == []
        anchor = json.loads(result.stderr.split("anchor: ", 1)[1])
        assert (anchor["last_seq"], anchor["rows"]) == (7, 0)

        assert run("audit", "export", "--since", "last tuesday").exit_code == 2
        bad = home / "bad-anchor.json"
        bad.write_text('{"last_seq": "7"}')
        assert run("audit", "verify", "--anchor", str(bad)).exit_code == 2
    finally:
        store.close()


def test_verify_prints_every_problem_and_exits_1(home: Path) -> None:
    store = write_dated_events(home)
    try:
        set_row(store, 2, actor="mallory")
        delete_row(store, 5)
        result = run("audit", "verify")
        assert result.exit_code == 1
        assert result.stdout.splitlines() == [
            "audit log NOT intact: 2 problem(s) in 6 row(s)",
            "  seq 2: edited (its MAC does not match its content)",
            "  seq 5: deleted (1 row(s) missing from the sequence)",
        ]
    finally:
        store.close()


def test_an_export_of_real_activity_holds_no_phi(home: Path) -> None:
    assert run("import", str(DATA / "batch.jsonl")).exit_code == 0
    result = run("audit", "export", "--since", "2000-01-01", "--format", "json")
    rows = json.loads(result.stdout)
    assert [r["action"] for r in rows] == ["record.accepted"] * 3
    for phi in ("Okafor", "Dubois", "Sam", "Renée", "MRN-60210", "MRN-61877", "morning routine"):
        assert phi not in result.output


def test_audit_commands_on_a_database_older_than_the_chain_say_what_to_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from alembic import command
    from alembic.config import Config

    from connector.config import write_config
    from connector.store import MIGRATIONS

    monkeypatch.setenv("PEERSYNC_HOME", str(tmp_path))
    write_config(tmp_path, base_url="http://127.0.0.1:8090/fhir")
    store = Store.from_url(f"sqlite:///{tmp_path / 'peersync.db'}")
    try:
        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        with store.engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "0001")
    finally:
        store.close()
    for args in (["verify"], ["export", "--since", "2026-01-01"]):
        result = run("audit", *args)
        assert result.exit_code == 2
        assert "run `peersync db upgrade`" in result.output


# -- issue 8: key downgrade, anchors, filtered and escaped exports ---------------


def rechain(store: Store, key: bytes) -> None:
    """What a forger does: recompute every MAC (and the head) with ``key``."""
    prev = GENESIS_MAC
    with store.engine.begin() as conn:
        for r in [dict(x._mapping) for x in conn.execute(select(audit_events)
                                                         .order_by(audit_events.c.seq))]:
            prev = row_mac(key, prev, canonical(r))
            conn.execute(update(audit_events).where(audit_events.c.seq == r["seq"])
                         .values(mac=prev))
        conn.execute(update(audit_chain_head).values(last_seq=r["seq"], last_mac=prev))


def test_a_chain_rekeyed_with_the_development_key_after_the_key_was_deleted_fails(
    home: Path,
) -> None:
    # Finding 13, as reported: delete peersync.key, edit a row, recompute the chain with the
    # built-in key. Before: "audit log intact", exit 0 (only a warning on stderr).
    store = write_dated_events(home)
    try:
        (home / "peersync.key").unlink()
        set_row(store, 2, actor="mallory")
        rechain(store, DEVELOPMENT_KEY)
        result = run("audit", "verify")
        assert result.exit_code == 1, result.output
        assert "audit log NOT intact" in result.stdout and "audit log intact" not in result.stdout
        assert "unproven (no audit key is configured" in result.stdout
        # A new key and new activity must not launder the forged rows either.
        assert run("audit", "init-key").exit_code == 0
        rekeyed = home_store(home)
        try:
            with rekeyed.begin() as conn:
                rekeyed.audit(conn, actor="w1", action="ehr.exchange")
        finally:
            rekeyed.close()
        result = run("audit", "verify")
        assert result.exit_code == 1
        assert "seq 1-7: unproven (keyed with the public development key" in result.stdout
    finally:
        store.close()


def test_verify_says_plainly_that_without_an_anchor_a_cut_tail_goes_unseen(home: Path) -> None:
    store = write_dated_events(home)
    try:
        result = run("audit", "verify")
        assert result.exit_code == 0
        assert "without --anchor, a cut-off tail" in result.stderr
        assert "cannot be detected" in result.stderr
        anchor_file = home / "anchor.json"
        assert run("audit", "anchor", "--output", str(anchor_file)).exit_code == 0
        result = run("audit", "verify", "--anchor", str(anchor_file))
        assert result.exit_code == 0 and "without --anchor" not in result.output
    finally:
        store.close()


def test_audit_anchor_writes_the_head_and_verify_anchor_catches_a_cut_tail(home: Path) -> None:
    store = write_dated_events(home)
    try:
        result = run("audit", "anchor")  # to standard output
        assert result.exit_code == 0, result.output
        printed = json.loads(result.stdout)
        assert set(printed) == {"last_seq", "last_mac", "count", "anchored_at"}
        assert (printed["last_seq"], printed["last_mac"], printed["count"]) == (7, *head(store)[1:],
                                                                                 7)
        assert datetime.fromisoformat(printed["anchored_at"].replace("Z", "+00:00")).tzinfo
        anchor_file = home / "shipped" / "anchor.json"
        anchor_file.parent.mkdir()
        result = run("audit", "anchor", "--output", str(anchor_file))
        assert result.exit_code == 0
        assert f"anchor (seq 7, 7 row(s)) written to {anchor_file}" in result.output
        assert json.loads(anchor_file.read_text())["last_mac"] == head(store)[1]

        # cut two rows off the tail and move the head back: intact without the anchor
        delete_row(store, 7)
        delete_row(store, 6)
        set_head(store, 5, row(store, 5)["mac"])
        assert run("audit", "verify").exit_code == 0
        result = run("audit", "verify", "--anchor", str(anchor_file))
        assert result.exit_code == 1
        assert "  seq 7: truncated (the anchor taken 20" in result.stdout
        assert "the log now ends at seq 5)" in result.stdout

        # a head that disagrees with the log is not anchored
        set_head(store, 4, row(store, 4)["mac"])
        result = run("audit", "anchor")
        assert result.exit_code == 1 and result.stdout == ""
        assert "not anchored: the chain head (seq 4) disagrees with the last row (seq 5)" in (
            result.stderr)
    finally:
        store.close()


def write_varied_events(store: Store) -> None:
    with store.begin() as conn:
        at = datetime(2026, 3, 1, tzinfo=UTC)
        for i, (actor, action, record, state) in enumerate([
            ("web:admin", "job.released", "ps-1", "pending"),
            ("web:audrey", "login.ok", None, None),
            ("w1", "job.state", "ps-1", "synced"),
            ("w1", "job.state", "ps-2", "needs_attention"),
            ("import:peer-tool", "record.accepted", "ps-2", "pending"),
            ("web:admin", "login.failed", None, None),
            ("w1", "job.state", "ps-3", "synced"),
        ]):
            store.audit(conn, actor=actor, action=action, record_id=record, state_to=state,
                        source="peer-tool" if record else None, at=at + timedelta(days=i))


@pytest.mark.parametrize("options, query", [
    (["--until", "2026-03-04"], {"until": datetime(2026, 3, 4, tzinfo=UTC)}),
    (["--actor", "web:*"], {"actor": "web:*"}),
    (["--actor", "web:"], {"actor": "web:"}),
    (["--actor", "w1"], {"actor": "w1"}),
    (["--record", "ps-2"], {"record_id": "ps-2"}),
    (["--outcome", "synced"], {"outcome": "synced"}),
    (["--outcome", "login.failed"], {"outcome": "login.failed"}),
    (["--actor", "w1", "--outcome", "synced", "--until", "2026-03-05T00:00:00Z"],
     {"actor": "w1", "outcome": "synced", "until": datetime(2026, 3, 5, tzinfo=UTC)}),
], ids=lambda v: " ".join(v) if isinstance(v, list) else None)
def test_the_cli_export_honours_every_filter_of_the_page(
    home: Path, options: list[str], query: dict[str, Any]
) -> None:
    from connector.reports import AuditQuery, audit_page

    store = home_store(home)
    try:
        write_varied_events(store)
        since = datetime(2026, 3, 2, tzinfo=UTC)
        page = audit_page(store, AuditQuery(since=since, **query), limit=1000)
        out = home / "filtered.csv"
        result = run("audit", "export", "--since", "2026-03-02", "--output", str(out), *options)
        assert result.exit_code == 0, result.output
        with out.open(encoding="utf-8", newline="") as file:
            exported = [int(r["seq"]) for r in csv.DictReader(file)]
        assert exported == sorted(r["seq"] for r in page)
        assert 0 < len(exported) < 6  # the filter narrowed something
        anchor = json.loads((home / "filtered.csv.anchor.json").read_text())
        assert anchor["rows"] == len(exported) and anchor["last_seq"] == head(store)[0]
        assert anchor["filters"] and anchor["since"] == "2026-03-02T00:00:00.000000Z"
    finally:
        store.close()


DANGEROUS_IDS = ["-2+3", "=HYPERLINK(\"x\")", "+1", "@SUM(A1)", "\tx", "\rx", "'quoted", "ok-1"]


def test_csv_cells_are_escaped_against_formula_injection_and_still_verify(keyed: Store) -> None:
    with keyed.begin() as conn:
        for i, record_id in enumerate(DANGEROUS_IDS):
            keyed.audit(conn, actor="-w1" if i == 0 else "w1", action="record.accepted",
                        source="peer-tool", record_id=record_id)
    out = io.StringIO(newline="")
    export(keyed.engine, out, since=None, fmt="csv")
    rows = list(csv.DictReader(io.StringIO(out.getvalue(), newline="")))
    assert [r["record_id"] for r in rows] == [
        "'-2+3", "'=HYPERLINK(\"x\")", "'+1", "'@SUM(A1)", "'\tx", "'\rx", "''quoted", "ok-1"]
    assert rows[0]["actor"] == "'-w1"
    # no cell of the file starts a formula
    for r in rows:
        for cell in r.values():
            assert not cell.startswith(("=", "+", "-", "@", "\t", "\r"))
    # the escaping is reversible: every MAC recomputes from the file alone
    from connector.audit import csv_value

    prev = GENESIS_MAC
    for r in rows:
        content: dict[str, Any] = {n: csv_value(r[n]) or None for n in CONTENT_COLUMNS}
        content["at"] = datetime.fromisoformat(content["at"].replace("Z", "+00:00"))
        content["detail"] = json.loads(content["detail"]) if content["detail"] else None
        assert row_mac(KEY, prev, canonical(content)) == r["mac"]
        prev = r["mac"]


def test_the_audit_module_no_longer_imports_the_store_and_the_cli_lives_apart() -> None:
    import subprocess
    import sys

    import connector.audit
    import connector.cli

    code = ("import sys, connector.audit; "
            "print('connector.store' in sys.modules, 'click' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, cwd=Path(connector.audit.__file__).parents[1])
    assert done.stdout.split() == ["False", "False"]
    source = Path(connector.audit.__file__).read_text(encoding="utf-8")
    assert "connector.store" not in source and "import click" not in source
    assert not hasattr(connector.audit, "audit_group")
    assert connector.cli.main.commands["audit"].callback.__module__ == "connector.audit_cli"
    assert set(connector.cli.main.commands["audit"].commands) == {  # type: ignore[attr-defined]
        "export", "anchor", "verify", "init-key"}
