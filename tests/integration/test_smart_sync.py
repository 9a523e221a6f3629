"""`peersync sync` end to end against sekmet with SMART Backend Services switched on.

The connector's sekmet client (``peersync``) holds exactly the scopes DESIGN.md
lists (DEFAULT_SMART_SCOPES, not ``system/*.*``); PeerSync runs in ``single``
mode, since sekmet checks a bundle POST as a create on ``*``. Access tokens
live 2 seconds, so tokens expire between two syncs and within one. A third
client (``lacking``) may not create Provenance: its records need attention,
with the missing scope named. No key material or JWT ever reaches an output
or a log.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import MetaData, select

from connector.demo import seed_patients
from connector.ehr_sandbox import SekmetServer
from connector.fhir_client import FhirClient
from connector.schema import jobs
from mappings.profile import default_profile_path, load_profile
from tests.integration.conftest import (
    DATA,
    ENC_SYSTEM,
    FIRST_IMPORT,
    NOTE_VERSION_SYSTEM,
    SOURCE,
    Env,
)
from tests.integration.smart import (
    JWT_PREFIX,
    PEM_HEADER,
    configure_smart,
    seeder,
    smart_settings,
    write_key,
)

pytestmark = pytest.mark.integration

TOKEN_LIFETIME_S = 2
SYNCED_IDS = {"ps-2026-000123", "ps-2026-000124", "ps-2026-000125", "ps-2026-000127",
              "ps-2026-000128"}


class SmartEnv(Env):
    """Env whose EHR look-ups go through the tests' own SMART client (anonymous gets 401)."""

    ehr: FhirClient
    outputs: list[str]

    def run(self, *args: str, expect: int | None = 0) -> Any:
        result = super().run(*args, expect=expect)
        self.outputs.append(result.output)
        return result

    def search(self, resource_type: str, **params: str) -> list[dict[str, Any]]:
        params.setdefault("_count", "200")
        return self.ehr.search(resource_type, params)


# a 401 status in the output (not a port that happens to hold the digits: ":57401")
STATUS_401 = re.compile(r"(?<![\d:])401(?!\d)")


