"""Request size caps and bounded answers (API), and query parameters that never cause a 500."""

from __future__ import annotations

import json
from datetime import date

import pytest
from flask import Flask

from connector.api_tokens import add_token
from tests.conftest import example_dict
from tests.webapp_support import Home, import_examples, logged_in
from webapp import params


@pytest.fixture
def auth(home: Home) -> dict[str, str]:
    store = home.store()
    try:
        _, token = add_token(store, source="tool-a", actor="test")
    finally:
        store.close()
    return {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}


URL = "/api/v1/encounters"


# -- the JSON API ------------------------------------------------------------------------------


def test_deeply_nested_brackets_answer_400(app: Flask, auth: dict[str, str]) -> None:
    response = app.test_client().post(URL, data="[" * 5000, headers=auth)
    assert response.status_code == 400
    assert response.get_json()["error"] == "bad_request"
    assert "nested" in response.get_json()["message"]


def test_nesting_deeper_than_the_cap_answers_400(app: Flask, auth: dict[str, str]) -> None:
    body = "[" * 100 + "{}" + "]" * 100  # valid JSON, well within the decoder's limit
    response = app.test_client().post(URL, data=body, headers=auth)
    assert response.status_code == 400
    assert "deeper than 64" in response.get_json()["message"]


def test_not_json_still_answers_400(app: Flask, auth: dict[str, str]) -> None:
    client = app.test_client()
    for data in ("{", b"\xff\xfe\x00", ""):
        response = client.post(URL, data=data, headers=auth)
        assert response.status_code == 400 and response.get_json()["error"] == "bad_request"


def test_many_unknown_keys_give_a_small_answer(app: Flask, auth: dict[str, str]) -> None:
    record = example_dict("in-person-session.json")
    record.update({f"x{i}": 1 for i in range(4_000)})  # under intake's cap on fields
    response = app.test_client().post(URL, data=json.dumps(record), headers=auth)
    assert response.status_code == 422
    assert len(response.data) < 10_000  # was 260 KB for these 4,000 keys
    [result] = response.get_json()["results"]
    assert 1 <= len(result["errors"]) <= 20


def test_only_the_first_rejected_records_list_their_errors(app: Flask,
                                                           auth: dict[str, str]) -> None:
    app.config.update(API_MAX_ERROR_RECORDS=3, API_MAX_ERRORS_PER_RECORD=2)
    records = [{"id": f"r-{i}"} for i in range(5)]  # each misses several required fields
    response = app.test_client().post(URL, json=records, headers=auth)
    body = response.get_json()
    assert response.status_code == 422 and body["rejected"] == 5
    assert [len(r["errors"]) for r in body["results"]] == [2, 2, 2, 0, 0]
    assert all(r["more_errors"] > 0 for r in body["results"])
    assert [r["id"] for r in body["results"]] == [f"r-{i}" for i in range(5)]
    assert body["errors_truncated"] is True


def test_a_small_rejection_is_not_marked_truncated(app: Flask, auth: dict[str, str]) -> None:
    bad = dict(example_dict("in-person-session.json"), end="2026-11-20T13:00:00-05:00")
    body = app.test_client().post(URL, json=bad, headers=auth).get_json()
    assert "errors_truncated" not in body and "more_errors" not in body["results"][0]
    assert [e["path"] for e in body["results"][0]["errors"]] == ["end"]


def test_a_body_over_max_content_length_answers_413_json(app: Flask,
                                                         auth: dict[str, str]) -> None:
    app.config["MAX_CONTENT_LENGTH"] = 1000
    response = app.test_client().post(URL, data="[" + "1," * 1000 + "1]", headers=auth)
    assert response.status_code == 413
    assert response.is_json and response.get_json()["error"]


# -- query parameters of the pages -------------------------------------------------------------


OUT_OF_RANGE = [
    "/records/?to=9999-12-31",
    "/records/?from=0001-01-01",
    "/records/?from=0001-01-01&to=9999-12-31",
    "/records/?page=" + "9" * 30,
    "/records/?page=-5",
    "/audit/?to=9999-12-31",
    "/audit/?from=0001-01-01",
    "/audit/?before=" + "9" * 30,
    "/audit/?before=-1",
    "/documentation-time/?to=9999-12-31",
    "/documentation-time/?to=0001-01-01",
    "/documentation-time/?from=0001-01-01&to=9999-12-31",
    "/documentation-time/?from=9999-12-31",
]


@pytest.mark.parametrize("url", OUT_OF_RANGE)
def test_out_of_range_query_parameters_never_500(app: Flask, url: str) -> None:
    app.config["PROPAGATE_EXCEPTIONS"] = False
    response = logged_in(app, "admin").get(url)
    assert response.status_code == 200


def test_a_far_to_date_is_clamped_and_still_filters(app: Flask, home: Home) -> None:
    import_examples(home, "batch.jsonl")
    admin = logged_in(app, "admin")
    everything = admin.get("/records/").get_data(as_text=True)
    far = admin.get("/records/?from=2000-01-01&to=9999-12-31").get_data(as_text=True)
    assert "9000-12-31" in far  # the filter shows the clamped day
    for record_id in ("ps-2026-000124", "ps-2026-000125", "ps-2026-000126"):
        assert record_id in everything and record_id in far


def test_params_parsing() -> None:
    assert params.parse_day("9999-12-31") == params.MAX_DAY
    assert params.parse_day("0001-01-01") == params.MIN_DAY
    assert params.parse_day("2026-11-20") == date(2026, 11, 20)
    assert params.parse_day("2026-13-01") is None and params.parse_day("") is None
    assert params.parse_day("x" * 10_000) is None
    assert params.parse_int("9" * 30, low=1, high=10) == 10
    assert params.parse_int("-3", low=1, high=10) == 1
    assert params.parse_int("nope", low=1, high=10) is None
    assert params.parse_int("9" * 5000, low=1, high=10) is None

