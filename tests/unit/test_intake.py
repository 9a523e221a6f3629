"""Intake: the contract's validation, and the JSON / JSON Lines / CSV readers."""

from __future__ import annotations

import copy
import io
import json
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from connector import intake
from connector.errors import RecordInvalid
from connector.intake import (
    Accepted,
    Rejected,
    iter_records,
    parse_payload,
    validate_record,
)

DATA = Path(__file__).resolve().parents[1] / "data"
SRC = "peer-tool"
ID = "ps-alpha"  # no digits: a leaked number can't hide in the record label
POS = 7

DELETE = object()


def base() -> dict[str, Any]:
    """A valid record using most fields (documentation interval: 12 minutes)."""
    return {
        "id": ID,
        "participant": {
            "id": "P-1001",
            "mrn": "MRN-55821",
            "given": "Dana",
            "family": "Lopez",
            "birth_date": "1988-04-12",
        },
        "specialist": {
            "id": "S-17",
            "npi": "1234567893",
            "given": "Alex",
            "family": "Kim",
            "credential": "CPRS",
        },
        "service": {"code": "H0038", "modality": "in_person", "setting": "community"},
        "start": "2026-11-20T14:00:00-05:00",
        "end": "2026-11-20T14:50:00-05:00",
        "status": "completed",
        "note": {
            "id": "N-88812",
            "version": 1,
            "text": "Met Dana at the library.\nHousing application, sections 1-3.",
            "content_type": "text/plain",
            "signed_at": "2026-11-20T15:05:00-05:00",
            "documentation_started": "2026-11-20T14:52:00-05:00",
            "documentation_finished": "2026-11-20T15:04:00-05:00",
        },
        "goals": ["housing", "wellness"],
        "part2": False,
        "consent": {"status": "active", "id": "C-1"},
    }


def mutate(record: dict[str, Any], path: str, value: object) -> dict[str, Any]:
    *parents, leaf = path.split(".")
    target = record
    for name in parents:
        target = target[name]
    if value is DELETE:
        del target[leaf]
    else:
        target[leaf] = value
    return record


def errors_of(obj: object, position: int | None = POS) -> list[str]:
    with pytest.raises(RecordInvalid) as info:
        validate_record(obj, source=SRC, position=position)
    return info.value.lines()


def collect(results: Iterator[Accepted | Rejected]) -> list[Accepted | Rejected]:
    out = list(results)
    for r in out:
        if isinstance(r, Rejected):
            assert r.error.position == r.position
    return out


def summary(results: list[Accepted | Rejected]) -> list[tuple[int, str]]:
    return [(r.position, "ok" if isinstance(r, Accepted) else "rejected") for r in results]


# --------------------------------------------------------------------------
# The examples in tests/data


@pytest.mark.parametrize(
    ("name", "count"),
    [
        ("in-person-session.json", 1),
        ("amendment.json", 1),
        ("batch.jsonl", 3),
        ("export.csv", 2),
        ("part2-without-consent.json", 1),
    ],
)
def test_examples_accepted(name: str, count: int) -> None:
    results = collect(iter_records(DATA / name, source=SRC))
    assert [r for r in results if isinstance(r, Rejected)] == []
    assert [r.position for r in results] == list(range(1, count + 1))


def test_example_fields_read_right() -> None:
    (session,) = collect(iter_records(DATA / "in-person-session.json", source=SRC))
    assert isinstance(session, Accepted)
    rec = session.record
    assert rec.key == (SRC, "ps-2026-000123")
    assert rec.note is not None and rec.note.minutes_spent == 12
    assert rec.note.text.count("\n") == 2
    assert rec.goals == ("housing", "wellness")
    assert rec.minutes == 50

    amendment = collect(iter_records(DATA / "amendment.json", source=SRC))[0]
    assert isinstance(amendment, Accepted)
    assert amendment.record.note is not None and amendment.record.note.version == 2

    batch = collect(iter_records(DATA / "batch.jsonl", source=SRC))
    records = [r.record for r in batch if isinstance(r, Accepted)]
    assert records[1].participant.given == "Renée"
    assert records[1].service.group_size == 6
    assert records[1].part2 is True
    assert records[2].status == "no_show" and records[2].note is None

    csv_rows = collect(iter_records(DATA / "export.csv", source=SRC))
    first, second = (r.record for r in csv_rows if isinstance(r, Accepted))
    assert first.goals == ("employment", "wellness")
    assert first.service.modality == "video"
    assert first.note is not None and first.note.documentation_minutes == 8
    assert isinstance(first.note.documentation_minutes, int)
    assert second.participant.family == "O'Neil"
    assert second.note is not None
    assert second.note.text == (
        'Walked to the benefits office together, "first time in a year" Chris said.'
    )
    assert second.specialist.given is None and "given" not in second.raw["specialist"]

    part2 = collect(iter_records(DATA / "part2-without-consent.json", source=SRC))[0]
    assert isinstance(part2, Accepted)
    assert part2.record.consent is not None and part2.record.consent.status == "none"


def test_valid_record_kept_as_given() -> None:
    data = {
        "id": ID,
        "participant": {"id": "P-1"},
        "specialist": {"id": "S-1"},
        "start": "2026-11-20T14:00:00Z",
        "end": "2026-11-20T14:30:00z",
    }
    before = copy.deepcopy(data)
    record = validate_record(data, source=SRC)
    assert record.raw == before  # no defaults injected
    again = validate_record(copy.deepcopy(before), source=SRC)
    assert again.content_hash == record.content_hash
    assert record.status == "completed" and record.service.modality == "in_person"


def test_base_record_is_valid() -> None:
    record = validate_record(base(), source=SRC, position=1)
    assert record.id == ID
    assert record.consent is not None and record.consent.id == "C-1"


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("end", "2026-11-21T14:00:00-05:00"),  # exactly 24 h
        ("end", "2026-11-20T14:00:00-05:00"),  # zero length (a no-show)
        ("end", "2026-11-20T20:00:00+01:00"),  # another offset, 1 h later
        ("start", "2026-11-20T19:00:00.123456Z"),  # fraction, UTC
        ("start", "2026-11-20t19:00:00z"),  # RFC 3339 allows lower case t / z
        ("note.documentation_minutes", 12.9),  # agrees within 1 minute
        ("note.documentation_minutes", 11),
        ("status", "cancelled"),  # a cancelled encounter may carry a note
        ("status", "no_show"),
        ("service.group_size", 2),
        ("participant.given", "Zoë Ñúñez 李"),
        ("participant.birth_date", "2024-02-29"),
        ("part2", True),
        ("goals", []),
        ("note.text", "x" * 100_000),
        ("specialist.npi", "1245319599"),
        ("consent", {}),
    ],
)
def test_valid_variants(path: str, value: object) -> None:
    validate_record(mutate(base(), path, value), source=SRC)


# --------------------------------------------------------------------------
# The table of bad records
#
# (path to change, new value or DELETE, expected error path, expected message,
#  a string that would show the value leaked, whether the id is named)

