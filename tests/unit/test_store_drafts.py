"""The document form's store (connector/store/drafts.py) on SQLite and PostgreSQL: drafts
and their documentation time, a specialist's caseload and notes, retraction events."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from connector.records import EncounterRecord, Participant
from connector.store.drafts import counted_seconds
from tests.conftest import example_dict

T0 = datetime(2026, 11, 23, 15, 0, tzinfo=UTC)
HOUR = 3600.0


def _user(store: Any, name: str = "alex") -> int:
    from connector.accounts import add_user

    add_user(store, name, role="specialist", specialist_id="S-17",
             password="a-long-password-17", actor="test")
    from sqlalchemy import select

    from connector.schema import users

    with store.engine.connect() as conn:
        return int(conn.execute(select(users.c.id).where(users.c.name == name)).scalar_one())


def _record(record_id: str, specialist: str, p: Participant) -> EncounterRecord:
    data = example_dict("in-person-session.json")
    data["id"] = record_id
    data["note"]["id"] = record_id
    data["specialist"]["id"] = specialist
    data["participant"] = {k: v for k, v in (("id", p.id), ("mrn", p.mrn),
                                             ("given", p.given), ("family", p.family)) if v}
    return EncounterRecord.from_dict("peer-tool", data)


def test_counted_seconds_caps_and_never_counts_twice() -> None:
    assert counted_seconds(T0, T0 + timedelta(minutes=10), None, HOUR) == 600
    assert counted_seconds(T0, T0 + timedelta(hours=3), None, HOUR) == HOUR
    assert counted_seconds(T0, T0 + timedelta(minutes=10), T0 + timedelta(minutes=4),
                           HOUR) == 360
    assert counted_seconds(T0, T0 + timedelta(minutes=10), T0 + timedelta(minutes=20),
                           HOUR) == 0


def test_drafts_count_their_intervals(store: Any) -> None:
    user = _user(store)
    saved = store.save_draft(user_id=user, fields={"participant.id": "P-1"}, started=T0,
                             now=T0 + timedelta(minutes=10), cap_s=2 * HOUR, nonce="n1")
    again = store.save_draft(user_id=user, fields={"participant.id": "P-1"}, started=T0,
                             now=T0 + timedelta(minutes=12), cap_s=2 * HOUR, nonce="n1")
    assert again["id"] == saved["id"] and again["documentation_s"] == 720  # not 600 + 720
    resumed = store.save_draft(user_id=user, fields={"participant.id": "P-2"},
                               started=T0 + timedelta(hours=5),
                               now=T0 + timedelta(hours=9), cap_s=2 * HOUR,
                               draft_id=saved["id"])
    assert resumed["documentation_s"] == 720 + 2 * HOUR
    [draft] = store.drafts_of(user)
    assert draft["fields"] == {"participant.id": "P-2"} and draft["nonce"] == "n1"
    assert store.get_draft(user + 1, saved["id"]) is None  # only its owner's
    assert store.save_draft(user_id=user + 1, fields={}, started=T0, now=T0, cap_s=HOUR,
                            draft_id=saved["id"]) is None
    assert not store.delete_draft(user + 1, saved["id"])
    assert store.delete_draft(user, saved["id"]) and store.drafts_of(user) == []


def test_the_caseload_is_the_specialists_latest_details(store: Any) -> None:
    dana = Participant("P-1001", "MRN-1", "Dana", "Lopez")
    store.add_records([
        _record("r1", "S-17", Participant("P-1001", None, "Dana", "Lopes")),
        _record("r2", "S-17", Participant("P-1002", "MRN-2", "Sam", "Okafor")),
        _record("r3", "S-17", dana),  # the latest details of P-1001
        _record("r4", "S-22", Participant("P-1003", "MRN-3", "Renée", "Dubois")),
    ], actor="test")
    store.set_link("patient", "peer-tool|P-1002", "pat-2", linked_by="web:admin")
    caseload = store.caseload("S-17")
    assert [(p["id"], p["family"], p["mrn"], p["linked"]) for p in caseload] == [
        ("P-1001", "Lopez", "MRN-1", False), ("P-1002", "Okafor", "MRN-2", True)]
    assert [p["id"] for p in store.caseload("S-17", "OKAF")] == ["P-1002"]
    assert [p["id"] for p in store.caseload("S-17", "dana lopez")] == ["P-1001"]
    assert store.caseload("S-17", "dubois") == []
    assert store.caseload("S-17", "100%") == []  # LIKE wildcards are literal
    assert store.participant_of("S-17", "P-1003") is None
    assert store.participant_of("S-22", "P-1003")["given"] == "Renée"
    notes = store.recent_notes("S-17")
    assert [n["record_id"] for n in notes] == ["r3", "r2", "r1"]
    assert notes[0]["participant_name"] == "Dana Lopez"


def test_a_retraction_event_keeps_its_reason_code(store: Any) -> None:
    store.add_records([_record("r1", "S-17", Participant("P-1"))], actor="test")
    latest = store.latest_version("peer-tool", "r1")
    store.note_retraction(actor="web:alex", source="peer-tool", record_id="r1",
                          record_version_id=latest["record_version_id"],
                          job_id=latest["job_id"], reason="duplicate")
    [event] = store.retractions("peer-tool", "r1")
    assert event["reason"] == "duplicate" and event["actor"] == "web:alex"
    assert event["job_id"] == latest["job_id"]
