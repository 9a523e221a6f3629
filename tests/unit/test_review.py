"""Supervisor review (issue 10): the profile's [review], intake's first state, co-signing and
returning in the store (SQLite and PostgreSQL), the sync's own check, and contract v2."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from connector.accounts import add_user, find_user
from connector.errors import ConfigError
from connector.intake import Accepted, iter_records
from connector.records import EncounterRecord
from connector.review import NO_REVIEW, ReviewRefused, ReviewRule, carried_cosignature
from connector.schema import jobs
from connector.states import RESOLVED_BY_SYNC, UNFINISHED_STATES, WAITING_STATES, JobState
from connector.store import Store
from connector.sync import wait_rule
from mappings.profile import default_profile_path, load_profile
from tests.conftest import example_dict
from tests.webapp_support import cheap_hashes

SRC = "peer-tool"
COSIGN = ReviewRule(policy="cosign")
PASSWORD = "sam-supervisor-pw-1"


def record(id: str = "ps-r-1", *, note: dict[str, Any] | None = None, **fields: Any
           ) -> EncounterRecord:
    data = copy.deepcopy(example_dict("in-person-session.json"))
    data["id"] = id
    if note is not None:
        data["note"].update(note)
    data.update(fields)
    return EncounterRecord.from_dict(SRC, data)


def states(store: Store) -> list[tuple[str, str]]:
    with store.engine.connect() as conn:
        return [(r.record_id, r.state) for r in
                conn.execute(select(jobs.c.record_id, jobs.c.state).order_by(jobs.c.id))]


def version_ids(store: Store) -> list[int]:
    with store.engine.connect() as conn:
        return list(conn.execute(select(jobs.c.record_version_id).order_by(jobs.c.id)).scalars())


@pytest.fixture
def cosign_store(store: Store, monkeypatch: pytest.MonkeyPatch) -> Store:
    cheap_hashes(monkeypatch)
    store.review_rule = COSIGN
    add_user(store, "sam", role="supervisor", specialist_id="S-90", password=PASSWORD,
             actor="test")
    add_user(store, "lee", role="supervisor", specialist_id="S-91", supervises=["S-22"],
             password=PASSWORD, actor="test")
    add_user(store, "alex", role="specialist", specialist_id="S-17", password=PASSWORD,
             actor="test")
    return store


def user(store: Store, name: str) -> Any:
    found = find_user(store, name)
    assert found is not None
    return found


# -- the states ------------------------------------------------------------------


def test_waiting_review_waits_holds_later_versions_but_is_not_re_resolved_by_a_sync() -> None:
    assert JobState.WAITING_REVIEW in WAITING_STATES  # a sync exits 0 over it
    assert JobState.WAITING_REVIEW in UNFINISHED_STATES  # a later version waits behind it
    assert JobState.WAITING_REVIEW not in RESOLVED_BY_SYNC  # only a co-signature releases it
    assert JobState.RETURNED not in UNFINISHED_STATES  # terminal: nothing waits behind it
    assert JobState.RETURNED not in WAITING_STATES


# -- the profile -----------------------------------------------------------------


def _profile(tmp_path: Path, review: str) -> Path:
    path = tmp_path / "agency.toml"
    text = default_profile_path().read_text("utf-8")
    text = text[: text.index("[review]")] + review
    path.write_text(text, "utf-8")
    return path


def test_review_policy_defaults_to_none_and_reads_cosign_and_codes(tmp_path: Path) -> None:
    default = load_profile(default_profile_path())
    assert (default.review_policy, default.review_service_codes) == ("none", ())
    assert ReviewRule.of(default) == NO_REVIEW
    profile = load_profile(_profile(tmp_path, '[review]\npolicy = "cosign"\n'
                                               'service_codes = ["H0038", "T1016"]\n'))
    assert profile.review_policy == "cosign"
    assert profile.review_service_codes == ("H0038", "T1016")


@pytest.mark.parametrize(("review", "message"), [
    ('[review]\npolicy = "always"\n', 'review.policy: must be one of "none", "cosign"'),
    ('[review]\npolicy = true\n', "review.policy: must be a string"),
    ('[review]\nservice_codes = "H0038"\n', "review.service_codes: must be a list"),
    ('[review]\nservice_codes = ["h0038"]\n', "review.service_codes: item 1: must be a HCPCS"),
    ('[review]\nservice_codes = ["H0038", "H0038"]\n', "must not list a code twice"),
    ('[review]\npolicy = "cosign"\nsupervisor = "x"\n', "review.supervisor: unknown key"),
])
def test_a_bad_review_table_is_refused_naming_file_and_key(tmp_path: Path, review: str,
                                                           message: str) -> None:
    path = _profile(tmp_path, review)
    with pytest.raises(ConfigError) as exc:
        load_profile(path)
    assert str(path) in str(exc.value)
    assert message in str(exc.value)


# -- the rule ----------------------------------------------------------------------


def test_the_rule_holds_notes_only_under_cosign_and_only_for_the_listed_codes() -> None:
    note = record()
    no_note = EncounterRecord.from_dict(SRC, {k: v for k, v in example_dict(
        "in-person-session.json").items() if k != "note"} | {"status": "cancelled"})
    retraction = record(status="entered_in_error")
    other_code = record(service={"code": "T1016"})
    assert NO_REVIEW.initial_state(note) is JobState.PENDING
    assert COSIGN.initial_state(note) is JobState.WAITING_REVIEW
    assert COSIGN.initial_state(no_note) is JobState.PENDING  # nothing to sign
    assert COSIGN.initial_state(retraction) is JobState.PENDING  # never held back
    limited = ReviewRule(policy="cosign", service_codes=frozenset({"H0038"}))
    assert limited.initial_state(note) is JobState.WAITING_REVIEW
    assert limited.initial_state(other_code) is JobState.PENDING
    no_code = EncounterRecord.from_dict(SRC, example_dict("in-person-session.json") | {
        "service": {"modality": "video"}})
    assert limited.initial_state(no_code) is JobState.WAITING_REVIEW  # the default H0038


def test_a_record_co_signed_in_its_tool_starts_pending() -> None:
    signed = record(note={"cosigned_by": "S-90", "cosigned_at": "2026-11-20T16:00:00-05:00"})
    assert carried_cosignature(signed) is not None
    assert carried_cosignature(signed).staff_id == "S-90"  # type: ignore[union-attr]
    assert COSIGN.initial_state(signed) is JobState.PENDING


def test_the_sync_refuses_a_note_that_needs_review_without_a_co_signature() -> None:
    wait = wait_rule(record(), consent=None, sent_before=False, review=COSIGN, cosigned=False)
    assert wait is not None
    assert (wait.state, wait.reason) == (JobState.WAITING_REVIEW, "review-required")
    assert wait_rule(record(), consent=None, sent_before=False, review=COSIGN,
                     cosigned=True) is None
    assert wait_rule(record(), consent=None, sent_before=False) is None  # policy none


# -- intake ----------------------------------------------------------------------


def test_intake_under_none_is_pending_as_before(store: Store) -> None:
    store.add_records([record("a"), record("b", status="cancelled")], actor="t")
    assert states(store) == [("a", "pending"), ("b", "pending")]


def test_intake_under_cosign_waits_for_review_and_says_so_in_the_audit_log(
        cosign_store: Store) -> None:
    signed = record("c", note={"cosigned_by": "S-90",
                               "cosigned_at": "2026-11-20T16:00:00-05:00"})
    cosign_store.add_records([record("a"), record("r", status="entered_in_error"), signed],
                             actor="t")
    assert states(cosign_store) == [("a", "waiting_review"), ("r", "pending"), ("c", "pending")]
    accepted = [e for e in cosign_store.audit_events() if e["action"] == "record.accepted"]
    assert [(e["record_id"], e["state_to"]) for e in accepted] == [
        ("a", "waiting_review"), ("r", "pending"), ("c", "pending")]
    # a co-signature made in the source tool is in the audit log (a staff id and a time)
    assert accepted[2]["detail"]["cosigned_by"] == "S-90"
    assert accepted[2]["detail"]["cosigned_at"] == "2026-11-20T16:00:00-05:00"
    assert "cosigned_by" not in accepted[0]["detail"]


def test_a_sync_pass_never_claims_a_note_waiting_for_review(cosign_store: Store) -> None:
    cosign_store.add_records([record("a")], actor="t")
    assert cosign_store.claim(worker="w", run_id="run-1", limit=10) == []
    assert cosign_store.claim(worker="w", run_id="run-2", limit=10) == []
    assert states(cosign_store) == [("a", "waiting_review")]


# -- approve and return ------------------------------------------------------------------


def test_approve_co_signs_and_puts_the_job_back_in_line(cosign_store: Store) -> None:
    cosign_store.add_records([record("a")], actor="t")
    [version] = version_ids(cosign_store)
    at = datetime(2026, 11, 21, 9, 30, tzinfo=UTC)
    signature = cosign_store.approve(version, user(cosign_store, "sam"), at=at)
    assert (signature.staff_id, signature.at, signature.user) == ("S-90", at, "sam")
    assert states(cosign_store) == [("a", "pending")]
    assert cosign_store.cosignatures([version]) == {version: signature}
    decided = cosign_store.review_of(version)
    assert decided is not None and decided.decision == "approved"
    [event] = [e for e in cosign_store.audit_events() if e["action"] == "review.approved"]
    assert (event["state_from"], event["state_to"]) == ("waiting_review", "pending")
    assert event["detail"]["cosigned_by"] == "S-90"
    assert event["detail"]["cosigned_at"] == at.isoformat()
    assert len(cosign_store.claim(worker="w", run_id="run-1", limit=10)) == 1  # due now


def test_return_is_terminal_keeps_the_comment_and_logs_no_text(cosign_store: Store) -> None:
    cosign_store.add_records([record("a")], actor="t")
    [version] = version_ids(cosign_store)
    cosign_store.return_note(version, user(cosign_store, "sam"),
                             comment="Add what Dana agreed to bring on Friday.")
    assert states(cosign_store) == [("a", "returned")]
    decided = cosign_store.review_of(version)
    assert decided is not None
    assert (decided.decision, decided.comment) == ("returned",
                                                   "Add what Dana agreed to bring on Friday.")
    assert cosign_store.cosignatures([version]) == {}
    assert cosign_store.claim(worker="w", run_id="run-1", limit=10) == []
    log = json.dumps([e["detail"] for e in cosign_store.audit_events()])
    assert "Dana" not in log and "Friday" not in log
    with pytest.raises(ReviewRefused) as exc:  # terminal: no second decision
        cosign_store.approve(version, user(cosign_store, "sam"))
    assert exc.value.code == "not-waiting"


def test_a_resubmission_is_a_new_version_waiting_again_not_held_behind_the_returned_one(
        cosign_store: Store) -> None:
    cosign_store.add_records([record("a")], actor="t")
    [first] = version_ids(cosign_store)
    cosign_store.return_note(first, user(cosign_store, "sam"), comment="More detail, please.")
    resubmitted = record("a", note={"text": "Met Dana at the library; more detail now."})
    assert resubmitted.note is not None and resubmitted.note.version == 1  # same note.version
    assert cosign_store.add_records([resubmitted], actor="t").new_versions == 1
    assert states(cosign_store) == [("a", "returned"), ("a", "waiting_review")]
    second = version_ids(cosign_store)[1]
    cosign_store.approve(second, user(cosign_store, "sam"))
    claimed = cosign_store.claim(worker="w", run_id="run-1", limit=10)
    assert [job.record_version_id for job in claimed] == [second]  # returned holds nothing


def test_a_later_version_is_held_behind_one_waiting_for_review(cosign_store: Store) -> None:
    first = record("a")
    cosign_store.add_records([first], actor="t")
    cosign_store.review_rule = NO_REVIEW  # e.g. a code the policy does not list
    cosign_store.add_records([record("a", note={"version": 2, "text": "Amended."})], actor="t")
    assert states(cosign_store) == [("a", "waiting_review"), ("a", "pending")]
    assert cosign_store.claim(worker="w", run_id="run-1", limit=10) == []  # held behind v1
    cosign_store.approve(version_ids(cosign_store)[0], user(cosign_store, "sam"))
    claimed = cosign_store.claim(worker="w", run_id="run-2", limit=10)
    assert [job.record_version_id for job in claimed] == [version_ids(cosign_store)[0]]


@pytest.mark.parametrize(("signer", "code"), [
    ("alex", "not-supervisor"),  # a specialist account
    ("lee", "not-supervised"),  # supervises S-22 only; the note is S-17's
])
def test_only_a_supervisor_of_the_author_may_decide(cosign_store: Store, signer: str,
                                                     code: str) -> None:
    cosign_store.add_records([record("a")], actor="t")
    [version] = version_ids(cosign_store)
    with pytest.raises(ReviewRefused) as exc:
        cosign_store.approve(version, user(cosign_store, signer))
    assert exc.value.code == code
    assert states(cosign_store) == [("a", "waiting_review")]
    refused = [e for e in cosign_store.audit_events() if e["action"] == "review.refused"]
    assert [(e["detail"]["why"], e["record_version_id"]) for e in refused] == [(code, version)]


def test_a_supervisor_never_co_signs_their_own_note(cosign_store: Store) -> None:
    own = EncounterRecord.from_dict(SRC, example_dict("in-person-session.json") | {
        "id": "own", "specialist": {"id": "S-90", "family": "Sam"}})
    cosign_store.add_records([own], actor="t")
    [version] = version_ids(cosign_store)
    with pytest.raises(ReviewRefused) as exc:
        cosign_store.approve(version, user(cosign_store, "sam"))
    assert exc.value.code == "own-note"


def test_a_disabled_supervisor_is_refused(cosign_store: Store) -> None:
    from connector.accounts import set_active

    cosign_store.add_records([record("a")], actor="t")
    sam = user(cosign_store, "sam")
    set_active(cosign_store, "sam", False, actor="test")
    with pytest.raises(ReviewRefused) as exc:
        cosign_store.approve(version_ids(cosign_store)[0], sam)
    assert exc.value.code == "inactive"


def test_a_return_needs_a_comment(cosign_store: Store) -> None:
    cosign_store.add_records([record("a")], actor="t")
    with pytest.raises(ReviewRefused) as exc:
        cosign_store.return_note(version_ids(cosign_store)[0], user(cosign_store, "sam"),
                                 comment="   ")
    assert exc.value.code == "no-comment"
    assert states(cosign_store) == [("a", "waiting_review")]


def test_the_queue_lists_by_supervised_specialists(cosign_store: Store) -> None:
    other = EncounterRecord.from_dict(SRC, example_dict("in-person-session.json") | {
        "id": "b", "specialist": {"id": "S-22"}})
    cosign_store.add_records([record("a"), other], actor="t")
    assert [w.record_id for w in cosign_store.review_queue()] == ["a", "b"]
    lee = user(cosign_store, "lee")
    assert cosign_store.supervised(lee.id) == ("S-22",)
    assert cosign_store.supervised(user(cosign_store, "sam").id) == ()  # everyone
    assert [w.record_id for w in cosign_store.review_queue(specialist_ids=["S-22"])] == ["b"]


# -- contract v2 ---------------------------------------------------------------------


def _check(note: dict[str, Any], tmp_path: Path, **top: Any) -> list[str]:
    data = copy.deepcopy(example_dict("in-person-session.json"))
    data["note"].update(note)
    data.update(top)
    path = tmp_path / "r.json"
    path.write_text(json.dumps(data), "utf-8")
    [result] = list(iter_records(path, source=SRC))
    if isinstance(result, Accepted):
        return []
    return [f"{e.path}: {e.message}" for e in result.error.errors]


def test_contract_v2_takes_a_co_signature_and_checks_it(tmp_path: Path) -> None:
    good = {"cosigned_by": "S-90", "cosigned_at": "2026-11-20T16:00:00-05:00"}
    assert _check(good, tmp_path) == []
    assert _check({"cosigned_by": "S-90"}, tmp_path) == [
        "note.cosigned_at: required when cosigned_by is given"]
    assert _check({"cosigned_at": good["cosigned_at"]}, tmp_path) == [
        "note.cosigned_by: required when cosigned_at is given"]
    assert _check(good | {"cosigned_by": "S-17"}, tmp_path) == [
        "note.cosigned_by: must not be the specialist who wrote the note"]
    assert _check(good | {"cosigned_at": "2026-11-20T13:00:00-05:00"}, tmp_path) == [
        "note.cosigned_at: must not be before start"]
    future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    assert _check(good | {"cosigned_at": future}, tmp_path) == [
        "note.cosigned_at: must not be in the future"]
    assert _check(good | {"cosigned_at": "2026-11-20 16:00"}, tmp_path)[0].startswith(
        "note.cosigned_at: must be an RFC 3339 date-time")
    assert _check(good | {"cosigned_by": "S\u000190"}, tmp_path) == [
        "note.cosigned_by: must not contain control characters"]
    assert _check(good | {"cosigned_by": "S" * 65}, tmp_path)[0].startswith(
        "note.cosigned_by: must be at most 64")


def test_a_csv_export_maps_the_co_signature_columns(tmp_path: Path) -> None:
    path = tmp_path / "export.csv"
    path.write_text(
        "id,participant.id,specialist.id,start,end,note.id,note.text,note.cosigned_by,"
        "note.cosigned_at\n"
        "c-1,P-1,S-17,2026-11-20T14:00:00-05:00,2026-11-20T14:50:00-05:00,N-1,Hello,S-90,"
        "2026-11-20T16:00:00-05:00\n", "utf-8")
    [result] = list(iter_records(path, source=SRC))
    assert isinstance(result, Accepted), result
    assert result.record.note is not None and result.record.note.cosigned_by == "S-90"


# -- the sync engine's own check (defense in depth) ----------------------------------------


def test_the_engine_never_sends_nor_looks_up_a_note_needing_review(
        sqlite_store: Store, tmp_path: Path) -> None:
    """A version put in line without review (here: stored while the policy was "none")
    goes to waiting_review at the next sync under "cosign", without one EHR request."""
    import dataclasses

    import responses

    from connector.config import parse_config
    from connector.fhir_client import FhirClient
    from connector.sync import SyncEngine, SyncSummary

    sqlite_store.add_records([record("a")], actor="t")
    assert states(sqlite_store) == [("a", "pending")]
    base = "http://127.0.0.1:9/fhir"
    config = parse_config({"ehr": {"base_url": base}}, path=tmp_path / "peersync.toml",
                          environ={})
    profile = dataclasses.replace(load_profile(default_profile_path()), review_policy="cosign")
    with responses.RequestsMock() as rsps, FhirClient(base_url=base, timeout_s=2) as client:
        engine = SyncEngine(store=sqlite_store, client=client, profile=profile, config=config,
                            worker="test")
        summary = SyncSummary()
        engine.run_once("run-1", summary)
        assert len(rsps.calls) == 0
    assert summary.states["waiting_review"] == 1
    assert states(sqlite_store) == [("a", "waiting_review")]
    [job] = sqlite_store.jobs_overview()
    assert job["reason"] == "review-required"


def test_two_supervisors_deciding_at_once_one_wins(cosign_store: Store,
                                                   database_url: str) -> None:
    import threading

    from connector.store import Store as StoreClass

    cosign_store.add_records([record("a")], actor="t")
    [version] = version_ids(cosign_store)
    sam = user(cosign_store, "sam")
    outcomes: list[str] = []
    start = threading.Barrier(2)

    def decide(returning: bool) -> None:
        other = StoreClass.from_url(database_url)
        try:
            start.wait()
            if returning:
                other.return_note(version, sam, comment="Again, please.")
            else:
                other.approve(version, sam)
            outcomes.append("done")
        except ReviewRefused as exc:
            outcomes.append(exc.code)
        finally:
            other.close()

    threads = [threading.Thread(target=decide, args=(flag,)) for flag in (False, True)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["done", "not-waiting"]
    [(_, state)] = states(cosign_store)
    decided = cosign_store.review_of(version)
    assert decided is not None
    assert state == {"approved": "pending", "returned": "returned"}[decided.decision]
