"""The first admin page: records and their sync state (Flask test client)."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from connector.cli import main
from tests.conftest import DATA
from webapp import create_app


@pytest.fixture
def client(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    monkeypatch.setenv("PEERSYNC_HOME", str(tmp_path))
    runner = CliRunner()
    assert runner.invoke(main, ["init"]).exit_code == 0
    runner.invoke(main, ["import", str(DATA / "batch.jsonl")])
    app = create_app({"TESTING": True, "PEERSYNC_CONFIG": str(tmp_path / "peersync.toml")})
    yield app.test_client()
    app.extensions["peersync_store"].close()


def test_records_page_lists_records_with_their_state(client) -> None:  # type: ignore[no-untyped-def]
    page = client.get("/records/")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    for record_id in ("ps-2026-000124", "ps-2026-000125", "ps-2026-000126"):
        assert record_id in html
    assert html.count('class="state state-pending"') == 3
    # no PHI on the listing: names and note text stay in the store
    assert "Okafor" not in html and "morning routine" not in html


def test_state_filter_and_security_headers(client) -> None:  # type: ignore[no-untyped-def]
    page = client.get("/records/?state=synced")
    assert "No records in state synced" in page.get_data(as_text=True)
    assert page.headers["X-Frame-Options"] == "DENY"
    assert "default-src 'self'" in page.headers["Content-Security-Policy"]
    assert client.get("/").status_code == 200
