"""The sync engine's handling of EHR error statuses (a mocked EHR; the real one: integration/)."""

from __future__ import annotations

import json
import re
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
import responses

from connector.config import parse_config
from connector.fhir_client import FhirClient
from connector.states import JobState
from connector.store import Store, utcnow
from connector.sync import SyncEngine
from tests.conftest import load_example

BASE = "http://127.0.0.1:9/fhir"
PHI = ("Dana", "Lopez", "MRN-55821", "housing application")


def _outcome(code: str, text: str) -> dict[str, Any]:
    return {"resourceType": "OperationOutcome",
            "issue": [{"severity": "error", "code": code, "diagnostics": text}]}


def _bundle(*resources: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "searchset",
            "entry": [{"resource": r, "search": {"mode": "match"}} for r in resources]}


@pytest.fixture
def engine(sqlite_store: Store, profile: Any, tmp_path: Path):  # type: ignore[no-untyped-def]
    config = parse_config({"ehr": {"base_url": BASE}}, path=tmp_path / "peersync.toml",
                          environ={})
    client = FhirClient(base_url=BASE, timeout_s=2)
    yield SyncEngine(store=sqlite_store, client=client, profile=profile, config=config,
                     worker="test")
    client.close()


def _mock_lookups(rsps: responses.RequestsMock) -> None:
    """The EHR knows the patient, the specialist, the agency and the Device."""
    rsps.get(re.compile(rf"{BASE}/Patient\?.*"),
             json=_bundle({"resourceType": "Patient", "id": "pat-1"}))
    rsps.get(re.compile(rf"{BASE}/Practitioner\?.*"),
             json=_bundle({"resourceType": "Practitioner", "id": "pr-1"}))
    rsps.get(re.compile(rf"{BASE}/Organization\?.*"),
             json=_bundle({"resourceType": "Organization", "id": "org-1"}))
    rsps.get(re.compile(rf"{BASE}/Device\?.*"),
             json=_bundle({"resourceType": "Device", "id": "dev-1"}))


def _later(engine: SyncEngine) -> None:
    """Move the engine's clock past every scheduled retry."""
    engine.clock = lambda: utcnow() + timedelta(hours=1)


def _job(store: Store) -> dict[str, Any]:
    [row] = store.jobs_overview()
    return row


def _outcome_text(store: Store) -> str | None:
    from sqlalchemy import select

    from connector.schema import jobs

    with store.engine.connect() as conn:
        return conn.execute(select(jobs.c.outcome_text)).scalar_one()


@pytest.mark.parametrize("status", [500, 502, 503])
def test_server_error_schedules_a_retry(engine: SyncEngine, status: int) -> None:
    engine.store.add_records([load_example("in-person-session.json")], actor="t")
    with responses.RequestsMock() as rsps:
        _mock_lookups(rsps)
        rsps.post(BASE, status=status, json=_outcome("exception", "database is down"))
        summary = engine.run(max_wait_s=0)
    row = _job(engine.store)
    assert row["state"] == JobState.RETRY_SCHEDULED
    assert row["attempts"] == 1
    assert summary.states == {"retry_scheduled": 1}
    assert engine.store.next_due_at() > utcnow()


def test_429_retry_after_is_honoured(engine: SyncEngine) -> None:
    engine.store.add_records([load_example("in-person-session.json")], actor="t")
    with responses.RequestsMock() as rsps:
        _mock_lookups(rsps)
        rsps.post(BASE, status=429, headers={"Retry-After": "120"},
                  json=_outcome("throttled", "slow down"))
        engine.run(max_wait_s=0)
    due = engine.store.next_due_at()
    assert due is not None and due >= utcnow() + timedelta(seconds=115)


@pytest.mark.parametrize("status,code", [(400, "invalid"), (404, "not-found"),
                                         (409, "conflict"), (412, "multiple-matches"),
                                         (422, "processing")])
