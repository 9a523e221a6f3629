"""`peersync user add --role supervisor` and `peersync review list | approve | return`,
against SQLite and PostgreSQL: passwords from standard input, exit codes, audit events."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from connector.cli import main
from tests.conftest import DATA, example_dict
from tests.webapp_support import cheap_hashes

SAM = "sam-supervisor-pw-1"
LEE = "lee-supervisor-pw-2"


def run(*args: str, input: str | None = None) -> Result:
    return CliRunner().invoke(main, list(args), input=input, catch_exceptions=False)


def cosign_profile(folder: Path, review: str = 'policy = "cosign"\n') -> Path:
    from mappings.profile import default_profile_path

    text = default_profile_path().read_text("utf-8")
    path = folder / "agency.toml"
    path.write_text(text[: text.index("[review]")] + "[review]\n" + review, "utf-8")
    return path


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, database_url: str) -> Path:
    cheap_hashes(monkeypatch)
    monkeypatch.setenv("PEERSYNC_HOME", str(tmp_path))
    for name in ("PEERSYNC_EHR_URL", "PEERSYNC_DATABASE_URL", "PEERSYNC_AUDIT_KEY"):
        monkeypatch.delenv(name, raising=False)
    assert run("init", "--database-url", database_url).exit_code == 0
    config = tmp_path / "peersync.toml"
    cosign_profile(tmp_path)
    config.write_text(re.sub(r'^profile = "default"', 'profile = "agency.toml"',
                             config.read_text("utf-8"), flags=re.M), "utf-8")
    added = run("user", "add", "sam", "--role", "supervisor", "--specialist-id", "S-90",
                input=SAM + "\n")
    assert added.exit_code == 0, added.output
    assert "supervises all specialists" in added.stdout
    added = run("user", "add", "lee", "--role", "supervisor", "--specialist-id", "S-91",
                "--supervises", "S-22,S-23", input=LEE + "\n")
    assert added.exit_code == 0, added.output
    assert "supervises S-22, S-23" in added.stdout
    return tmp_path


def _record(tmp_path: Path, name: str, **fields: Any) -> Path:
    data = example_dict("in-person-session.json") | fields
    path = tmp_path / name
    path.write_text(json.dumps(data), "utf-8")
    return path


def status(home: Path) -> dict[str, int]:
    counts: dict[str, int] = json.loads(run("status", "--json").stdout)
    return counts


def audit(home: Path) -> list[dict[str, Any]]:
    from connector.wiring import Wiring

    store = Wiring.load(home / "peersync.toml").store()
    try:
        return store.audit_events(limit=1000)
    finally:
        store.close()


def test_import_under_cosign_waits_list_shows_it_and_approve_releases_it(home: Path) -> None:
    assert run("import", str(DATA / "in-person-session.json")).exit_code == 0
    counts = status(home)
    assert counts["waiting_review"] == 1 and counts["pending"] == 0
    listed = json.loads(run("review", "list", "--json").stdout)["waiting"]
    assert [(w["source"], w["record_id"], w["specialist_id"]) for w in listed] == [
        ("peer-tool", "ps-2026-000123", "S-17")]
    assert "Dana" not in run("review", "list", "--json").stdout  # ids and codes only

    done = run("review", "approve", "ps-2026-000123", "--by", "sam", input=SAM + "\n")
    assert done.exit_code == 0, done.output
    assert "co-signed by S-90" in done.stdout
    assert status(home)["pending"] == 1
    [event] = [e for e in audit(home) if e["action"] == "review.approved"]
    assert event["detail"]["cosigned_by"] == "S-90" and event["actor"] == "review:sam"
    assert json.loads(run("review", "list", "--json").stdout) == {"waiting": []}


def test_a_wrong_password_is_refused_with_exit_1_and_audited(home: Path) -> None:
    run("import", str(DATA / "in-person-session.json"))
    refused = run("review", "approve", "ps-2026-000123", "--by", "sam", input="wrong-one\n")
    assert refused.exit_code == 1
    assert "wrong user name or password" in refused.stderr
    assert status(home)["waiting_review"] == 1
    [event] = [e for e in audit(home) if e["action"] == "review.refused"]
    assert event["detail"]["why"] == "bad-password"
    assert "wrong-one" not in json.dumps(event, default=str)


def test_a_supervisor_of_other_specialists_is_refused_with_exit_1(home: Path) -> None:
    run("import", str(DATA / "in-person-session.json"))  # S-17's note; lee: S-22, S-23
    refused = run("review", "approve", "ps-2026-000123", "--by", "lee", input=LEE + "\n")
    assert refused.exit_code == 1
    assert "does not supervise staff id S-17" in refused.stderr
    assert status(home)["waiting_review"] == 1


def test_the_author_cannot_co_sign_their_own_note(home: Path, tmp_path: Path) -> None:
    own = _record(tmp_path, "own.json", id="own-1", specialist={"id": "S-90", "family": "Sam"})
    run("import", str(own))
    refused = run("review", "approve", "own-1", "--by", "sam", input=SAM + "\n")
    assert refused.exit_code == 1
    assert "own note" in refused.stderr


def test_return_needs_a_comment_and_ends_the_version(home: Path) -> None:
    run("import", str(DATA / "in-person-session.json"))
    assert run("review", "return", "ps-2026-000123", "--by", "sam", "--comment", " ",
               input=SAM + "\n").exit_code == 2
    done = run("review", "return", "ps-2026-000123", "--by", "sam",
               "--comment", "Say what Dana will bring on Friday.", input=SAM + "\n")
    assert done.exit_code == 0, done.output
    counts = status(home)
    assert counts["returned"] == 1 and counts["waiting_review"] == 0
    [event] = [e for e in audit(home) if e["action"] == "review.returned"]
    assert "Friday" not in json.dumps(event, default=str)


def test_a_record_in_several_sources_is_ambiguous_and_an_unknown_one_not_found(
        home: Path) -> None:
    run("import", str(DATA / "in-person-session.json"))
    run("import", "--source", "other-tool", str(DATA / "in-person-session.json"))
    ambiguous = run("review", "approve", "ps-2026-000123", "--by", "sam", input=SAM + "\n")
    assert ambiguous.exit_code == 2
    assert "other-tool" in ambiguous.stderr and "peer-tool" in ambiguous.stderr
    done = run("review", "approve", "ps-2026-000123", "--by", "sam", "--source", "other-tool",
               input=SAM + "\n")
    assert done.exit_code == 0, done.output
    missing = run("review", "approve", "no-such-record", "--by", "sam", input=SAM + "\n")
    assert missing.exit_code == 2
    assert "is waiting for review" in missing.stderr


def test_approve_acts_on_the_oldest_version_waiting(home: Path, tmp_path: Path) -> None:
    run("import", str(DATA / "in-person-session.json"))
    note = example_dict("in-person-session.json")["note"] | {"version": 2, "text": "Amended."}
    run("import", str(_record(tmp_path, "v2.json", note=note)))
    assert status(home)["waiting_review"] == 2
    run("review", "approve", "ps-2026-000123", "--by", "sam", input=SAM + "\n")
    listed = json.loads(run("review", "list", "--json").stdout)["waiting"]
    assert [w["note_version"] for w in listed] == [2]  # version 1 was co-signed first


def test_user_list_names_each_supervisors_specialists(home: Path) -> None:
    listed = run("user", "list").stdout
    assert re.search(r"^lee +supervisor +S-91  supervises S-22, S-23$", listed, re.M)
    assert re.search(r"^sam +supervisor +S-90  supervises all$", listed, re.M)


def test_user_add_refuses_supervises_for_other_roles(home: Path) -> None:
    refused = run("user", "add", "kim", "--role", "specialist", "--specialist-id", "S-30",
                  "--supervises", "S-17", input="kim-password-30\n")
    assert refused.exit_code == 1
    assert "only a supervisor account supervises" in refused.stderr
    refused = run("user", "add", "pat", "--role", "supervisor", input="pat-password-30\n")
    assert refused.exit_code == 1
    assert "needs --specialist-id" in refused.stderr
