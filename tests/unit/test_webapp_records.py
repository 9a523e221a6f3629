"""The first admin page: records and their sync state (Flask test client)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from flask.testing import FlaskClient

from tests.webapp_support import import_examples, logged_in, make_app, make_home


@pytest.fixture
def client(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FlaskClient]:
    from webapp import close_app

    home = make_home(tmp_path, monkeypatch)
    import_examples(home, "batch.jsonl")
    app = make_app(home)
    yield logged_in(app, "auditor")
    close_app(app)


def test_records_page_lists_records_with_their_state(client: FlaskClient) -> None:
    page = client.get("/records/")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    for record_id in ("ps-2026-000124", "ps-2026-000125", "ps-2026-000126"):
        assert record_id in html
    assert html.count('class="state state-pending"') == 3
    # no PHI on the listing: names and note text stay in the store
    assert "Okafor" not in html and "morning routine" not in html


def test_state_filter_and_security_headers(client: FlaskClient) -> None:
    page = client.get("/records/?state=synced")
    assert "No records in state synced" in page.get_data(as_text=True)
    assert page.headers["X-Frame-Options"] == "DENY"
    assert "default-src 'none'" in page.headers["Content-Security-Policy"]
    assert client.get("/").status_code == 302  # to the dashboard
