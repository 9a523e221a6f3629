"""Fuzz (issue 8): hostile records through every channel reachable without a browser.

0 crashes / 5xx; every rejection names the record (its id when the id is
valid) and a field, and echoes no value; every good record in the same input
is kept. Deterministic (derandomize) and bounded (under 2 minutes in all).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from hypothesis import given
from hypothesis import strategies as st

from connector.errors import RecordInvalid
from connector.intake import CSV_COLUMNS, Accepted, Rejected, iter_records, validate_record
from connector.records import EncounterRecord
from tests.fuzz.strategies import (
    CANARY,
    ID_RE,
    base,
    fuzz_settings,
    hostile_strings,
    malformed,
    no_echo,
    put,
)

SRC = "fuzz"
FIGURES: dict[str, int] = {}


def batches(size: int, good_every: int = 2) -> st.SearchStrategy[list[dict[str, Any]]]:
    """``size`` records: ids fz-0.. ; every ``good_every``-th left valid."""
    return st.tuples(
        *[
            st.just(base(f"fz-{i}")) if i % good_every == 0 else malformed(f"fz-{i}")
            for i in range(size)
        ]
    ).map(list)


def check_rejection(r: Rejected, record: object) -> None:
    text = r.error.describe()
    no_echo(text, record)
    assert r.error.errors and all(e.path or e.message for e in r.error.errors)
    rid = record.get("id") if isinstance(record, dict) else None
    if isinstance(rid, str) and ID_RE.match(rid):
        assert r.error.record_id == rid


def count(channel: str, n: int) -> None:
    FIGURES[channel] = FIGURES.get(channel, 0) + n


# -- the validator: 500 x 20 = 10,000 records ---------------------------------


@fuzz_settings(500)
@given(batches(20, good_every=1000))
def test_validator(records: list[dict[str, Any]]) -> None:
    for position, record in enumerate(records, start=1):
        try:
            validate_record(record, source=SRC, position=position)
        except RecordInvalid as exc:
            check_rejection(Rejected(position, exc), record)
    count("validator", len(records))


# -- files: JSON array, JSON Lines, CSV, 100 x 5 records each -----------------


def _results(data: bytes, fmt: str | None = None) -> list[Accepted | Rejected]:
    return list(iter_records(io.BytesIO(data), source=SRC, format=fmt))


def _check_file(records: list[dict[str, Any]], results: list[Accepted | Rejected]) -> None:
    accepted = {r.record.id for r in results if isinstance(r, Accepted)}
    for i, record in enumerate(records):
        if i % 2 == 0:
            assert record["id"] in accepted  # good ones kept
    for r in results:
        if isinstance(r, Rejected):
            no_echo(r.error.describe(), records)


@fuzz_settings(100)
@given(batches(5))
def test_json_array_file(records: list[dict[str, Any]]) -> None:
    results = _results(json.dumps(records).encode("utf-8", "surrogatepass"))
    assert len(results) == len(records)
    _check_file(records, results)
    count("file-json", len(records))


@fuzz_settings(100)
@given(batches(5), st.lists(hostile_strings, max_size=2))
def test_json_lines_file(records: list[dict[str, Any]], garbage: list[str]) -> None:
    lines = [json.dumps(r) for r in records] + [g.replace("\n", " ") for g in garbage]
    data = ("\n".join(lines) + "\n").encode("utf-8", "surrogatepass")
    results = _results(data)
    assert len(results) == len(lines)  # each line accepted or rejected, none lost
    _check_file(records, results)
    count("file-jsonl", len(records))


def _cell(value: Any) -> str:
    if isinstance(value, list):
        return ";".join(str(v) for v in value)
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None or isinstance(value, dict) else str(value)


@fuzz_settings(100)
@given(batches(5), st.sampled_from(["ok", "no-header", "quote"]))
def test_csv_file(records: list[dict[str, Any]], shape: str) -> None:
    columns = sorted(CSV_COLUMNS)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    if shape != "no-header":
        writer.writerow(columns)
    for record in records:
        row = []
        for path in columns:
            value: Any = record
            for part in path.split("."):
                value = value.get(part) if isinstance(value, dict) else None
            row.append(_cell(value))
        writer.writerow(row)
    text = out.getvalue()
    if shape == "quote":  # an unterminated quote in the second record
        lines = text.split("\n")
        lines[2] = lines[2] + ',"' + CANARY
        text = "\n".join(lines)
    results = _results(text.encode("utf-8", "surrogatepass"), "csv")
    if shape == "ok" and all("\n" not in _cell(v) for r in records for v in r.values()):
        _check_file(records, results)
    for r in results:
        if isinstance(r, Rejected):
            no_echo(r.error.describe(), records)
    count("file-csv", len(records))


# -- the store's add_records (Python API, no intake): 50 x 10 records ---------


@pytest.fixture(scope="module")
def sqlite_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from connector.store import Store

    store = Store.from_url(f"sqlite:///{tmp_path_factory.mktemp('fuzz') / 'fuzz.db'}")
    store.migrate()
    yield store
    store.close()


_store_values = st.one_of(
    hostile_strings.filter(lambda s: "\ud800" not in s),
    st.integers(min_value=-(2**70), max_value=2**70),
)
_store_paths = st.sampled_from(
    ["participant.id", "specialist.id", "note.id", "participant.mrn", "note.version",
     "service.group_size", "start", "consent.id", "specialist.given"]
)


@fuzz_settings(50)
@given(st.lists(st.tuples(_store_paths, _store_values), min_size=10, max_size=10),
       st.integers(0, 10**9))
def test_store_add_records(sqlite_store: Any, changes: list[tuple[str, Any]], salt: int) -> None:
    records = []
    for i, (path, value) in enumerate(changes):
        data = base(f"st-{salt}-{i}")
        if i % 2:
            if path == "start":  # from_dict needs a parseable time: one past UTC's range
                value = "9999-12-31T23:59:00-01:00"
            put(data, path, value)
        records.append(EncounterRecord.from_dict(SRC, data))
    summary = sqlite_store.add_records(records, actor="fuzz")
    refused = {r.record_id for r in summary.refused}
    assert summary.new_versions + summary.unchanged + len(refused) == len(records)
    assert not refused & {r.id for i, r in enumerate(records) if i % 2 == 0}
    for r in summary.refused:
        no_echo(str(r), changes)
    count("store", len(records))


# -- the JSON API through Flask's test client: 100 x 5 records ----------------


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Flask, str]]:
    from connector.api_tokens import add_token
    from tests.webapp_support import make_app, make_home
    from webapp import close_app

    mp = pytest.MonkeyPatch()
    home = make_home(Path(tmp_path_factory.mktemp("fuzz-api")), mp)
    store = home.store()
    try:
        _, token = add_token(store, source="tool-a", actor="fuzz")
    finally:
        store.close()
    application = make_app(home)
    yield application, token
    close_app(application)
    mp.undo()


@fuzz_settings(100)
@given(batches(5))
def test_json_api(api: tuple[Flask, str], records: list[dict[str, Any]]) -> None:
    app, token = api
    body = json.dumps(records).encode("utf-8", "surrogatepass")
    response = app.test_client().post(
        "/api/v1/encounters", data=body, content_type="application/json",
        headers={"Authorization": f"Bearer {token}"},
    )
    assert response.status_code < 500
    text = response.get_data(as_text=True)
    assert CANARY not in text
    count("api-status-" + str(response.status_code), 1)
    if response.status_code == 202:
        results = response.get_json()["results"]
        assert len(results) == len(records)
        for i in range(0, len(records), 2):
            assert results[i]["status"] == "accepted"
    count("api", len(records))


def test_figures() -> None:
    """Printed for the README (pytest -s): records fuzzed per channel."""
    print("fuzz figures:", FIGURES)
