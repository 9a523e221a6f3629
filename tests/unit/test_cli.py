"""The peersync command line, without an EHR: init, import, status, map, exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from connector.cli import main
from connector.states import ALL_STATES
from tests.conftest import DATA, example_dict


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("PEERSYNC_HOME", str(tmp_path))
    monkeypatch.delenv("PEERSYNC_EHR_URL", raising=False)
    monkeypatch.delenv("PEERSYNC_DATABASE_URL", raising=False)
    return tmp_path


def run(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_init_writes_config_and_database(home: Path) -> None:
    result = run("init", "--ehr-url", "http://127.0.0.1:8090/fhir")
    assert result.exit_code == 0, result.output
    text = (home / "peersync.toml").read_text()
    assert 'base_url = "http://127.0.0.1:8090/fhir"' in text
    assert (home / "peersync.db").exists()
    assert run("init").exit_code == 2  # never overwrites without --force
    assert run("init", "--force").exit_code == 0


def test_init_refuses_plain_http_to_another_host(home: Path) -> None:
    result = run("init", "--ehr-url", "http://ehr.example.org/fhir")
    assert result.exit_code == 2
    assert "ehr.base_url" in result.stderr and "https" in result.stderr
    assert not (home / "peersync.toml").exists()


def test_commands_before_init_say_so(home: Path) -> None:
    for args in (["status"], ["sync"], ["import", str(DATA / "batch.jsonl")]):
        result = run(*args)
        assert result.exit_code == 2
        assert "peersync init" in result.stderr


def test_status_json_maps_every_state(home: Path) -> None:
    run("init")
    counts = json.loads(run("status", "--json").stdout)
    assert list(counts) == list(ALL_STATES)
    assert set(counts.values()) == {0}


def test_import_counts_and_names_every_error_and_keeps_the_good(home: Path) -> None:
    run("init")
    bad = example_dict("in-person-session.json")
    bad["id"] = "ps-bad-7"
    bad["end"] = "2026-11-20T13:00:00-05:00"  # before start
    bad["participant"]["birth_date"] = "1988-02-30"
    good = example_dict("in-person-session.json")
    path = home / "mixed.jsonl"
    path.write_text(
        json.dumps(good) + "\n{broken json\n" + json.dumps(bad) + "\n", encoding="utf-8")
    result = run("import", "--source", "tool-x", str(path))
    assert result.exit_code == 1
    assert "source tool-x: 1 accepted (1 new, 0 unchanged), 2 rejected" in result.stdout
    errors = result.stderr
    assert "record 2" in errors and "invalid JSON" in errors
    assert "record 3 (id=ps-bad-7): end:" in errors
    assert "record 3 (id=ps-bad-7): participant.birth_date:" in errors
    assert "1988-02-30" not in errors and "Dana" not in errors
    assert json.loads(run("status", "--json").stdout)["pending"] == 1


def test_reimport_adds_nothing(home: Path) -> None:
    run("init")
    files = [str(DATA / n) for n in ("in-person-session.json", "batch.jsonl", "export.csv")]
    first = run("import", *files)
    assert first.exit_code == 0
    assert "6 accepted (6 new, 0 unchanged), 0 rejected" in first.stdout
    again = run("import", *files)
    assert "6 accepted (0 new, 6 unchanged), 0 rejected" in again.stdout
    assert json.loads(run("status", "--json").stdout)["pending"] == 6


def test_default_source_comes_from_config(home: Path) -> None:
    run("init", "--source", "agency-tool")
    result = run("import", str(DATA / "in-person-session.json"))
    assert "source agency-tool:" in result.stdout


def test_bad_source_name_is_refused(home: Path) -> None:
    run("init")
    result = run("import", "--source", "no spaces/allowed", str(DATA / "batch.jsonl"))
    assert result.exit_code == 2 and "--source" in result.stderr


def test_environment_overrides_the_config(home: Path, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    run("init")
    other = tmp_path / "other.db"
    monkeypatch.setenv("PEERSYNC_DATABASE_URL", f"sqlite:///{other}")
    result = run("status")
    assert result.exit_code == 2  # the other database is not initialised
    run("db", "upgrade")
    assert other.exists()
    monkeypatch.setenv("PEERSYNC_EHR_URL", "http://ehr.example.org/fhir")
    assert "ehr.base_url" in run("status").stderr  # the override is checked like the file


def test_map_needs_no_network_and_lists_the_waiting(home: Path) -> None:
    run("init", "--ehr-url", "http://127.0.0.1:9/fhir")  # nothing listens there
    result = run("map", str(DATA / "batch.jsonl"))
    assert result.exit_code == 0, result.stderr
    bundle = json.loads(result.stdout)
    assert bundle["type"] == "transaction"
    types = [e["resource"]["resourceType"] for e in bundle["entry"]]
    assert types.count("Encounter") == 2  # 000126 has no MRN: left out
    assert "left out: peer-tool/ps-2026-000126: waiting_patient (no-mrn)" in result.stderr
    assert json.loads(run("status", "--json").stdout)["pending"] == 0


def test_import_counts_a_record_the_database_refused_as_rejected_by_name(
        home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Intake stops the known cases; any row the database still refuses is named, not lost."""
    from connector.store import AddSummary, Refused, Store

    real = Store.add_records

    def refusing(self: Store, records, **kwargs):  # type: ignore[no-untyped-def]
        kept = [r for r in records if r.id != "ps-2026-000124"]
        summary: AddSummary = real(self, kept, **kwargs)
        return summary + AddSummary(refused=(Refused("peer-tool", "ps-2026-000124",
                                                     "note.id", "DataError"),))

    run("init")
    monkeypatch.setattr(Store, "add_records", refusing)
    result = run("import", "--source", "peer-tool", str(DATA / "batch.jsonl"))
    assert result.exit_code == 1
    assert "id=ps-2026-000124" in result.stderr and "note.id" in result.stderr
    assert "2 accepted" in result.stdout and "1 rejected" in result.stdout
