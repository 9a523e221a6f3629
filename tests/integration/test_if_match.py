"""Optimistic concurrency: an update by id carries If-Match; a resource someone changed in
the EHR meanwhile is re-read and written once more, never overwritten unseen."""

from __future__ import annotations

from typing import Any

import pytest
import requests

from tests.integration.conftest import ENC_SYSTEM, NOTE_SYSTEM, Env

pytestmark = pytest.mark.integration


def _edit_in_the_ehr(env: Env, resource: dict[str, Any]) -> None:
    """Someone at the agency edits the resource in the EHR (its version moves on)."""
    resource = dict(resource)
    resource.setdefault("meta", {})
    resp = requests.put(f"{env.base_url}/{resource['resourceType']}/{resource['id']}",
                        json=resource, timeout=10)
    assert resp.status_code == 200, resp.text


@pytest.mark.parametrize("mode", ["transaction", "batch", "single"])
def test_a_version_changed_in_the_ehr_is_reread_and_written_once_more(
        env: Env, mode: str, caplog: pytest.LogCaptureFixture) -> None:
    env.configure(mode=mode)
    env.import_("in-person-session.json")
    env.run("sync")
    [enc] = env.search("Encounter", identifier=f"{ENC_SYSTEM}|ps-2026-000123")
    [doc] = env.search("DocumentReference", identifier=f"{NOTE_SYSTEM}|N-88812")
    _edit_in_the_ehr(env, enc)
    _edit_in_the_ehr(env, doc)
    env.import_("amendment.json")
    with caplog.at_level("INFO", logger="peersync.sync"):
        env.run("sync")
    assert env.status()["synced"] == 2
    # the EHR refused our stale If-Match and the connector re-read the version
    assert "changed in the EHR meanwhile (If-Match conflict)" in caplog.text
    docs = env.search("DocumentReference", identifier=f"{NOTE_SYSTEM}|N-88812")
    assert sorted(d["status"] for d in docs) == ["current", "superseded"]
    [enc_after] = env.search("Encounter", identifier=f"{ENC_SYSTEM}|ps-2026-000123")
    assert enc_after["period"]["end"].startswith("2026-11-20T14:55:00")
    # three versions: ours, the EHR user's, ours again after re-reading it
    assert enc_after["meta"]["versionId"] == "3"


def test_a_stale_if_match_is_refused_by_the_ehr(env: Env) -> None:
    """The premise, on the real server: a PUT with an old version gets 412."""
    env.import_("in-person-session.json")
    env.run("sync")
    [enc] = env.search("Encounter", identifier=f"{ENC_SYSTEM}|ps-2026-000123")
    _edit_in_the_ehr(env, enc)
    resp = requests.put(f"{env.base_url}/Encounter/{enc['id']}", json=enc, timeout=10,
                        headers={"If-Match": 'W/"1"'})
    assert resp.status_code == 412