U = "unknown field (not in the contract)"
M = "required field missing"
DT = "must be an RFC 3339 date-time with a UTC offset, within years 0001-9999 in UTC"
D = "must be a real calendar date written YYYY-MM-DD"
ID_MSG = "must be 1-64 characters, each a letter, digit, '.', '_' or '-'"

BAD: list[tuple[str, str, object, str, str, str | None, bool]] = [
    # missing required fields, at each level
    ("missing id", "id", DELETE, "id", M, None, False),
    ("missing participant", "participant", DELETE, "participant", M, None, True),
    ("missing participant.id", "participant.id", DELETE, "participant.id", M, None, True),
    ("missing specialist", "specialist", DELETE, "specialist", M, None, True),
    ("missing specialist.id", "specialist.id", DELETE, "specialist.id", M, None, True),
    ("missing start", "start", DELETE, "start", M, None, True),
    ("missing end", "end", DELETE, "end", M, None, True),
    ("missing note.id", "note.id", DELETE, "note.id", M, None, True),
    ("missing note.text", "note.text", DELETE, "note.text", M, None, True),
    # unknown fields, at each level
    ("unknown top", "colour", "cerulean", "<field 12>", U, "colour", True),
    ("unknown participant", "participant.nick", "Dee", "participant.<field 6>", U, "nick", True),
    ("unknown specialist", "specialist.email", "a@b.org", "specialist.<field 6>", U, "email", True),
    ("unknown service", "service.units", 987, "service.<field 4>", U, "units", True),
    ("unknown note", "note.author", "Alex Kim", "note.<field 8>", U, "author", True),
    ("unknown consent", "consent.date", "2020-01-01", "consent.<field 3>", U, "date", True),
    ("unknown long name", "x" * 100, 1, "<field 12>", U, "xx", True),
    ("unknown control chars", "bad\x1b[2Jname", 1, "<field 12>", U, "bad", True),
    # wrong types
    ("group_size string", "service.group_size", "2", "service.group_size",
     "must be an integer", "'2'", True),
    ("group_size float", "service.group_size", 2.0, "service.group_size",
     "must be an integer", "2.0", True),
    ("group_size bool", "service.group_size", True, "service.group_size",
     "must be an integer", "True", True),
    ("part2 yes", "part2", "yes", "part2", "must be a boolean (true or false)", "yes", True),
    ("part2 one", "part2", 1, "part2", "must be a boolean (true or false)", "1", True),
    ("minutes bool", "note.documentation_minutes", True, "note.documentation_minutes",
     "must be a number", "True", True),
    ("minutes string", "note.documentation_minutes", "12", "note.documentation_minutes",
     "must be a number", "'12'", True),
    ("start number", "start", 1763665200, "start", "must be a string", "1763665200", True),
    ("participant not object", "participant", "P-1001", "participant",
     "must be an object (a group of fields)", "P-1001", True),
    ("goals not list", "goals", "housing", "goals", "must be a list", "housing", True),
    ("mrn null", "participant.mrn", None, "participant.mrn",
     "must be a string, not null (leave the field out instead)", "None", True),
    ("id number", "id", 4242, "id", "must be a string", "4242", False),
    # formats
    ("start no offset", "start", "2026-11-20T14:00:00", "start", DT, "2026-11-20T14", True),
    ("end space", "end", "2026-11-20 14:50:00-05:00", "end", DT, "14:50", True),
    ("end newline", "end", "2026-11-20T14:50:00-05:00\n", "end", DT, "14:50", True),
    ("signed_at date only", "note.signed_at", "2026-11-20", "note.signed_at", DT,
     "2026-11-20", True),
    ("start Feb 30", "start", "2026-02-30T10:00:00Z", "start", DT, "02-30", True),
    ("birth_date slashes", "participant.birth_date", "1988/04/12", "participant.birth_date",
     D, "1988", True),
    ("birth_date compact", "participant.birth_date", "19880412", "participant.birth_date",
     D, "19880412", True),
    ("birth_date Feb 30", "participant.birth_date", "1988-02-30", "participant.birth_date",
     D, "1988", True),
    ("birth_date arabic digits", "participant.birth_date", "١٩٨٨-04-12",
     "participant.birth_date", D, "١٩٨٨", True),
    # enums
    ("modality", "service.modality", "zoom", "service.modality",
     "must be one of: in_person, video, phone", "zoom", True),
    ("status", "status", "finished", "status",
     "must be one of: completed, cancelled, no_show, entered_in_error", "finished", True),
    ("setting", "service.setting", "school", "service.setting",
     "must be one of: office, community, home, hospital, residential, justice, other",
     "school", True),
    ("content_type", "note.content_type", "text/html", "note.content_type",
     "must be one of: text/plain, text/markdown", "text/html", True),
    ("consent.status", "consent.status", "granted", "consent.status",
     "must be one of: active, revoked, none", "granted", True),
    # patterns and lengths
    ("id pattern", "id", "ps 123!", "id", ID_MSG, "ps 123!", False),
    ("id too long", "id", "a" * 65, "id", ID_MSG, "a" * 65, False),
    ("id trailing newline", "id", "ps-alpha\n", "id", ID_MSG, None, False),
    ("id empty", "id", "", "id", ID_MSG, None, False),
    ("npi 9 digits", "specialist.npi", "123456789", "specialist.npi", "must be 10 digits",
     "123456789", True),
    ("service.code lower", "service.code", "h0038", "service.code",
     "must be 4-7 characters, each an upper-case letter or a digit", "h0038", True),
    ("given too long", "participant.given", "Q" * 201, "participant.given",
     "must be at most 200 characters", "QQQQQQQQQQ", True),
    ("credential too long", "specialist.credential", "C" * 33, "specialist.credential",
     "must be at most 32 characters", "CCCCCCCCCC", True),
    ("mrn empty", "participant.mrn", "", "participant.mrn", "must not be empty", None, True),
    ("note.text empty", "note.text", "", "note.text", "must not be empty", None, True),
    ("note.text too long", "note.text", "y" * 100_001, "note.text",
     "must be at most 100000 characters", "yyyyyyyyyy", True),
    ("goal empty", "goals", ["housing", ""], "goals[1]", "must not be empty", None, True),
    ("goal too long", "goals", ["g" * 65], "goals[0]", "must be at most 64 characters",
     "gggggggggg", True),
    # numeric limits
    ("note.version 0", "note.version", 0, "note.version", "must be at least 1", None, True),
    ("group_size 1", "service.group_size", 1, "service.group_size", "must be at least 2",
     None, True),
    ("minutes over", "note.documentation_minutes", 601, "note.documentation_minutes",
     "must be at most 600", "601", True),
    ("minutes huge int", "note.documentation_minutes", 10**400, "note.documentation_minutes",
     "must be at most 600", "1000000000", True),
    ("minutes NaN", "note.documentation_minutes", float("nan"), "note.documentation_minutes",
     "must be a finite number", "nan", True),
    ("text lone surrogate", "note.text", "ok \ud800 ok", "note.text",
     "must be valid Unicode text (invalid UTF-8 or lone surrogate)", "\ud800", True),
    # cross-field rules
    ("end before start", "end", "2026-11-20T13:59:00-05:00", "end",
     "must not be before start", "13:59", True),
    ("end before start, offsets", "end", "2026-11-20T19:59:00+01:00", "end",
     "must not be before start", "19:59", True),
    ("over 24 h", "end", "2026-11-21T14:00:01-05:00", "end",
     "must be at most 24 hours after start", "2026-11-21", True),
    ("npi luhn", "specialist.npi", "1234567890", "specialist.npi",
     "not a valid NPI (check digit)", "1234567890", True),
    ("doc started only", "note.documentation_finished", DELETE, "note.documentation_finished",
     "required when documentation_started is given", "14:52", True),
    ("doc finished only", "note.documentation_started", DELETE, "note.documentation_started",
     "required when documentation_finished is given", "15:04", True),
    ("doc reversed", "note.documentation_started", "2026-11-20T15:10:00-05:00",
     "note.documentation_finished", "must be after documentation_started", "15:10", True),
    ("doc zero length", "note.documentation_started", "2026-11-20T15:04:00-05:00",
     "note.documentation_finished", "must be after documentation_started", "15:04", True),
    ("doc minutes disagree", "note.documentation_minutes", 20, "note.documentation_minutes",
     "must agree with documentation_started/documentation_finished within 1 minute",
     "20", True),
    ("doc minutes just over", "note.documentation_minutes", 13.5, "note.documentation_minutes",
     "must agree with documentation_started/documentation_finished within 1 minute",
     "13.5", True),
]  # fmt: skip


