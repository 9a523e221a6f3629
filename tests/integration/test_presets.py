"""Each EHR preset, end to end, through a strict emulator of that EHR in front of sekmet.

As an agency would: `peersync init --preset NAME`, `config check` (the write plan
is printed), then the contract examples plus an amendment (v2 and v3), a
retraction, a no-show and a Part 2 record with consent, synced while 10 % of the
write answers are dropped after the EHR applied them. Nothing the emulator
refuses may be sent, nothing may end needs_attention or unknown, and duplicates
are counted from the emulator's own record of what it stored (never with the
look-up under test).
"""

from __future__ import annotations

import base64
import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from connector.fhir_client import FhirClient
from mappings.profile import default_profile_path, load_profile
from tests.emulators import EhrEmulator, seed_encounters, seed_practitioners
from tests.integration.conftest import DATA, FIRST_IMPORT, MRN_SYSTEM, SOURCE, Env

pytestmark = pytest.mark.integration

STAFF = [{"id": "S-17", "family": "Kim", "given": "Alex"},
         {"id": "S-22", "family": "Natarajan", "given": "Priya"},
         {"id": "S-31", "family": "Whitfield", "given": "Jo"}]
V3_TEXT = "Met Dana at the library.\nAmended twice: the housing form was sent on Friday."


def _extra_records() -> list[dict[str, Any]]:
    """The second import: amendment v2 and v3, a retraction, a no-show, Part 2 with consent."""
    v2 = json.loads((DATA / "amendment.json").read_text(encoding="utf-8"))
    v3 = json.loads(json.dumps(v2))
    v3["note"].update(version=3, text=V3_TEXT)
    rows = {json.loads(line)["id"]: json.loads(line)
            for line in (DATA / "batch.jsonl").read_text(encoding="utf-8").splitlines() if line}
    retraction = dict(rows["ps-2026-000124"], status="entered_in_error")
    no_show = dict(rows["ps-2026-000124"], id="ps-2026-000130", status="no_show",
                   start="2026-11-23T09:00:00-05:00", end="2026-11-23T09:20:00-05:00")
    no_show["note"] = dict(no_show["note"], id="N-88830", text="Dana did not come; called twice.")
    return [v2, v3, retraction, no_show]


def _seed(upstream: str, preset: str) -> str:
    """The agency's EHR as it stands: patients, practitioners, (its own) encounters, org."""
    from connector.demo import seed_patients

    profile = load_profile(default_profile_path())
    with FhirClient(base_url=upstream, timeout_s=10) as client:
        seed_patients(client, profile, [DATA / n for n in FIRST_IMPORT + ["amendment.json"]])
        patients = {p["identifier"][0]["value"]: p["id"] for p in client.search(
            "Patient", {"_count": "100"})}
        org = client.create({"resourceType": "Organization", "name": "Riverside",
                             "identifier": [{"system": profile.organization.system,
                                             "value": profile.organization.value}]}).id
    seed_practitioners(upstream, profile, STAFF)
    if preset in ("epic", "oracle-health"):
        # each session's own Encounter, five minutes either side (the front desk's times)
        booked = [("MRN-55821", "2026-11-20", "13:55", "15:00", "-05:00"),
                  ("MRN-60210", "2026-11-21", "08:55", "09:30", "-05:00"),
                  ("MRN-61877", "2026-11-21", "17:55", "19:35", "-05:00"),
                  ("MRN-70011", "2026-11-22", "12:55", "13:45", "-06:00"),
                  ("MRN-70012", "2026-11-22", "14:55", "15:35", "-06:00"),
                  ("MRN-70013", "2026-11-22", "09:55", "10:50", "-05:00"),
                  ("MRN-60210", "2026-11-23", "08:55", "09:30", "-05:00")]
        sessions = [(patients[mrn], f"{day}T{start}:00{tz}", f"{day}T{end}:00{tz}")
                    for mrn, day, start, end, tz in booked]
        seed_encounters(upstream, sessions)
    return org


def _text(doc: dict[str, Any]) -> str:
    return base64.b64decode(doc["content"][0]["attachment"]["data"]).decode("utf-8")


def _sync_until_settled(env: Env, rounds: int = 6) -> dict[str, int]:
    counts: dict[str, int] = {}
    for _ in range(rounds):
        env.run("sync", "--max-wait", "20", expect=None)
        counts = env.status()
        if not (counts.get("unknown") or counts.get("retry_scheduled") or counts.get("pending")):
            break
    return counts


