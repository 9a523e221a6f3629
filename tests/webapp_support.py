"""Helpers for the web app's tests: a PeerSync home with users, a logged-in test client."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from flask import Flask
from flask.testing import FlaskClient

from connector.cli import main
from connector.ehr_sandbox import free_port

PASSWORDS = {
    "admin": "admin-password-1",
    "alex": "alex-password-17",  # specialist S-17
    "priya": "priya-password-22",  # specialist S-22
    "audrey": "audrey-password-9",  # auditor
    "sam": "sam-password-supervisor-90",  # supervisor S-90 of every specialist
}
ROLE_USER = {"admin": "admin", "specialist": "alex", "auditor": "audrey", "supervisor": "sam"}
_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')
_STARTED = re.compile(r'name="started" value="([^"]+)"')

# A valid submission of the specialist's Document form (webapp/document.py).
DOCUMENT_FORM = {
    "participant.id": "P-2001",
    "participant.mrn": "MRN-55821",
    "participant.given": "Dana",
    "participant.family": "Lopez",
    "date": "2026-11-23",
    "start_time": "10:00",
    "end_time": "10:45",
    "status": "completed",
    "service.modality": "video",
    "goals": "housing, wellness",
    "note.text": "Talked through the lease renewal.\nNext: call the landlord together.",
}


@dataclass
class Home:
    path: Path
    config: Path
    ehr_url: str
    extra: dict[str, Any] = field(default_factory=dict)

    def store(self) -> Any:
        """A store as the app and the CLI open it (with the home's audit key)."""
        import os

        from connector.audit import load_audit_key
        from connector.config import load_config
        from connector.store import Store

        config = load_config(self.config)
        key = load_audit_key(config.folder, config.audit_key_file, os.environ)
        return Store.from_url(config.database_url, audit_key=key)


def make_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *, ehr_url: str | None = None,
              database_url: str | None = None) -> Home:
    """`peersync init` in tmp_path/home, plus the test users."""
    home = tmp_path / "home"
    cheap_hashes(monkeypatch)
    monkeypatch.setenv("PEERSYNC_HOME", str(home))
    for name in ("PEERSYNC_EHR_URL", "PEERSYNC_DATABASE_URL", "PEERSYNC_SECRET_KEY",
                 "PEERSYNC_AUDIT_KEY"):
        monkeypatch.delenv(name, raising=False)
    ehr_url = ehr_url or f"http://127.0.0.1:{free_port()}/fhir"  # nothing listens there
    args = ["init", "--ehr-url", ehr_url]
    if database_url:
        args += ["--database-url", database_url]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    h = Home(home, home / "peersync.toml", ehr_url)
    add_users(h)
    return h


def cheap_hashes(monkeypatch: pytest.MonkeyPatch) -> None:
    """scrypt with a small work factor: the same code path, a hundred times faster."""
    import connector.accounts

    monkeypatch.setattr(connector.accounts, "HASH_METHOD", "scrypt:1024:8:1")


def add_users(home: Home) -> None:
    from connector.accounts import add_user

    store = home.store()
    try:
        add_user(store, "admin", role="admin", password=PASSWORDS["admin"], actor="test")
        add_user(store, "alex", role="specialist", specialist_id="S-17",
                 password=PASSWORDS["alex"], actor="test")
        add_user(store, "priya", role="specialist", specialist_id="S-22",
                 password=PASSWORDS["priya"], actor="test")
        add_user(store, "audrey", role="auditor", password=PASSWORDS["audrey"], actor="test")
        add_user(store, "sam", role="supervisor", specialist_id="S-90",
                 password=PASSWORDS["sam"], actor="test")
    finally:
        store.close()


def make_app(home: Home, **config: Any) -> Flask:
    from webapp import create_app

    settings: dict[str, Any] = {
        "TESTING": True,
        "PEERSYNC_CONFIG": str(home.config),
        "SECRET_KEY": "test-secret-key",
        "SYNC_ON_ACTION": False,
        "EHR_CHECK_TIMEOUT_S": 1,
    }
    settings.update(config)
    return create_app(settings)


def csrf_token(client: FlaskClient, path: str = "/login") -> str:
    page = client.get(path)
    match = _CSRF.search(page.get_data(as_text=True))
    assert match, f"no CSRF token on {path}"
    return match.group(1)


def document_form(client: FlaskClient) -> dict[str, str]:
    """The Document form's hidden fields as the page issues them: CSRF token, signed start."""
    html = client.get("/document/").get_data(as_text=True)
    return {
        "csrf_token": _CSRF.search(html).group(1),  # type: ignore[union-attr]
        "started": _STARTED.search(html).group(1),  # type: ignore[union-attr]
    }


def log_in(client: FlaskClient, name: str, password: str | None = None) -> Any:
    token = csrf_token(client)
    return client.post("/login", data={"name": name, "password": password or PASSWORDS[name],
                                       "csrf_token": token})


def logged_in(app: Flask, role_or_name: str) -> FlaskClient:
    client = app.test_client()
    name = ROLE_USER.get(role_or_name, role_or_name)
    response = log_in(client, name)
    assert response.status_code == 302, response.get_data(as_text=True)
    return client


def import_examples(home: Home, *names: str, source: str = "peer-tool") -> None:
    from tests.conftest import DATA

    result = CliRunner().invoke(
        main, ["import", "--source", source, *[str(DATA / n) for n in names]],
        catch_exceptions=False)
    assert result.exit_code == 0, result.output


def job_id(home: Home, record_id: str) -> int:
    store = home.store()
    try:
        rows = [r for r in store.jobs_overview(limit=1000) if r["record_id"] == record_id]
    finally:
        store.close()
    assert rows, record_id
    return int(rows[0]["id"])