@pytest.mark.parametrize(
    ("change", "value", "path", "message", "leak", "id_named"),
    [pytest.param(*row[1:], id=row[0]) for row in BAD],
)
def test_bad_record(
    change: str,
    value: object,
    path: str,
    message: str,
    leak: str | None,
    id_named: bool,
) -> None:
    record = mutate(base(), change, value if value is DELETE else copy.deepcopy(value))
    lines = errors_of(record)
    label = f"{SRC}: record {POS} (id={ID})" if id_named else f"{SRC}: record {POS}"
    assert lines == [f"{label}: {path}: {message}"]
    if leak is not None:
        for line in lines:
            assert leak not in line


def test_bad_table_is_big_enough() -> None:
    assert len(BAD) >= 30


def test_all_errors_reported_not_just_the_first() -> None:
    record = base()
    record["participant"]["mrn"] = 12345
    record["specialist"]["npi"] = "1234567890"
    record["note"]["version"] = 0
    record["note"]["foo"] = "bar"
    record["part2"] = "yes"
    record["end"] = "2026-11-20T13:00:00-05:00"
    record["zzz"] = 1
    del record["specialist"]["id"]
    lines = errors_of(record)
    found = {line.split(": ", 2)[2] for line in lines}
    assert found == {
        "participant.mrn: must be a string",
        "specialist.npi: not a valid NPI (check digit)",
        "specialist.id: required field missing",
        "note.version: must be at least 1",
        "note.<field 8>: unknown field (not in the contract)",
        "part2: must be a boolean (true or false)",
        "end: must not be before start",
        "<field 12>: unknown field (not in the contract)",
    }
    assert all(line.startswith(f"{SRC}: record {POS} (id={ID}): ") for line in lines)


def test_several_unknown_fields_one_error_each() -> None:
    record = base()
    record["note"].update({"a": 1, "b": 2})
    record.update({"c": 3})
    lines = errors_of(record)
    assert sorted(line.rsplit(": ", 2)[1] for line in lines) == [
        "<field 12>",
        "note.<field 8>",
        "note.<field 9>",
    ]


def test_several_missing_fields() -> None:
    lines = errors_of({"id": ID, "note": {}})
    paths = {line.split(": ")[2] for line in lines}
    assert paths == {"participant", "specialist", "start", "end", "note.id", "note.text"}


def test_not_an_object() -> None:
    assert errors_of(["a list"], position=4) == [f"{SRC}: record 4: must be a JSON object"]
    assert errors_of("ps-alpha", position=1) == [f"{SRC}: record 1: must be a JSON object"]


def test_bool_is_not_a_number_for_jsonschema_itself() -> None:
    schema = json.loads(intake.SCHEMA_PATH.read_text())
    plain = Draft202012Validator(schema)
    for path, value in [
        ("service.group_size", True),
        ("note.version", False),
        ("note.documentation_minutes", True),
    ]:
        assert not plain.is_valid(mutate(base(), path, value))
        assert not intake.VALIDATOR.is_valid(mutate(base(), path, value))


def test_python_only_values_rejected() -> None:
    from decimal import Decimal

    lines = errors_of(mutate(base(), "note.documentation_minutes", Decimal("12")))
    assert lines == [f"{SRC}: record {POS} (id={ID}): note.documentation_minutes: must be a number"]
    lines = errors_of(mutate(base(), "goals", ("housing",)))
    assert lines == [f"{SRC}: record {POS} (id={ID}): goals: must be a list"]


def test_exception_text_has_no_value() -> None:
    secret = "Dana-Lopez-SSN-555"
    with pytest.raises(RecordInvalid) as info:
        validate_record(mutate(base(), "participant.mrn", [secret]), source=SRC, position=1)
    assert secret not in str(info.value)
    assert secret not in repr(info.value.errors)


@pytest.mark.parametrize("row", BAD, ids=[row[0] for row in BAD])
def test_fast_path_agrees_with_jsonschema(row: tuple[Any, ...]) -> None:
    """The compiled check may only say "valid" when jsonschema (and the value walk) do."""
    record = mutate(base(), row[1], row[2] if row[2] is DELETE else copy.deepcopy(row[2]))
    assert intake.validator._FAST_CHECK is not None
    reference = not any(intake.VALIDATOR.iter_errors(record)) and not any(
        intake.messages._walk_values(record)
    )
    assert intake.validator._FAST_CHECK(record) is reference
    assert intake.validator._FAST_CHECK(base()) is True


# --------------------------------------------------------------------------
# JSON Lines


def good_line(rid: str, **extra: Any) -> str:
    record = {
        "id": rid,
        "participant": {"id": "P-1"},
        "specialist": {"id": "S-1"},
        "start": "2026-11-20T14:00:00-05:00",
        "end": "2026-11-20T14:30:00-05:00",
        **extra,
    }
    return json.dumps(record, ensure_ascii=False)