@pytest.mark.parametrize("preset", ["generic", "us-core-notes", "epic", "oracle-health"])
def test_preset_lands_every_note_exactly_once_through_its_emulator(
        preset: str, tmp_path: Path, sekmet: Any, database_url: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    org_id = _seed(sekmet.base_url, preset)
    rules = preset
    # 10 % of write answers lost after the EHR applied them (PEERSYNC_DROP/_SEED to vary)
    drop = float(os.environ.get("PEERSYNC_DROP", "0.1"))
    with EhrEmulator(sekmet.base_url, rules, drop_rate=drop,
                     seed=int(os.environ.get("PEERSYNC_SEED", "7"))) as emu:
        env = Env(tmp_path / "home", emu.base_url, database_url, monkeypatch,
                  init_args=("--preset", preset))
        env.set_keys("sync", lookup_grace_s=1)
        if preset == "epic":
            env.set_keys("ehr", organization_id=org_id)
        check = env.run("config", "check", expect=None)
        assert check.exit_code == 0, check.output
        assert f"write plan (preset {preset}" in check.output
        env.import_(*FIRST_IMPORT)
        extra = tmp_path / "extra.jsonl"
        extra.write_text("\n".join(json.dumps(r) for r in _extra_records()) + "\n", "utf-8")
        _sync_until_settled(env)
        env.run("import", "--source", SOURCE, str(extra))
        env.run("consent", "P-1007", "active")
        counts = _sync_until_settled(env)

        assert emu.refused == [], emu.refused
        assert not counts.get("needs_attention") and not counts.get("unknown"), counts
        assert not counts.get("retry_scheduled"), counts
        assert emu.dropped > 0  # lost answers were really met
        print(f"{preset}: {emu.dropped} answers dropped; {len(emu.created)} creates; {counts}")
        notes = emu.stored("DocumentReference")
        creates = [c.body for c in emu.created if c.resource_type == "DocumentReference"]

    # 0 duplicates: one create per note version (replace) or per note (amend in place),
    # keyed by what the EHR itself stored: the patient and the session's start.
    per_session = Counter((b["subject"]["reference"], b["context"]["period"]["start"])
                          for b in creates)
    amend_in_place = preset in ("epic", "oracle-health")
    dana = next(k for k in per_session if k[1].startswith("2026-11-20T14:00"))
    assert per_session[dana] == (1 if amend_in_place else 3), per_session
    assert all(n == 1 for k, n in per_session.items() if k != dana), per_session

    by_session: dict[str, list[dict[str, Any]]] = {}
    for doc in notes:
        by_session.setdefault(doc["context"]["period"]["start"][:16], []).append(doc)
    # each sent note current with its latest text; the retracted one no longer current
    current = {k: [d for d in v if d["status"] == "current"] for k, v in by_session.items()}
    assert len(current["2026-11-20T14:00"]) == 1
    assert _text(current["2026-11-20T14:00"][0]).startswith(V3_TEXT)
    assert current["2026-11-21T09:00"] == []  # retracted
    assert all(d["status"] == "entered-in-error" for d in by_session["2026-11-21T09:00"])
    assert len(current["2026-11-23T09:00"]) == 1  # the no-show's note
    # the Part 2 notice is in what the EHR kept (labels + content[1], or inside content[0])
    notice = load_profile(default_profile_path()).part2_notice.strip()[:60]
    for start in ("2026-11-21T18:00", "2026-11-22T10:00"):
        (doc,) = current[start]
        kept = [base64.b64decode(c["attachment"]["data"]).decode() for c in doc["content"]]
        assert any(notice in text for text in kept), preset
    status = env.run("status", "--json").stdout
    assert json.loads(status).get("synced", 0) >= 9


def test_no_conditional_sends_no_conditional_request(
        tmp_path: Path, sekmet: Any, database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """`conditional = false`: not one conditional request of any kind, in single mode."""
    from connector.demo import seed_patients

    with FhirClient(base_url=sekmet.base_url, timeout_s=10) as client:
        seed_patients(client, load_profile(default_profile_path()),
                      [DATA / n for n in FIRST_IMPORT])
    with EhrEmulator(sekmet.base_url, "no-conditional") as emu:
        env = Env(tmp_path / "home", emu.base_url, database_url, monkeypatch)
        env.set_keys("ehr", mode="single", conditional=False)
        env.run("config", "check")
        env.import_(*FIRST_IMPORT)
        env.run("sync", "--max-wait", "5", expect=None)
        assert emu.refused == [], emu.refused
        counts = env.status()
        assert counts.get("synced") == 5 and not counts.get("needs_attention"), counts
        notes = Counter(i["value"] for d in emu.stored("DocumentReference")
                        for i in d.get("identifier", []) if ".v" in i["value"])
        assert notes and all(n == 1 for n in notes.values()), notes
        assert {p["identifier"][0]["system"] for p in emu.stored("Patient")} <= {MRN_SYSTEM}
