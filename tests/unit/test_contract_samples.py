"""The project's copy of the contract and its examples agree (issue 10).

Every example in connector/samples/ (and its copy in tests/data/) validates against
connector/contract/encounter.schema.json, record by record, with the schema alone
(jsonschema, Draft 2020-12, formats checked) and through intake; the two folders
hold the same files, byte for byte; and the schema names its version.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from connector.intake import Accepted, iter_records
from connector.intake.validator import FORMAT_CHECKER, SCHEMA_PATH

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "connector" / "samples"
COPIES = ROOT / "tests" / "data"
SCHEMA = json.loads(SCHEMA_PATH.read_text("utf-8"))
SAMPLE_FILES = sorted(p.name for p in SAMPLES.iterdir() if p.is_file())


def _objects(path: Path) -> list[dict[str, Any]]:
    """The sample's records as JSON objects (CSV rows only through intake, below)."""
    text = path.read_text("utf-8")
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    if path.suffix == ".json":
        data = json.loads(text)
        return data if isinstance(data, list) else [data]
    return []


def test_the_contract_is_version_2() -> None:
    assert SCHEMA["$id"] == "urn:peer-support:contract:encounter:v2"
    note = SCHEMA["properties"]["note"]["properties"]
    assert note["cosigned_by"]["pattern"] == SCHEMA["properties"]["specialist"]["properties"][
        "id"]["pattern"]
    assert note["cosigned_by"]["maxLength"] == 64
    assert note["cosigned_at"] == {"type": "string", "format": "date-time"}
    contract_md = (SCHEMA_PATH.parent / "CONTRACT.md").read_text("utf-8")
    assert "urn:peer-support:contract:encounter:v2" in contract_md
    assert "`note.cosigned_by`" in contract_md and "`note.cosigned_at`" in contract_md


def test_samples_and_their_test_copies_are_identical() -> None:
    assert SAMPLE_FILES, "no samples"
    copies = sorted(p.name for p in COPIES.iterdir() if p.is_file())
    assert copies == SAMPLE_FILES
    for name in SAMPLE_FILES:
        assert (SAMPLES / name).read_bytes() == (COPIES / name).read_bytes(), name


@pytest.mark.parametrize("folder", [SAMPLES, COPIES], ids=["samples", "tests-data"])
@pytest.mark.parametrize("name", SAMPLE_FILES)
def test_every_sample_validates_against_the_contract(folder: Path, name: str) -> None:
    path = folder / name
    validator = Draft202012Validator(SCHEMA, format_checker=FORMAT_CHECKER)
    for obj in _objects(path):
        assert list(validator.iter_errors(obj)) == [], (name, obj.get("id"))
    results = list(iter_records(path, source="peer-tool"))
    assert results, name
    rejected = [r for r in results if not isinstance(r, Accepted)]
    assert rejected == [], name
    if path.suffix == ".csv":
        with path.open(encoding="utf-8-sig", newline="") as fh:
            assert len(results) == sum(1 for _ in csv.DictReader(fh))
