"""`peersync config check` against the real FHIR server (sekmet): plain, batch mode,
unreachable, and with SMART Backend Services (exact scopes, and a client lacking one)."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from connector.auth import DEFAULT_SMART_SCOPES
from connector.ehr_sandbox import SekmetServer, free_port
from mappings.profile import default_profile_path
from tests.integration.conftest import FIRST_IMPORT, Env
from tests.integration.smart import (
    JWT_PREFIX,
    PEM_HEADER,
    configure_smart,
    seeder,
    smart_settings,
    write_key,
)

pytestmark = pytest.mark.integration

LINE = re.compile(r"^(OK|WARN|FAIL)\s+([^:]+): (.*)$")


def checks(output: str) -> dict[str, tuple[str, str]]:
    """The report's lines as name -> (status, detail)."""
    out: dict[str, tuple[str, str]] = {}
    for line in output.splitlines():
        match = LINE.match(line)
        if match:
            out[match.group(2)] = (match.group(1), match.group(3))
    return out


def agency_ids(found: dict[str, tuple[str, str]]) -> tuple[str, str]:
    org = re.search(r"Organization/([\w.-]+)", found["agency Organization"][1])
    dev = re.search(r"Device/([\w.-]+)", found["connector Device"][1])
    assert org and dev
    return org.group(1), dev.group(1)


def test_all_ok_and_the_agency_is_created_once(env: Env) -> None:
    first = env.run("config", "check")
    found = checks(first.stdout)
    assert {status for status, _ in found.values()} == {"OK"}, first.stdout
    assert found["config"][1] == str(env.home / "peersync.toml")
    assert found["profile"][1].startswith(str(default_profile_path()))
    assert "created now" in found["agency Organization"][1]
    assert "created now" in found["connector Device"][1]
    assert first.stdout.rstrip().splitlines()[-1].startswith("ready to sync: ")
    org_id, dev_id = agency_ids(found)

    again = checks(env.run("config", "check").stdout)
    assert agency_ids(again) == (org_id, dev_id)
    assert "stored earlier, still in the EHR" in again["agency Organization"][1]
    assert [o["id"] for o in env.all("Organization")] == [org_id]
    assert [d["id"] for d in env.all("Device")] == [dev_id]

    # the first sync uses the stored ids: Provenance names that Device for that Organization
    env.import_(*FIRST_IMPORT)
    env.run("sync")
    provenances = env.all("Provenance")
    assert provenances
    for prov in provenances:
        agents = {a["who"]["reference"]: a["onBehalfOf"]["reference"] for a in prov["agent"]}
        assert agents[f"Device/{dev_id}"] == f"Organization/{org_id}"
    assert len(env.all("Organization")) == 1 and len(env.all("Device")) == 1


def test_batch_mode_is_ok_on_sekmet(env: Env) -> None:
    env.configure(mode="batch")
    result = env.run("config", "check")
    found = checks(result.stdout)
    assert found["mode"] == ("OK", "batch: listed in rest.interaction (ehr.mode = 'batch')")
    assert not [n for n, (s, _) in found.items() if s != "OK"], result.stdout


def test_a_closed_port_fails_quickly_as_unreachable(
    tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"http://127.0.0.1:{free_port()}/fhir"  # nothing listens there
    env = Env(tmp_path / "home", url, database_url, monkeypatch)
    started = time.monotonic()
    result = env.run("config", "check", expect=1)
    elapsed = time.monotonic() - started
    found = checks(result.stdout)
    status, detail = found["EHR reachable"]
    assert status == "FAIL" and detail.startswith("EHR unreachable")
    assert "connection refused" in detail
    assert "agency Organization" not in found
    assert elapsed < 5, elapsed


# -- with SMART Backend Services ---------------------------------------------------------

@pytest.fixture
def smart_ehr(tmp_path: Path) -> Iterator[tuple[SekmetServer, Path]]:
    key_file, jwk = write_key(tmp_path / "keys")
    with SekmetServer(tmp_path / "ehr", settings=smart_settings(jwk, token_lifetime=60)) as srv:
        yield srv, key_file


def _smart_env(tmp_path: Path, server: SekmetServer, key_file: Path, database_url: str,
               monkeypatch: pytest.MonkeyPatch, client_id: str) -> Env:
    env = Env(tmp_path / "home", server.base_url, database_url, monkeypatch)
    configure_smart(env.home, key_file, client_id=client_id)
    return env


def test_smart_token_with_exactly_the_scopes_asked(
    smart_ehr: tuple[SekmetServer, Path], tmp_path: Path, database_url: str,
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level("DEBUG")
    server, key_file = smart_ehr
    env = _smart_env(tmp_path, server, key_file, database_url, monkeypatch, "peersync")
    result = env.run("config", "check")
    found = checks(result.stdout)
    assert not [n for n, (s, _) in found.items() if s != "OK"], result.stdout
    status, detail = found["auth token"]
    assert "granted 7 of 7 scopes asked" in detail
    assert detail.endswith(DEFAULT_SMART_SCOPES)
    assert server.base_url.removesuffix("/fhir") + "/auth/token" in detail
    assert "type smart" in found["ehr.auth"][1] and str(key_file) in found["ehr.auth"][1]
    org_id, dev_id = agency_ids(found)
    with seeder(server.base_url, key_file) as ehr:
        assert [o["id"] for o in ehr.search("Organization", {})] == [org_id]
        assert [d["id"] for d in ehr.search("Device", {})] == [dev_id]
    for text in (result.output, caplog.text):
        assert PEM_HEADER not in text and JWT_PREFIX not in text

    shown = env.run("config", "show").stdout
    assert f'private_key_file = "{key_file}"' in shown and PEM_HEADER not in shown


def test_smart_client_lacking_a_scope_fails_naming_it(
    smart_ehr: tuple[SekmetServer, Path], tmp_path: Path, database_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server, key_file = smart_ehr
    env = _smart_env(tmp_path, server, key_file, database_url, monkeypatch, "lacking")
    result = env.run("config", "check", expect=1)
    found = checks(result.stdout)
    status, detail = found["auth token"]
    assert status == "FAIL"
    assert "scopes not granted: system/Provenance.crs" in detail
    assert [n for n, (s, _) in found.items() if s == "FAIL"] == ["auth token"]


def test_no_auth_against_a_smart_ehr_warns_and_fails_on_the_agency(
    smart_ehr: tuple[SekmetServer, Path], tmp_path: Path, database_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server, _ = smart_ehr
    env = Env(tmp_path / "home", server.base_url, database_url, monkeypatch)
    result = env.run("config", "check", expect=1)
    found: dict[str, Any] = checks(result.stdout)
    assert found["EHR reachable"][0] == "OK"  # sekmet serves metadata without a token
    assert found["security"][0] == "WARN"
    status, detail = found["agency"]
    assert status == "FAIL" and "401" in detail
