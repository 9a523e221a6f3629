"""Unit fixtures: a migrated SQLite store; for the web app, a PeerSync home with the test
users, and the app on it.

A test module that wants records in the home overrides ``home`` with one that takes this
one and imports them (see tests/webapp_support.import_examples).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask

from connector.store import Store
from tests.webapp_support import Home, make_app, make_home


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[Store]:
    store = Store.from_url(f"sqlite:///{tmp_path / 'p.db'}")
    store.migrate()
    yield store
    store.close()


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Home:
    return make_home(tmp_path, monkeypatch)


@pytest.fixture
def app(home: Home) -> Iterator[Flask]:
    from webapp import close_app

    application = make_app(home)
    yield application
    close_app(application)