def test_jsonl_mixed(tmp_path: Path) -> None:
    path = tmp_path / "mixed.jsonl"
    path.write_text(
        "\n".join(
            [
                good_line("ps-a"),
                '{"id": "ps-b", "participant": {"id": "P-1"} "specialist": {}}',
                good_line("ps-c", status="zzz-secret"),
                "",
                good_line("ps-d"),
                "[1, 2]",
            ]
        )
        + "\n",
        encoding="utf-8",
    )
    results = collect(iter_records(path, source=SRC))
    assert summary(results) == [
        (1, "ok"),
        (2, "rejected"),
        (3, "rejected"),
        (5, "ok"),
        (6, "rejected"),
    ]
    assert [r.record.id for r in results if isinstance(r, Accepted)] == ["ps-a", "ps-d"]
    bad_json, bad_record, not_object = (r for r in results if isinstance(r, Rejected))
    assert bad_json.lines() == [
        f"{SRC}: record 2: invalid JSON (line 2, column 45): Expecting ',' delimiter"
    ]
    assert bad_record.lines() == [
        f"{SRC}: record 3 (id=ps-c): status: must be one of: "
        "completed, cancelled, no_show, entered_in_error"
    ]
    assert not_object.lines() == [f"{SRC}: record 6: must be a JSON object"]


def test_jsonl_invalid_utf8_line_rejected_others_kept() -> None:
    data = (
        good_line("ps-a").encode()
        + b"\n"
        + good_line("ps-b", note={"id": "N", "text": "caf\xe9"}).encode("latin-1")
        + b"\r\n"
        + good_line("ps-c").encode()
        + b"\r\n"
    )
    results = collect(iter_records(io.BytesIO(data), source=SRC, format="jsonl"))
    assert summary(results) == [(1, "ok"), (2, "rejected"), (3, "ok")]
    (line,) = results[1].lines()  # type: ignore[union-attr]
    assert line.startswith(f"{SRC}: record 2: invalid UTF-8")
    assert "caf" not in line


def test_jsonl_nan_and_huge_numbers() -> None:
    lines = [
        good_line("ps-a").replace('"P-1"}', '"P-1"}, "x": NaN'),
        good_line("ps-b", note={"id": "N", "text": "t", "documentation_minutes": 1e400}),
        good_line("ps-c").replace('"id": "ps-c"', '"id": "ps-c", "n": ' + "9" * 5000),
        "[" * 100_000,
    ]
    results = collect(iter_records(io.StringIO("\n".join(lines)), source=SRC, format="jsonl"))
    assert all(isinstance(r, Rejected) for r in results)
    assert results[2].lines() == [f"{SRC}: record 3: invalid JSON (line 3): number too long"]  # type: ignore[union-attr]
    assert results[3].lines() == [f"{SRC}: record 4: invalid JSON (line 4): nested too deeply"]  # type: ignore[union-attr]
    assert (
        f"{SRC}: record 2 (id=ps-b): note.documentation_minutes: must be a finite number"
        in results[1].lines()  # type: ignore[union-attr]
    )


def test_jsonl_bom_and_blank_lines() -> None:
    data = b"\xef\xbb\xbf" + good_line("ps-a").encode() + b"\n\n   \n" + good_line("ps-b").encode()
    results = collect(iter_records(io.BytesIO(data), source=SRC, format="jsonl"))
    assert summary(results) == [(1, "ok"), (4, "ok")]


# --------------------------------------------------------------------------
# JSON: one object or an array


def pretty_array(items: list[str]) -> str:
    return "[\n" + ",\n".join("  " + item for item in items) + "\n]\n"


def test_json_array_mixed(tmp_path: Path) -> None:
    path = tmp_path / "mixed.json"
    path.write_text(
        pretty_array(
            [
                good_line("ps-a"),
                '{"id": "ps-b", "note": {"text": "bad \\x escape"}}',
                good_line("ps-c", part2="yes"),
                good_line("ps-d", note={"id": "N", "text": "Zoë [ { , ] }"}),
            ]
        ),
        encoding="utf-8",
    )
    results = collect(iter_records(path, source=SRC))
    assert summary(results) == [(1, "ok"), (2, "rejected"), (3, "rejected"), (4, "ok")]
    assert results[1].lines() == [  # type: ignore[union-attr]
        f"{SRC}: record 2: invalid JSON: Invalid \\escape at line 3 column 40"
    ]
    assert results[2].lines() == [  # type: ignore[union-attr]
        f"{SRC}: record 3 (id=ps-c): part2: must be a boolean (true or false)"
    ]
    assert results[3].record.note.text == "Zoë [ { , ] }"  # type: ignore[union-attr]


def test_json_array_minified_bad_element_resyncs() -> None:
    text = "[" + ",".join([good_line("ps-a"), '{"id": "ps-b" "x": 1}', good_line("ps-c")]) + "]"
    results = collect(iter_records(io.StringIO(text), source=SRC))
    assert summary(results) == [(1, "ok"), (2, "rejected"), (3, "ok")]
    (line,) = results[1].lines()  # type: ignore[union-attr]
    assert line.startswith(f"{SRC}: record 2: invalid JSON: Expecting ',' delimiter at line 1")


def test_json_array_unrecoverable_stops_with_file_error() -> None:
    text = pretty_array([good_line("ps-a"), '{"id": [1, 2}', good_line("ps-c")])
    results = collect(iter_records(io.StringIO(text), source=SRC))
    assert summary(results) == [(1, "ok"), (2, "rejected")]
    err = results[1].error  # type: ignore[union-attr]
    assert [e.path for e in err.errors] == [""]
    assert err.lines()[0].startswith(f"{SRC}: record 2: invalid JSON: ")
    assert " at line 3 column " in err.lines()[0]


