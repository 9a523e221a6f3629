"""Integration fixtures: a PeerSync home wired to a real sekmet server and a real database."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from click.testing import CliRunner
from flask import Flask

from connector.cli import main
from connector.demo import seed_patients
from connector.fhir_client import FhirClient
from mappings.profile import default_profile_path, load_profile
from tests.webapp_support import Home, add_users, cheap_hashes, make_app

DATA = Path(__file__).resolve().parent.parent / "data"
SOURCE = "peer-tool"
ENC_SYSTEM = f"https://riverside-peer.example/fhir/sid/peersync/{SOURCE}/encounter"
NOTE_SYSTEM = f"https://riverside-peer.example/fhir/sid/peersync/{SOURCE}/note"
NOTE_VERSION_SYSTEM = f"https://riverside-peer.example/fhir/sid/peersync/{SOURCE}/note-version"
MRN_SYSTEM = "urn:oid:2.16.840.1.113883.3.7418.1"
FIRST_IMPORT = ["in-person-session.json", "batch.jsonl", "export.csv",
                "part2-without-consent.json"]


class Env:
    """A PeerSync home wired to one sekmet server and one database."""

    def __init__(self, home: Path, base_url: str, database_url: str,
                 monkeypatch: pytest.MonkeyPatch, init_args: tuple[str, ...] = ()) -> None:
        self.home = home
        self.base_url = base_url
        self.runner = CliRunner()
        monkeypatch.setenv("PEERSYNC_HOME", str(home))
        monkeypatch.delenv("PEERSYNC_EHR_URL", raising=False)
        monkeypatch.delenv("PEERSYNC_DATABASE_URL", raising=False)
        self.run("init", "--ehr-url", base_url, "--database-url", database_url, *init_args)

    def run(self, *args: str, expect: int | None = 0) -> Any:
        result = self.runner.invoke(main, list(args), catch_exceptions=False)
        if expect is not None:
            assert result.exit_code == expect, (args, result.output, result.stderr)
        return result

    def import_(self, *names: str) -> Any:
        return self.run("import", "--source", SOURCE, *[str(DATA / n) for n in names])

    def status(self) -> dict[str, int]:
        counts: dict[str, int] = json.loads(self.run("status", "--json").stdout)
        return counts

    def search(self, resource_type: str, **params: str) -> list[dict[str, Any]]:
        params.setdefault("_count", "200")
        resp = requests.get(f"{self.base_url}/{resource_type}", params=params, timeout=10)
        resp.raise_for_status()
        return [e["resource"] for e in resp.json().get("entry", [])]

    def all(self, resource_type: str) -> list[dict[str, Any]]:
        return self.search(resource_type)

    def configure(self, **keys: Any) -> None:
        """Set keys in peersync.toml wherever they stand (commented out or not), as an
        operator would edit the file; a key not in the file goes into [ehr]."""
        path = self.home / "peersync.toml"
        text = path.read_text(encoding="utf-8")
        for key, value in keys.items():
            rendered = json.dumps(value) if not isinstance(value, bool) else str(value).lower()
            text, n = re.subn(rf"(?m)^(?:# )?{key} = .*$", f"{key} = {rendered}", text, count=1)
            if n == 0:
                text = text.replace("[ehr]\n", f"[ehr]\n{key} = {rendered}\n", 1)
        path.write_text(text, encoding="utf-8")

    def set_keys(self, table: str, **keys: Any) -> None:
        """Set keys of one table in peersync.toml: uncomment or replace them, else add them."""
        path = self.home / "peersync.toml"
        head, sep, rest = path.read_text(encoding="utf-8").partition(f"[{table}]\n")
        assert sep, table
        body, nxt, tail = rest.partition("\n[")
        for key, value in keys.items():
            rendered = json.dumps(value) if not isinstance(value, bool) else str(value).lower()
            body, n = re.subn(rf"(?m)^(?:# )?{key} = .*$", f"{key} = {rendered}", body, count=1)
            if n == 0:
                body = f"{key} = {rendered}\n" + body
        path.write_text(head + sep + body + nxt + tail, encoding="utf-8")

    def store(self) -> Any:
        from connector.config import load_config
        from connector.store import Store

        return Store.from_url(load_config(self.home / "peersync.toml").database_url)


@pytest.fixture
def env(tmp_path: Path, sekmet: Any, database_url: str, monkeypatch: pytest.MonkeyPatch) -> Env:
    """PeerSync initialised against a fresh sekmet that holds the sample patients."""
    e = Env(tmp_path / "home", sekmet.base_url, database_url, monkeypatch)
    profile = load_profile(default_profile_path())
    with FhirClient(base_url=sekmet.base_url, timeout_s=10) as client:
        seed_patients(client, profile, [DATA / n for n in FIRST_IMPORT + ["amendment.json"]])
    return e


# -- the admin app on that home ------------------------------------------------------------

@pytest.fixture
def home(env: Env, monkeypatch: pytest.MonkeyPatch) -> Home:
    """The env's home with the test users (tests.webapp_support.PASSWORDS)."""
    cheap_hashes(monkeypatch)
    h = Home(env.home, env.home / "peersync.toml", env.base_url)
    add_users(h)
    return h


@pytest.fixture
def app(home: Home) -> Iterator[Flask]:
    from webapp import close_app

    application = make_app(home, SYNC_ON_ACTION=True)
    yield application
    close_app(application)