def test_refusal_needs_attention_with_the_outcome_for_admins(
        engine: SyncEngine, status: int, code: str) -> None:
    engine.store.add_records([load_example("in-person-session.json")], actor="t")
    diagnostics = "Encounter for Dana Lopez (MRN-55821) refused"
    with responses.RequestsMock() as rsps:
        _mock_lookups(rsps)
        rsps.post(BASE, status=status, json=_outcome(code, diagnostics))
        summary = engine.run(max_wait_s=0)
    row = _job(engine.store)
    assert row["state"] == JobState.NEEDS_ATTENTION
    assert str(status) in row["reason"]
    assert code in row["reason"]
    # the EHR's words are kept for the admin, but never in the reason, the summary or audit
    assert diagnostics in (_outcome_text(engine.store) or "")
    audit = json.dumps(engine.store.audit_events(), default=str)
    for text in (row["reason"], " ".join(summary.errors), audit):
        assert not any(p in text for p in PHI)


def _location(entry: dict[str, Any], i: int) -> str:
    return f"{entry['request']['url'].split('?')[0]}/x{i}/_history/1"


def test_a_refused_transaction_is_split_so_only_the_bad_record_waits(engine: SyncEngine) -> None:
    good = load_example("in-person-session.json")
    other = load_example("in-person-session.json", source="other-tool")
    engine.store.add_records([good, other], actor="t")
    sent: list[int] = []

    def transaction(request: requests.PreparedRequest) -> tuple[int, dict[str, str], str]:
        bundle = json.loads(request.body or b"{}")
        sent.append(len(bundle["entry"]))
        urls = [e["request"]["url"] for e in bundle["entry"]]
        if any("other-tool" in u for u in urls):
            return 400, {}, json.dumps(_outcome("invalid", "bad"))
        return 200, {}, json.dumps({
            "resourceType": "Bundle", "type": "transaction-response",
            "entry": [{"response": {"status": "201 Created", "location": _location(e, i)}}
                      for i, e in enumerate(bundle["entry"])]})

    with responses.RequestsMock() as rsps:
        _mock_lookups(rsps)
        rsps.add_callback(responses.POST, BASE, callback=transaction)
        engine.run(max_wait_s=0)
    assert sent == [6, 3, 3]  # both together, then each alone
    states = {r["source"]: r["state"] for r in engine.store.jobs_overview()}
    assert states == {"peer-tool": "synced", "other-tool": "needs_attention"}


def test_a_lost_response_is_unknown_and_settled_by_lookup_not_resent(engine: SyncEngine) -> None:
    record = load_example("in-person-session.json")
    engine.store.add_records([record], actor="t")
    with responses.RequestsMock() as rsps:
        _mock_lookups(rsps)
        rsps.post(BASE, body=requests.exceptions.ReadTimeout("read timed out"))
        engine.run(max_wait_s=0)
    assert _job(engine.store)["state"] == JobState.UNKNOWN

    # The EHR did apply it: the lookup finds the new note version; nothing is re-sent.
    doc = {"resourceType": "DocumentReference", "id": "doc-9", "meta": {"versionId": "1"}}
    enc = {"resourceType": "Encounter", "id": "enc-9", "meta": {"versionId": "1"}}
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        _mock_lookups(rsps)
        rsps.get(re.compile(rf"{BASE}/DocumentReference\?.*"), json=_bundle(doc))
        rsps.get(re.compile(rf"{BASE}/Encounter\?.*"), json=_bundle(enc))
        _later(engine)
        engine.run(max_wait_s=0)
        assert not [c for c in rsps.calls if c.request.method == "POST"]
    assert _job(engine.store)["state"] == JobState.SYNCED
    ledger = engine.store.ledger_for_record("peer-tool", record.id)
    # the Provenance travelled in the same transaction: recorded, its id unknown
    assert {(e.resource_type, e.ehr_id) for e in ledger} == {
        ("DocumentReference", "doc-9"), ("Encounter", "enc-9"), ("Provenance", None)}


