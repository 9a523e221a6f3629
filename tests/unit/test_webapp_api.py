"""The JSON API (per-source bearer tokens) and /metrics (a metrics token)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from flask import Flask

from connector.api_tokens import add_token, revoke_token
from connector.states import JobState
from tests.conftest import example_dict
from tests.webapp_support import Home, import_examples


@pytest.fixture
def tokens(home: Home) -> dict[str, Any]:
    store = home.store()
    try:
        source, source_text = add_token(store, source="tool-a", actor="test")
        _, other_text = add_token(store, source="tool-b", actor="test")
        _, metrics_text = add_token(store, metrics=True, actor="test")
    finally:
        store.close()
    return {"a": source_text, "b": other_text, "metrics": metrics_text, "a_id": source.id}


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_post_one_record(app: Flask, tokens: dict[str, Any]) -> None:
    record = example_dict("in-person-session.json")
    response = app.test_client().post("/api/v1/encounters", json=record,
                                      headers=_auth(tokens["a"]))
    assert response.status_code == 202
    body = response.get_json()
    assert body["source"] == "tool-a" and body["accepted"] == 1 and body["rejected"] == 0
    [result] = body["results"]
    assert result["id"] == "ps-2026-000123" and result["status"] == "accepted"
    assert result["state"] == "pending" and isinstance(result["job_id"], int)


def test_post_a_list_with_a_bad_record(app: Flask, tokens: dict[str, Any], home: Home) -> None:
    good = example_dict("in-person-session.json")
    bad = dict(example_dict("in-person-session.json"), id="ps-bad", end="2026-11-20T13:00:00-05:00")
    bad.pop("participant")
    response = app.test_client().post("/api/v1/encounters", json=[good, bad, "nope"],
                                      headers=_auth(tokens["a"]))
    assert response.status_code == 202
    body = response.get_json()
    assert (body["accepted"], body["rejected"]) == (1, 2)
    _, second, third = body["results"]
    assert second["id"] == "ps-bad" and second["status"] == "rejected"
    assert {e["path"] for e in second["errors"]} == {"participant", "end"}
    assert third["position"] == 3 and third["status"] == "rejected"
    assert "2026-11-20T13" not in json.dumps(body)  # errors never repeat values
    store = home.store()
    try:
        [row] = store.jobs_overview()
    finally:
        store.close()
    assert row["source"] == "tool-a"  # the token's source


def test_all_rejected_is_422_and_not_json_is_400(app: Flask, tokens: dict[str, Any]) -> None:
    client = app.test_client()
    response = client.post("/api/v1/encounters", json={"id": "x"}, headers=_auth(tokens["a"]))
    assert response.status_code == 422 and response.get_json()["accepted"] == 0
    response = client.post("/api/v1/encounters", data="id=1", headers=_auth(tokens["a"]))
    assert response.status_code == 400 and response.get_json()["error"] == "bad_request"
    app.config["API_MAX_RECORDS"] = 2
    response = client.post("/api/v1/encounters", json=[{}, {}, {}], headers=_auth(tokens["a"]))
    assert response.status_code == 413


def test_get_state_of_a_record_of_the_tokens_source(app: Flask, tokens: dict[str, Any],
                                                    home: Home) -> None:
    client = app.test_client()
    client.post("/api/v1/encounters", json=example_dict("amendment.json"),
                headers=_auth(tokens["a"]))
    record_id = example_dict("amendment.json")["id"]
    response = client.get(f"/api/v1/encounters/{record_id}", headers=_auth(tokens["a"]))
    assert response.status_code == 200
    body = response.get_json()
    assert body["state"] == "pending" and len(body["versions"]) == 1
    # another source's token does not see it
    response = client.get(f"/api/v1/encounters/{record_id}", headers=_auth(tokens["b"]))
    assert response.status_code == 404
    assert client.get("/api/v1/encounters/nope", headers=_auth(tokens["a"])).status_code == 404


def test_tokens_are_checked(app: Flask, tokens: dict[str, Any], home: Home) -> None:
    client = app.test_client()
    url = "/api/v1/encounters"
    assert client.post(url, json={}).status_code == 401
    assert client.post(url, json={}, headers={"Authorization": "Basic eDp5"}).status_code == 401
    assert client.post(url, json={}, headers=_auth(tokens["metrics"])).status_code == 403
    store = home.store()
    try:
        revoke_token(store, tokens["a_id"], actor="test")
    finally:
        store.close()
    assert client.post(url, json={}, headers=_auth(tokens["a"])).status_code == 401
    assert client.get("/metrics", headers=_auth(tokens["b"])).status_code == 403


def test_metrics(app: Flask, tokens: dict[str, Any], home: Home) -> None:
    import_examples(home, "batch.jsonl")
    store = home.store()
    try:
        jobs = store.claim(worker="t", run_id="r", limit=10)
        for job, state in zip(jobs, (JobState.SYNCED, JobState.NEEDS_ATTENTION,
                                     JobState.WAITING_PATIENT), strict=True):
            with store.begin() as conn:
                store.finish(conn, job, state, actor="t")
    finally:
        store.close()
    response = app.test_client().get("/metrics", headers=_auth(tokens["metrics"]))
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    text = response.get_data(as_text=True)
    assert 'peersync_records{state="synced"} 1' in text
    assert 'peersync_records{state="pending"} 0' in text
    assert 'peersync_sync_attempts_total{outcome="needs_attention"} 1' in text
    assert "# TYPE peersync_sync_latency_seconds histogram" in text
    assert 'peersync_sync_latency_seconds_bucket{le="+Inf"} 1' in text
    assert 'peersync_sync_latency_seconds_bucket{le="86400"} 1' in text
    assert "peersync_sync_latency_seconds_count 1" in text


def test_a_duplicated_key_rejects_its_record_and_keeps_the_others(
        app: Flask, tokens: dict[str, Any]) -> None:
    """Finding 2: the last value of a repeated key never wins silently on the API either."""
    good = json.dumps(example_dict("in-person-session.json"))
    twice = json.dumps(dict(example_dict("in-person-session.json"), id="ps-twice"))
    again = '"id": "ps-twice", "end": "2026-11-20T15:00:00-05:00"'
    twice = twice.replace('"id": "ps-twice"', again)
    response = app.test_client().post("/api/v1/encounters", data=f"[{good}, {twice}]",
                                      content_type="application/json",
                                      headers=_auth(tokens["a"]))
    assert response.status_code == 202
    body = response.get_json()
    assert (body["accepted"], body["rejected"]) == (1, 1)
    second = body["results"][1]
    assert second["id"] == "ps-twice" and second["status"] == "rejected"
    assert any(e["path"] == "end" and "more than once" in e["message"] for e in second["errors"])
    assert "15:00" not in json.dumps(body)