@pytest.mark.parametrize("chunk", [256, 64 * 1024])
def test_record_size_limit(monkeypatch: pytest.MonkeyPatch, chunk: int) -> None:
    monkeypatch.setattr(intake.limits, "MAX_RECORD_SIZE", 1_000)
    monkeypatch.setattr(intake.limits, "CHUNK_SIZE", chunk)
    big = good_line("ps-big", note={"id": "N", "text": "z[{," * 1_000})
    filler = [good_line(f"ps-{i}") for i in range(10)]
    # JSON Lines: the long line is rejected, the next ones are still read
    results = collect(
        iter_records(io.StringIO("\n".join([big, *filler])), source=SRC, format="jsonl")
    )
    assert summary(results)[:2] == [(1, "rejected"), (2, "ok")] and len(results) == 11
    assert results[0].lines() == [f"{SRC}: record 1: record too large (over 1000 bytes)"]  # type: ignore[union-attr]
    # an array element: rejected, and the next elements are still read
    text = pretty_array([filler[0], big, *filler])
    results = collect(iter_records(io.StringIO(text), source=SRC))
    assert summary(results)[:3] == [(1, "ok"), (2, "rejected"), (3, "ok")]
    assert len(results) == 12
    assert results[1].lines()[0].startswith(f"{SRC}: record 2: record too large (over 1000 ")  # type: ignore[union-attr]
    # an unbalanced element: its syntax error is named, and nothing after it is guessed
    broken = pretty_array([filler[0], '{"id": [1, 2}', *filler * 3])
    results = collect(iter_records(io.StringIO(broken), source=SRC))
    assert summary(results) == [(1, "ok"), (2, "rejected")]
    assert results[1].lines() == [  # type: ignore[union-attr]
        f"{SRC}: record 2: invalid JSON: Expecting ',' delimiter at line 3 column 15; "
        "cannot continue"
    ]
    # one object
    results = collect(iter_records(io.StringIO(big), source=SRC, format="json"))
    assert results[0].lines() == [f"{SRC}: record 1: record too large (over 1000 bytes)"]  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("text", "expected", "fragment"),
    [
        ("[]", [], None),
        ("  [ ]  \n", [], None),
        ("[" + good_line("ps-a") + "] trailing", [(1, "ok"), (2, "rejected")],
         "unexpected data after the array at line 1 column"),
        ("[" + good_line("ps-a") + ",]", [(1, "ok"), (2, "rejected")], "Expecting value"),
        ("[" + good_line("ps-a") + " " + good_line("ps-b") + "]",
         [(1, "ok"), (2, "rejected")], "Expecting ',' delimiter"),
        ("[" + good_line("ps-a") + ",\n", [(1, "ok"), (2, "rejected")], "Expecting value"),
        ("[" + good_line("ps-a"), [(1, "ok"), (2, "rejected")], "missing ']'"),
        ("[1, \"two\", " + good_line("ps-a") + "]",
         [(1, "rejected"), (2, "rejected"), (3, "ok")], "must be a JSON object"),
    ],
)  # fmt: skip
def test_json_array_edges(text: str, expected: list[tuple[int, str]], fragment: str | None) -> None:
    results = collect(iter_records(io.StringIO(text), source=SRC, format="json"))
    assert summary(results) == expected
    if fragment is not None:
        assert any(
            fragment in line for r in results if isinstance(r, Rejected) for line in r.lines()
        )


def test_json_array_invalid_utf8_element_rejected_others_kept() -> None:
    data = (
        b"["
        + good_line("ps-a").encode()
        + b",\n"
        + good_line("ps-b", note={"id": "N", "text": "caf\xe9"}).encode("latin-1")
        + b",\n"
        + good_line("ps-c").encode()
        + b"]"
    )
    results = collect(iter_records(io.BytesIO(data), source=SRC))
    assert summary(results) == [(1, "ok"), (2, "rejected"), (3, "ok")]
    assert results[1].lines() == [f"{SRC}: record 2: invalid UTF-8"]  # type: ignore[union-attr]


@pytest.mark.parametrize("chunk", [1, 3, 7, 64])
def test_json_array_any_chunk_boundaries(monkeypatch: pytest.MonkeyPatch, chunk: int) -> None:
    """Elements, strings, escapes and multi-byte characters split at every place."""
    monkeypatch.setattr(intake.limits, "CHUNK_SIZE", chunk)
    note = 'Zoë said "hi" \\ back\nslash, [brackets] {braces} 😀 ' * 3
    items = [good_line(f"ps-{i}", note={"id": "N", "text": note}) for i in range(4)]
    items.insert(2, '{"id": "ps-bad", "note": {"text": "x" "y"}}')
    data = pretty_array(items).encode()
    results = collect(iter_records(io.BytesIO(data), source=SRC, format="json"))
    assert summary(results) == [(1, "ok"), (2, "ok"), (3, "rejected"), (4, "ok"), (5, "ok")]
    for r in results:
        if isinstance(r, Accepted):
            assert r.record.note is not None and r.record.note.text == note
    assert results[2].lines() == [  # type: ignore[union-attr]
        f"{SRC}: record 3: invalid JSON: Expecting ',' delimiter at line 4 column 41"
    ]


@pytest.mark.parametrize("chunk", [1, 5])
def test_jsonl_and_csv_any_chunk_boundaries(monkeypatch: pytest.MonkeyPatch, chunk: int) -> None:
    monkeypatch.setattr(intake.limits, "CHUNK_SIZE", chunk)
    jsonl = collect(iter_records(DATA / "batch.jsonl", source=SRC))
    assert summary(jsonl) == [(1, "ok"), (2, "ok"), (3, "ok")]
    rows = collect(iter_records(DATA / "export.csv", source=SRC))
    assert summary(rows) == [(1, "ok"), (2, "ok")]
    single = collect(iter_records(DATA / "amendment.json", source=SRC))
    assert summary(single) == [(1, "ok")]


def test_single_object_errors() -> None:
    results = collect(iter_records(io.StringIO('{\n  "id": "ps-a",\n  oops\n}'), source=SRC))
    assert results[0].lines() == [  # type: ignore[union-attr]
        f"{SRC}: record 1: invalid JSON: Expecting property name enclosed in double quotes "
        "at line 3 column 3"
    ]
    pretty = json.dumps(json.loads(good_line("ps-a")), indent=2)
    results = collect(iter_records(io.StringIO(pretty + "\n  x"), source=SRC))
    assert summary(results) == [(1, "ok"), (2, "rejected")]


@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        # .json whose first line is a whole object, followed by another: JSON Lines
        ("a.json", good_line("ps-a") + "\n" + good_line("ps-b") + "\n", [(1, "ok"), (2, "ok")]),
        # .json, first line broken but another object line follows: JSON Lines
        ("a.json", '{"id": "ps-a", }\n\n' + good_line("ps-b"), [(1, "rejected"), (3, "ok")]),
        # pretty-printed single object
        ("a.json", json.dumps(json.loads(good_line("ps-a")), indent=2), [(1, "ok")]),
        # no name at all (stdin): sniffed
        ("", "\n\n" + good_line("ps-a") + "\n" + good_line("ps-b"), [(3, "ok"), (4, "ok")]),
        ("", "[" + good_line("ps-a") + "]", [(1, "ok")]),
        ("", "id,participant.id,specialist.id,start,end\n"
             "ps-a,P-1,S-1,2026-11-20T14:00:00Z,2026-11-20T14:10:00Z\n", [(1, "ok")]),
        ("export.TXT", "id,participant.id,specialist.id,start,end\n"
                       "ps-a,P-1,S-1,2026-11-20T14:00:00Z,2026-11-20T14:10:00Z\n", [(1, "ok")]),
        ("a.NDJSON", good_line("ps-a"), [(1, "ok")]),
        ("a.json", "", []),
        ("a.json", "  \n", []),
        ("a.json", "id,x\n", [(1, "rejected")]),
    ],
)  # fmt: skip
def test_format_detection(
    tmp_path: Path, name: str, text: str, expected: list[tuple[int, str]]
) -> None:
    if name:
        path = tmp_path / name
        path.write_text(text, encoding="utf-8")
        results = collect(iter_records(path, source=SRC))
    else:
        results = collect(iter_records(io.BytesIO(text.encode()), source=SRC))
    assert summary(results) == expected