@pytest.fixture
def smart_env(
    tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> Iterator[tuple[SmartEnv, Path]]:
    caplog.set_level(logging.DEBUG)
    key_file, jwk = write_key(tmp_path / "keys")
    settings = smart_settings(jwk, token_lifetime=TOKEN_LIFETIME_S)
    with SekmetServer(tmp_path / "ehr", settings=settings) as server:
        env = SmartEnv.__new__(SmartEnv)
        env.outputs = []
        Env.__init__(env, tmp_path / "home", server.base_url, database_url, monkeypatch)
        configure_smart(env.home, key_file, client_id="peersync", mode="single")
        with seeder(server.base_url, key_file) as ehr:
            env.ehr = ehr
            profile = load_profile(default_profile_path())
            seed_patients(ehr, profile, [DATA / n for n in FIRST_IMPORT + ["amendment.json"]])
            yield env, key_file


def _use_client(env: Env, client_id: str) -> None:
    path = env.home / "peersync.toml"
    text = path.read_text(encoding="utf-8")
    text, n = re.subn(r'(?m)^client_id = ".*"$', f'client_id = "{client_id}"', text, count=1)
    assert n == 1
    path.write_text(text, encoding="utf-8")


def _identifiers(resources: list[dict[str, Any]], system: str) -> Counter[str]:
    return Counter(i["value"] for r in resources for i in r.get("identifier", [])
                   if i.get("system") == system)


def _job_reasons(env: Env) -> dict[str, tuple[str, str | None]]:
    store = env.store()
    try:
        with store.engine.connect() as conn:
            rows = conn.execute(select(jobs.c.record_id, jobs.c.state, jobs.c.reason)).all()
    finally:
        store.close()
    return {row.record_id: (row.state, row.reason) for row in rows}


def _no_secrets(env: SmartEnv, key_file: Path, caplog: pytest.LogCaptureFixture) -> None:
    """No PEM and no JWT (client assertion or access token) in outputs, logs or the database."""
    key_text = key_file.read_text()
    body = key_text.splitlines()[1]  # a line of the key's base64
    texts = {"cli output": "\n".join(env.outputs), "log": caplog.text}
    store = env.store()
    try:
        meta = MetaData()
        meta.reflect(store.engine)
        with store.engine.connect() as conn:
            texts["database"] = "\n".join(
                repr(tuple(row)) for table in meta.sorted_tables
                for row in conn.execute(select(table))
            )
    finally:
        store.close()
    for where, text in texts.items():
        assert PEM_HEADER not in text, where
        assert body not in text, where
        assert JWT_PREFIX not in text, where


def _token_requests(caplog: pytest.LogCaptureFixture) -> int:
    return sum(1 for r in caplog.records
               if r.name == "peersync.auth" and "(token request)" in r.getMessage())


def test_exact_scopes_sync_the_contract_examples_once(
    smart_env: tuple[SmartEnv, Path], caplog: pytest.LogCaptureFixture
) -> None:
    env, key_file = smart_env
    env.run("config", "check")
    env.import_(*FIRST_IMPORT)
    out = env.run("sync").stdout
    assert "single mode)" in out

    counts = env.status()
    assert counts["synced"] == 5
    assert counts["waiting_patient"] == 1 and counts["waiting_consent"] == 1
    encounters = env.all("Encounter")
    assert _identifiers(encounters, ENC_SYSTEM) == Counter(SYNCED_IDS)
    docs = env.all("DocumentReference")
    assert len(docs) == 5 and all(d["status"] == "current" for d in docs)
    assert len(_identifiers(docs, NOTE_VERSION_SYSTEM)) == 5
    assert len(env.all("Provenance")) == 5
    assert len(env.all("Organization")) == 1 and len(env.all("Device")) == 1
    staff = [i["value"] for p in env.all("Practitioner") for i in p["identifier"]
             if "staff" in i["system"]]
    assert len(staff) == len(set(staff))

    # the token of that sync has expired by now: the next one gets a new token unasked
    time.sleep(TOKEN_LIFETIME_S + 0.5)
    env.import_("amendment.json")
    env.run("sync")
    assert env.status()["synced"] == 6
    docs = env.all("DocumentReference")
    assert Counter(d["status"] for d in docs) == {"current": 5, "superseded": 1}
    assert len(env.all("Provenance")) == 6
    assert len(env.all("Encounter")) == 5
    # a re-run sends nothing and adds no Provenance
    env.run("sync")
    assert len(env.all("Provenance")) == 6
    assert not STATUS_401.search("\n".join(env.outputs))
    _no_secrets(env, key_file, caplog)


def _many_records(folder: Path, count: int) -> Path:
    base = json.loads((DATA / "in-person-session.json").read_text("utf-8"))
    path = folder / "many.jsonl"
    with path.open("w", encoding="utf-8") as fh:
        for n in range(count):
            rec = json.loads(json.dumps(base))
            rec["id"] = f"ps-smart-{n:04d}"
            rec["note"]["id"] = f"N-SMART-{n:04d}"
            hour = 8 + n % 10
            day = 1 + n // 10
            rec["start"] = f"2026-10-{day:02d}T{hour:02d}:00:00-05:00"
            rec["end"] = f"2026-10-{day:02d}T{hour:02d}:40:00-05:00"
            rec["note"]["signed_at"] = f"2026-10-{day:02d}T{hour:02d}:55:00-05:00"
            rec["note"]["documentation_started"] = f"2026-10-{day:02d}T{hour:02d}:41:00-05:00"
            rec["note"]["documentation_finished"] = f"2026-10-{day:02d}T{hour:02d}:54:00-05:00"
            fh.write(json.dumps(rec) + "\n")
    return path


def test_a_sync_that_outlives_its_token_renews_it_without_a_401(
    smart_env: tuple[SmartEnv, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    env, key_file = smart_env
    count = 36
    # one request at a time, so that the run outlasts a token on any machine (concurrent
    # requests meeting one expired token are covered in tests/unit/test_auth.py)
    env.configure(max_in_flight=1)
    env.run("import", "--source", SOURCE, str(_many_records(tmp_path, count)))

    # A little latency per HTTP request (inside the client's max_in_flight bound, so the
    # pipelined sync still makes them one at a time): the run outlasts a token anywhere.
    import requests

    real_request = requests.Session.request

    def slow_request(self: requests.Session, *args: Any, **kwargs: Any) -> Any:
        time.sleep(0.02)
        return real_request(self, *args, **kwargs)

    before = _token_requests(caplog)
    with monkeypatch.context() as patched:
        patched.setattr(requests.Session, "request", slow_request)
        started = time.monotonic()
        env.run("sync")
        elapsed = time.monotonic() - started

    assert elapsed > 1.5 * TOKEN_LIFETIME_S, elapsed
    # renewed mid-run: before expiry, or (sekmet truncates iat to the second, so a "2 s"
    # token may live 1 s) after the EHR's 401, replayed once and never surfacing
    assert _token_requests(caplog) - before >= 2
    assert env.status()["synced"] == count
    reasons = _job_reasons(env)
    assert {state for state, _ in reasons.values()} == {"synced"}
    assert not [r for _, r in reasons.values() if r and STATUS_401.search(r)]
    assert len(env.all("Encounter")) == count
    assert len(env.all("DocumentReference")) == count
    assert len(env.all("Provenance")) == count
    assert not STATUS_401.search("\n".join(env.outputs))
    _no_secrets(env, key_file, caplog)


def test_a_missing_scope_leaves_records_needing_attention_naming_it(
    smart_env: tuple[SmartEnv, Path], caplog: pytest.LogCaptureFixture
) -> None:
    env, key_file = smart_env
    _use_client(env, "lacking")
    env.import_(*FIRST_IMPORT)
    result = env.run("sync", expect=1)
    counts = env.status()
    assert counts["needs_attention"] == 5, counts
    reasons = _job_reasons(env)
    for rid in SYNCED_IDS:
        state, reason = reasons[rid]
        assert state == "needs_attention"
        assert reason is not None and "missing scope system/Provenance.c" in reason, reason
    assert "system/Provenance.c" in result.stderr
    assert env.all("Provenance") == []
    assert len(env.all("Encounter")) == 5  # single mode: written before the Provenance

    # the admin grants the scope (here: the client that has it) and re-queues: only the
    # Provenance goes, nothing is written twice
    _use_client(env, "peersync")
    env.run("retry", "--all-failed")
    env.run("sync")
    assert env.status()["synced"] == 5
    assert len(env.all("Provenance")) == 5
    assert _identifiers(env.all("Encounter"), ENC_SYSTEM) == Counter(SYNCED_IDS)
    assert len(env.all("DocumentReference")) == 5
    _no_secrets(env, key_file, caplog)