def test_a_lost_response_not_applied_is_sent_again(engine: SyncEngine) -> None:
    engine.store.add_records([load_example("in-person-session.json")], actor="t")
    with responses.RequestsMock() as rsps:
        _mock_lookups(rsps)
        rsps.post(BASE, body=requests.exceptions.ConnectionError("reset by peer"))
        engine.run(max_wait_s=0)
    state = _job(engine.store)["state"]
    assert state in (JobState.UNKNOWN, JobState.RETRY_SCHEDULED)
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        _mock_lookups(rsps)
        rsps.get(re.compile(rf"{BASE}/DocumentReference\?.*"), json=_bundle())
        rsps.post(BASE, json={"resourceType": "Bundle", "type": "transaction-response", "entry": [
            {"response": {"status": "201 Created", "location": f"{t}/{t.lower()}-1/_history/1"}}
            for t in ("Encounter", "DocumentReference", "Provenance")]})
        _later(engine)
        engine.run(max_wait_s=0)
    assert _job(engine.store)["state"] == JobState.SYNCED


def test_a_record_fhir_cannot_take_needs_attention_and_others_go_on(
        engine: SyncEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    from fhir.resources.R4B.encounter import Encounter

    import mappings.resources as res

    real = res.encounter_json

    def refuse_one(record, profile, **kw):  # type: ignore[no-untyped-def]
        if record.source == "odd-tool":  # a value the FHIR model refuses
            Encounter.model_validate({"resourceType": "Encounter", "status": ["Dana Lopez"]})
        return real(record, profile, **kw)

    monkeypatch.setattr(res, "encounter_json", refuse_one)
    engine.store.add_records([load_example("in-person-session.json", source="odd-tool"),
                              load_example("in-person-session.json")], actor="t")
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        _mock_lookups(rsps)
        rsps.post(BASE, json={"resourceType": "Bundle", "type": "transaction-response", "entry": [
            {"response": {"status": "201 Created", "location": f"{t}/{t.lower()}-1/_history/1"}}
            for t in ("Encounter", "DocumentReference", "Provenance")]})
        engine.run(max_wait_s=0)
    rows = {r["source"]: r for r in engine.store.jobs_overview()}
    assert rows["peer-tool"]["state"] == JobState.SYNCED
    odd = rows["odd-tool"]
    assert odd["state"] == JobState.NEEDS_ATTENTION
    assert odd["reason"] == "cannot be mapped to FHIR R4: class, status"  # paths, no values


def test_an_if_match_conflict_is_reread_and_resent_once_then_needs_attention(
        engine: SyncEngine) -> None:
    engine.store.add_records([load_example("in-person-session.json")], actor="t")
    created = {"resourceType": "Bundle", "type": "transaction-response", "entry": [
        {"response": {"status": "201 Created", "location": f"{t}/{t.lower()}-1/_history/1"}}
        for t in ("Encounter", "DocumentReference", "Provenance")]}
    with responses.RequestsMock() as rsps:
        _mock_lookups(rsps)
        rsps.post(BASE, json=created)
        engine.run(max_wait_s=0)
    engine.store.add_records([load_example("amendment.json")], actor="t")
    sent: list[list[str]] = []

    def conflict(request: requests.PreparedRequest) -> tuple[int, dict[str, str], str]:
        bundle = json.loads(request.body or b"{}")
        sent.append([e["request"].get("ifMatch", "") for e in bundle["entry"]])
        return 412, {}, json.dumps(_outcome("conflict", "version conflict"))

    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        _mock_lookups(rsps)
        rsps.add_callback(responses.POST, BASE, callback=conflict)
        for kind, ehr_id in (("Encounter", "encounter-1"), ("DocumentReference",
                                                             "documentreference-1")):
            rsps.get(f"{BASE}/{kind}/{ehr_id}",
                     json={"resourceType": kind, "id": ehr_id, "meta": {"versionId": "7"}})
        engine.run(max_wait_s=0)
    # sent with the ledger's version, then once more with the version re-read; no third time
    assert [m for m in sent[0] if m] == ['W/"1"', 'W/"1"']
    assert [m for m in sent[1] if m] == ['W/"7"', 'W/"7"']
    assert len(sent) == 2
    states = sorted(r["state"] for r in engine.store.jobs_overview())
    assert states == ["needs_attention", "synced"]