def test_leading_blank_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    """Leading blank lines are dropped as read (bounded memory), still counted."""
    monkeypatch.setattr(intake.limits, "CHUNK_SIZE", 16)
    blank = "  \r\n" * 1_000
    jsonl = collect(iter_records(io.StringIO(blank + good_line("ps-a") + "\n{"), source=SRC))
    assert summary(jsonl) == [(1_001, "ok"), (1_002, "rejected")]
    assert jsonl[1].lines() == [  # type: ignore[union-attr]
        f"{SRC}: record 1002: invalid JSON (line 1002, column 2): "
        "Expecting property name enclosed in double quotes"
    ]
    line = "[" + good_line("ps-a") + "] x"
    array = collect(iter_records(io.StringIO(blank + line), source=SRC))
    assert (
        array[1]
        .lines()[0]
        .endswith(  # type: ignore[union-attr]
            f"unexpected data after the array at line 1001 column {len(line)}"
        )
    )
    single = collect(iter_records(io.StringIO(blank + "{\n  oops"), source=SRC))
    assert single[0].lines()[0].endswith("at line 1002 column 3")  # type: ignore[union-attr]
    csv_text = "\n\n" + HEADER + "\n" + csv_row("ps-a") + "\n"
    assert summary(run_csv(csv_text)) == [(1, "ok")]


def test_forced_format(tmp_path: Path) -> None:
    path = tmp_path / "records.txt"
    path.write_text(good_line("ps-a") + "\n" + good_line("ps-b") + "\n", encoding="utf-8")
    assert summary(collect(iter_records(path, source=SRC, format="jsonl"))) == [
        (1, "ok"),
        (2, "ok"),
    ]
    # forced "json": one document, so a second object is an error after the first
    assert summary(collect(iter_records(path, source=SRC, format="json"))) == [
        (1, "ok"),
        (2, "rejected"),
    ]
    csv_path = tmp_path / "export.data"
    csv_path.write_bytes((DATA / "export.csv").read_bytes())
    assert len(collect(iter_records(csv_path, source=SRC, format="CSV"))) == 2
    with pytest.raises(ValueError, match="unknown format"):
        iter_records(path, source=SRC, format="xml")


def test_inputs_bytes_text_stream_and_iterables() -> None:
    text = good_line("ps-a") + "\n" + good_line("ps-b") + "\n"
    for source in (
        text.encode(),
        io.StringIO(text),
        io.BytesIO(text.encode()),
        iter([text[:10], text[10:]]),
        [text.encode()[:7], b"", text.encode()[7:]],
    ):
        assert summary(collect(iter_records(source, source=SRC))) == [(1, "ok"), (2, "ok")]


# --------------------------------------------------------------------------
# CSV

HEADER = (
    "id,participant.id,participant.mrn,specialist.id,start,end,"
    "service.group_size,part2,note.id,note.text,note.documentation_minutes,goals"
)


def csv_row(rid: str, **cells: str) -> str:
    values = {
        "id": rid,
        "participant.id": "P-1",
        "participant.mrn": "",
        "specialist.id": "S-1",
        "start": "2026-11-20T14:00:00-06:00",
        "end": "2026-11-20T14:40:00-06:00",
        "service.group_size": "",
        "part2": "",
        "note.id": "",
        "note.text": "",
        "note.documentation_minutes": "",
        "goals": "",
    }
    values.update(cells)
    return ",".join(values[name] for name in HEADER.split(","))


def run_csv(text: str | bytes) -> list[Accepted | Rejected]:
    data = text.encode("utf-8") if isinstance(text, str) else text
    return collect(iter_records(io.BytesIO(data), source=SRC, format="csv"))


def test_csv_mixed(tmp_path: Path) -> None:
    path = tmp_path / "mixed.csv"
    path.write_text(
        "\n".join(
            [
                HEADER,
                csv_row("ps-a", **{"note.id": "N-1", "note.text": "fine"}),
                csv_row("ps-b", **{"service.group_size": "2.5"}),
                csv_row("ps-c", part2="TRUE"),
                csv_row("ps-d", goals=" employment ; ;wellness ;"),
            ]
        )
        + "\n",
        encoding="utf-8",
    )
    results = collect(iter_records(path, source=SRC))
    assert summary(results) == [(1, "ok"), (2, "rejected"), (3, "rejected"), (4, "ok")]
    assert results[1].lines() == [  # type: ignore[union-attr]
        f"{SRC}: record 2 (id=ps-b): service.group_size: must be an integer"
    ]
    assert results[2].lines() == [  # type: ignore[union-attr]
        f"{SRC}: record 3 (id=ps-c): part2: must be true or false"
    ]
    assert results[3].record.goals == ("employment", "wellness")  # type: ignore[union-attr]
    for r in results:
        if isinstance(r, Rejected):
            assert "2.5" not in r.lines()[0] and "TRUE" not in r.lines()[0]


def test_csv_types_and_empty_cells() -> None:
    results = run_csv(
        "\n".join(
            [
                HEADER,
                csv_row("ps-a", part2="true", **{"service.group_size": "6"}),
                csv_row("ps-b", part2="false", **{"note.id": "N", "note.text": "t",
                        "note.documentation_minutes": "7.5"}),
                csv_row("ps-c", **{"note.id": "N", "note.text": "t",
                        "note.documentation_minutes": "1e3"}),
                csv_row("ps-d", **{"service.group_size": "+3"}),
                csv_row("ps-e", **{"service.group_size": " 3"}),
                csv_row("ps-f", **{"participant.mrn": " "}),
            ]
        )
    )  # fmt: skip
    assert summary(results) == [
        (1, "ok"),
        (2, "ok"),
        (3, "rejected"),
        (4, "rejected"),
        (5, "rejected"),
        (6, "ok"),
    ]
    a, b = results[0].record, results[1].record  # type: ignore[union-attr]
    assert a.part2 is True and a.service.group_size == 6
    assert a.raw == {
        "id": "ps-a",
        "participant": {"id": "P-1"},
        "specialist": {"id": "S-1"},
        "start": "2026-11-20T14:00:00-06:00",
        "end": "2026-11-20T14:40:00-06:00",
        "service": {"group_size": 6},
        "part2": True,
    }
    assert b.part2 is False and b.note is not None and b.note.documentation_minutes == 7.5
    assert results[2].lines() == [  # type: ignore[union-attr]
        f"{SRC}: record 3 (id=ps-c): note.documentation_minutes: "
        "must be a number (digits, optionally with a '.' decimal part)"
    ]
    assert results[5].record.participant.mrn == " "  # type: ignore[union-attr]


@pytest.mark.parametrize("bom", [b"", b"\xef\xbb\xbf"])
@pytest.mark.parametrize("eol", ["\n", "\r\n"])
@pytest.mark.parametrize("inner", ["\n", "\r\n", "\r"])
def test_csv_bom_eol_and_line_breaks_in_cells(bom: bytes, eol: str, inner: str) -> None:
    note = f'Line one,{inner}"quoted" line two{inner}{inner}end '
    quoted = '"' + note.replace('"', '""') + '"'
    text = eol.join(
        [
            HEADER,
            csv_row("ps-a", **{"note.id": "N-1", "note.text": quoted}),
            csv_row("ps-b"),
        ]
    )
    results = run_csv(bom + (text + eol).encode())
    assert summary(results) == [(1, "ok"), (2, "ok")]
    record = results[0].record  # type: ignore[union-attr]
    assert record.id == "ps-a"  # the BOM is not part of the first header name
    assert record.note is not None and record.note.text == note  # byte for byte


