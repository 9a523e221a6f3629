"""Shared fixtures: test data, a real FHIR server (sekmet), SQLite and PostgreSQL stores.

PostgreSQL runs when PEERSYNC_TEST_DATABASE_URL names a server (e.g.
``postgresql+psycopg://postgres@127.0.0.1:5432/test``): each test then gets a
database of its own, created and dropped here. `.ci/run` sets it.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from connector.records import EncounterRecord

DATA = Path(__file__).parent / "data"
EXAMPLES = {
    "in-person-session.json": 1,
    "amendment.json": 1,
    "batch.jsonl": 3,
    "export.csv": 2,
    "part2-without-consent.json": 1,
}
PG_ENV = "PEERSYNC_TEST_DATABASE_URL"


@pytest.fixture
def data_dir() -> Path:
    return DATA


def load_example(name: str, source: str = "peer-tool") -> EncounterRecord:
    return EncounterRecord.from_dict(source, json.loads((DATA / name).read_text("utf-8")))


def example_dict(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((DATA / name).read_text("utf-8"))
    return data


# -- databases --------------------------------------------------------------

def _pg_admin_url() -> str | None:
    return os.environ.get(PG_ENV) or None


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database: a SQLite file, and a PostgreSQL database when configured."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'peersync.db'}"
        return
    admin = _pg_admin_url()
    if not admin:
        pytest.skip(f"{PG_ENV} not set: PostgreSQL tests skipped")
    yield from _pg_database(admin)


def _pg_database(admin: str) -> Iterator[str]:
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    name = f"peersync_test_{uuid.uuid4().hex[:12]}"
    engine = create_engine(admin, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(admin).set(database=name).render_as_string(hide_password=False)
    finally:
        with engine.connect() as conn:
            conn.execute(text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :n"
            ), {"n": name})
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        engine.dispose()


@pytest.fixture
def pg_url() -> Iterator[str]:
    admin = _pg_admin_url()
    if not admin:
        pytest.skip(f"{PG_ENV} not set: PostgreSQL tests skipped")
    yield from _pg_database(admin)


@pytest.fixture
def store(database_url: str) -> Iterator[Any]:
    from connector.store import Store

    s = Store.from_url(database_url)
    s.migrate()
    yield s
    s.close()


# -- the real FHIR server ---------------------------------------------------

@pytest.fixture
def sekmet(tmp_path: Path) -> Iterator[Any]:
    """A fresh in-memory sekmet FHIR server on a free 127.0.0.1 port (no auth)."""
    from connector.ehr_sandbox import SekmetServer

    server = SekmetServer(tmp_path / "ehr")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def profile() -> Any:
    from mappings.profile import default_profile_path, load_profile

    return load_profile(default_profile_path())