def test_csv_header_problems_reject_every_row() -> None:
    text = "\n".join(
        [
            HEADER + ",colour,participant",
            csv_row("ps-a") + ",cerulean,",
            csv_row("ps-b") + ",,",
        ]
    )
    results = run_csv(text)
    assert summary(results) == [(1, "rejected"), (2, "rejected")]
    for r, rid in zip(results, ["ps-a", "ps-b"], strict=True):
        assert isinstance(r, Rejected)
        assert r.lines() == [
            f"{SRC}: record {r.position} (id={rid}): <column 13>: "
            "its header names no field of the contract",
            f"{SRC}: record {r.position} (id={rid}): participant: is a group of fields, "
            "not a column: use its dotted fields (e.g. participant.id)",
        ]
        assert "cerulean" not in r.error.describe()


def test_csv_duplicate_and_unnamed_columns() -> None:
    dup = run_csv("id,id,participant.id\nps-a,ps-a,P-1\n")
    assert dup[0].lines()[0] == f"{SRC}: record 1 (id=ps-a): id: duplicate column"  # type: ignore[union-attr]
    # an unnamed trailing column is fine while empty, an error when it has a value
    text = HEADER + ",\n" + csv_row("ps-a") + ",\n" + csv_row("ps-b") + ",stray\n"
    results = run_csv(text)
    assert summary(results) == [(1, "ok"), (2, "rejected")]
    assert results[1].lines() == [  # type: ignore[union-attr]
        f"{SRC}: record 2 (id=ps-b): column 13 has a value but no name"
    ]


def test_csv_wrong_cell_count_and_bad_quoting() -> None:
    text = "\n".join(
        [
            HEADER,
            csv_row("ps-a") + ",extra",
            csv_row("ps-b"),
            "ps-c,P-1",
            'ps-d,"P-1"x,S-1,,,,,,,,,',
            csv_row("ps-e"),
            "",
            csv_row("ps-f"),
        ]
    )
    results = run_csv(text + "\n")
    assert summary(results) == [
        (1, "rejected"),
        (2, "ok"),
        (3, "rejected"),
        (4, "rejected"),
        (5, "ok"),
        (7, "ok"),
    ]
    assert results[0].lines() == [  # type: ignore[union-attr]
        f"{SRC}: record 1 (id=ps-a): line 2: row has 13 cells but the header has 12 columns"
    ]
    assert results[2].lines() == [  # type: ignore[union-attr]
        f"{SRC}: record 3 (id=ps-c): line 4: row has 2 cells but the header has 12 columns"
    ]
    assert results[3].lines()[0].startswith(f"{SRC}: record 4: invalid CSV at line 5: ")  # type: ignore[union-attr]


def test_csv_invalid_utf8_cell_rejects_that_row_only() -> None:
    data = (
        (HEADER + "\n").encode()
        + csv_row("ps-a", **{"note.id": "N", "note.text": "caf\xe9"}).encode("latin-1")
        + b"\n"
        + csv_row("ps-b", **{"note.id": "N", "note.text": "café"}).encode()
        + b"\n"
    )
    results = run_csv(data)
    assert summary(results) == [(1, "rejected"), (2, "ok")]
    assert results[0].lines() == [f"{SRC}: record 1 (id=ps-a): note.text: invalid UTF-8"]  # type: ignore[union-attr]
    assert results[1].record.note.text == "café"  # type: ignore[union-attr]


def test_csv_and_json_hash_the_same() -> None:
    rows = collect(iter_records(DATA / "export.csv", source=SRC))
    record = rows[0].record  # type: ignore[union-attr]
    as_json = {
        "id": "ps-2026-000127",
        "participant": {"id": "P-1005", "mrn": "MRN-70011", "given": "Jordan", "family": "Reyes"},
        "specialist": {"id": "S-31", "given": "Casey", "family": "Whitfield"},
        "service": {"modality": "video"},
        "start": "2026-11-22T13:00:00-06:00",
        "end": "2026-11-22T13:40:00-06:00",
        "note": {
            "id": "N-88815",
            "text": "Video session. Jordan practiced for the job interview; "
            "we role-played two questions.",
            "documentation_minutes": 8,
        },
        "goals": ["employment", "wellness"],
    }
    assert validate_record(as_json, source=SRC).content_hash == record.content_hash


def test_csv_empty_inputs() -> None:
    assert run_csv("") == []
    assert run_csv(HEADER + "\n") == []
    assert run_csv(b"\xef\xbb\xbf") == []


# --------------------------------------------------------------------------
# API payloads


def test_parse_payload() -> None:
    single = list(parse_payload(json.loads(good_line("ps-a")), source="api"))
    assert summary(single) == [(1, "ok")]  # type: ignore[arg-type]
    mixed = list(
        parse_payload(
            [json.loads(good_line("ps-a")), "nope", {"id": "ps-c"}, json.loads(good_line("ps-d"))],
            source="api",
        )
    )
    assert summary(mixed) == [(1, "ok"), (2, "rejected"), (3, "rejected"), (4, "ok")]  # type: ignore[arg-type]
    assert mixed[1].lines() == ["api: record 2: must be a JSON object"]  # type: ignore[union-attr]
    assert mixed[2].lines()[0].startswith("api: record 3 (id=ps-c): ")  # type: ignore[union-attr]
    (scalar,) = parse_payload(42, source="api")
    assert scalar.lines() == ["api: record 1: must be a JSON object or a list of JSON objects"]  # type: ignore[union-attr]


# --------------------------------------------------------------------------
# Streaming


class CountingStream(io.RawIOBase):
    """A binary stream that counts what was read from it."""

    def __init__(self, data: bytes) -> None:
        super().__init__()
        self._data = io.BytesIO(data)
        self.size = len(data)
        self.bytes_read = 0
        self.reads = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        self.reads += 1
        n = self._data.readinto(buffer)
        self.bytes_read += n
        return n


def many(fmt: str, n: int) -> bytes:
    note = {"id": "N", "text": "Met at the library. " * 20}
    if fmt == "jsonl":
        return "".join(good_line(f"ps-{i}", note=note) + "\n" for i in range(n)).encode()
    if fmt == "json":
        return ("[" + ",\n".join(good_line(f"ps-{i}", note=note) for i in range(n)) + "]").encode()
    rows = [csv_row(f"ps-{i}", **{"note.id": "N", "note.text": "x" * 400}) for i in range(n)]
    return ("\n".join([HEADER, *rows]) + "\n").encode()


@pytest.mark.parametrize("fmt", ["jsonl", "json", "csv"])
def test_streams_lazily(fmt: str) -> None:
    stream = CountingStream(many(fmt, 2_000))
    assert stream.size > 800_000
    results = iter_records(stream, source=SRC, format=fmt)
    first = next(results)
    assert isinstance(first, Accepted) and first.position == 1
    assert stream.bytes_read <= 4 * intake.limits.CHUNK_SIZE < stream.size
    rest = list(results)
    assert len(rest) == 1_999 and all(isinstance(r, Accepted) for r in rest)
    assert stream.bytes_read == stream.size


@pytest.mark.parametrize("fmt", ["jsonl", "json", "csv"])
def test_memory_stays_bounded(fmt: str) -> None:
    """3 MB of input from a generator; traced memory stays a small fraction of it."""
    one = many(fmt, 2)
    if fmt == "jsonl":
        head, body, tail = b"", one.split(b"\n")[0] + b"\n", b""
    elif fmt == "json":
        head, body, tail = (
            b"[",
            one[1:].split(b",\n")[0] + b",\n",
            good_line("ps-z").encode() + b"]",
        )
    else:
        head, body, tail = one.split(b"\n")[0] + b"\n", one.split(b"\n")[1] + b"\n", b""
    count = 3_000_000 // len(body)

    def chunks() -> Iterator[bytes]:
        yield head
        for _ in range(count):
            yield body
        yield tail

    tracemalloc.start()
    try:
        seen = 0
        for result in iter_records(chunks(), source=SRC, format=fmt):
            assert isinstance(result, Accepted)
            seen += 1
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert seen == count + (1 if fmt == "json" else 0)
    assert peak < 1_000_000  # a third of the input; it does not grow with the input


# --------------------------------------------------------------------------
# Issue 8: the contract's limits, duplicate keys, broken CSV rows, JSON Lines by
# content, and no header text or unknown key ever repeated


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ("end", "9999-12-31T23:59:00-01:00", DT),
        ("start", "0001-01-01T00:30:00+01:00", DT),
        ("note.version", 2**31, "must be at most 2147483647"),
        ("note.version", 2**63, "must be at most 2147483647"),
        ("participant.id", "P\x00-1", "must not contain control characters"),
        ("specialist.id", "S-\x1b17", "must not contain control characters"),
        ("note.id", "N\x7f1", "must not contain control characters"),
    ],
)
def test_contract_limits_are_enforced(path: str, value: object, message: str) -> None:
    assert errors_of(mutate(base(), path, value)) == [
        f"{SRC}: record {POS} (id={ID}): {path}: {message}"
    ]


def test_nesting_and_size_are_capped_and_errors_bounded() -> None:
    deep: Any = "x"
    for _ in range(50):
        deep = [deep]
    assert errors_of(mutate(base(), "note.text", deep))[0].endswith(
        "nested too deeply (over 16 levels)"
    )
    wide = base() | {f"k{i}": i for i in range(10_000)}
    assert errors_of(wide) == [
        f"{SRC}: record {POS} (id={ID}): too many fields (over 5000 in one record)"
    ]
    many = base() | {f"k{i}": i for i in range(300)}
    lines = errors_of(many)
    assert len(lines) == 50 and lines[-1].endswith("more errors not shown (at most 50 listed)")


def test_duplicate_json_keys_are_rejected_by_path_without_the_value() -> None:
    good = json.dumps(base())
    dup = good[:-1] + ', "participant": {"id": "Dana-Lopez"}, "colour": 1, "colour": 2}'
    nested = good.replace('"mrn": "MRN-55821"', '"mrn": "MRN-55821", "mrn": "MRN-99999"')
    text = "\n".join([good.replace(ID, "ps-one"), dup, nested]) + "\n"
    results = collect(iter_records(io.BytesIO(text.encode()), source=SRC, format="jsonl"))
    assert summary(results) == [(1, "ok"), (2, "rejected"), (3, "rejected")]
    assert results[1].lines() == [  # type: ignore[union-attr]
        f"{SRC}: record 2 (id={ID}): participant: given more than once (duplicate key)",
        f"{SRC}: record 2 (id={ID}): <field 12>: given more than once (duplicate key)",
    ]
    assert results[2].lines() == [  # type: ignore[union-attr]
        f"{SRC}: record 3 (id={ID}): participant.mrn: given more than once (duplicate key)"
    ]
    for r in results[1:]:
        assert "Dana" not in r.error.describe() and "99999" not in r.error.describe()  # type: ignore[union-attr]


def test_csv_unterminated_quote_never_swallows_the_next_rows() -> None:
    text = (
        "\n".join(
            [
                HEADER,
                csv_row("ps-a"),
                csv_row("ps-b", **{"note.text": '"Dana said'}),
                csv_row("ps-c"),
                csv_row("ps-d"),
            ]
        )
        + "\n"
    )
    results = run_csv(text)
    assert summary(results) == [(1, "ok"), (2, "rejected"), (3, "ok"), (4, "ok")]
    assert [r.record.id for r in results if isinstance(r, Accepted)] == ["ps-a", "ps-c", "ps-d"]
    assert results[1].lines()[0].startswith(f"{SRC}: record 2: invalid CSV at line 3: ")  # type: ignore[union-attr]
    assert "Dana" not in results[1].error.describe()  # type: ignore[union-attr]


@pytest.mark.parametrize("name", ["records.json", "records.txt", None])
def test_json_lines_with_a_broken_first_line_is_read_line_by_line(
    tmp_path: Path, name: str | None
) -> None:
    lines = [json.dumps(mutate(base(), "id", f"ps-{c}")) for c in "abc"]
    text = '{"id": "ps-broken", "note": {"text": "Dana\n' + "\n".join(lines) + "\n"
    if name is None:  # stdin
        results = collect(iter_records(io.BytesIO(text.encode()), source=SRC))
    else:
        (tmp_path / name).write_text(text)
        results = collect(iter_records(tmp_path / name, source=SRC))
    assert summary(results) == [(1, "rejected"), (2, "ok"), (3, "ok"), (4, "ok")]
    assert "Dana" not in results[0].error.describe()  # type: ignore[union-attr]


def test_csv_without_its_header_row_names_no_header_text() -> None:
    rows = [
        csv_row("ps-a", **{"participant.mrn": "MRN-55821", "note.text": "Dana slept"}),
        csv_row("ps-b"),
    ]
    results = run_csv("\n".join(rows) + "\n")
    assert summary(results) == [(0, "rejected"), (1, "rejected")]
    text = " ".join(line for r in results for line in r.lines())  # type: ignore[union-attr]
    assert "first row is not a header of contract paths" in text
    assert "MRN-55821" not in text and "Dana" not in text and "P-1" not in text
    unknown = run_csv(HEADER + ",Dana Lopez\n" + csv_row("ps-a") + ",x\n")
    assert unknown[0].lines() == [  # type: ignore[union-attr]
        f"{SRC}: record 1 (id=ps-a): <column 13>: its header names no field of the contract"
    ]
