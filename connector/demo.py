"""`peersync demo`: a local EHR, sample records imported and synced, the admin app served.

The demo EHR is sekmet (see connector.ehr_sandbox) in memory. It is seeded
with the sample participants' Patients first, as an agency's EHR already
holds its patients; the participant without an MRN is left to wait.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
from pathlib import Path

import click

from connector.audit import ensure_key_file, load_audit_key
from connector.config import CONFIG_NAME, load_config, write_config
from connector.ehr_sandbox import SekmetServer
from connector.fhir_client import FhirClient
from connector.intake import Accepted, iter_records
from connector.store import Store
from mappings.profile import Profile, load_profile

SAMPLES = Path(__file__).resolve().parent / "samples"
SAMPLE_FILES = (
    "in-person-session.json",
    "batch.jsonl",
    "export.csv",
    "part2-without-consent.json",
    "amendment.json",
)
DEMO_MARK = "# peersync demo home"


def sample_paths() -> list[Path]:
    return [SAMPLES / name for name in SAMPLE_FILES]


def seed_patients(client: FhirClient, profile: Profile, files: list[Path]) -> int:
    """Create (once, by MRN) a Patient for each sample participant that has an MRN."""
    from mappings.resources import mrn_identifier, search_token

    created = 0
    seen: set[str] = set()
    for file in files:
        for result in iter_records(file, source="seed"):
            if not isinstance(result, Accepted):
                continue
            participant = result.record.participant
            if not participant.mrn or participant.mrn in seen:
                continue
            seen.add(participant.mrn)
            system, value = mrn_identifier(participant.mrn, profile)
            patient: dict[str, object] = {
                "resourceType": "Patient",
                "identifier": [{"system": system, "value": value}],
                "gender": "unknown",
            }
            if participant.family or participant.given:
                name: dict[str, object] = {}
                if participant.family:
                    name["family"] = participant.family
                if participant.given:
                    name["given"] = [participant.given]
                patient["name"] = [name]
            if participant.birth_date:
                patient["birthDate"] = participant.birth_date.isoformat()
            client.create(patient, if_none_exist={"identifier": search_token(system, value)})
            created += 1
    return created


def run_demo(folder: Path, *, ehr_port: int, web_port: int, serve: bool) -> None:
    from connector.sync import SyncEngine

    folder.mkdir(parents=True, exist_ok=True)
    marker = folder / ".peersync-demo"
    if (folder / CONFIG_NAME).exists() and not marker.exists():
        raise RuntimeError(
            f"{folder} holds a PeerSync config that the demo did not write; "
            "point PEERSYNC_HOME at an empty folder"
        )
    for name in (CONFIG_NAME, "peersync.db", "peersync.db-wal", "peersync.db-shm"):
        (folder / name).unlink(missing_ok=True)
    shutil.rmtree(folder / "ehr", ignore_errors=True)
    marker.write_text(DEMO_MARK + "\n", encoding="utf-8")

    ehr = SekmetServer(folder / "ehr", port=ehr_port)
    click.echo(f"starting the demo EHR (sekmet) on {ehr.base_url} ...")
    ehr.start()
    # SIGTERM must run the `finally` below too, or the EHR would outlive the demo.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        path = write_config(folder, base_url=ehr.base_url, default_source="peer-tool")
        config = load_config(path)
        profile = load_profile(config.profile_path())
        # A real audit key, as `peersync init` writes it (kept across demo runs): a chain
        # keyed with the public development key fails `peersync audit verify`.
        ensure_key_file(folder, config.audit_key_file)
        key = load_audit_key(config.folder, config.audit_key_file, os.environ)
        store = Store.from_url(config.database_url, audit_key=key)
        from connector.review import ReviewRule

        store.review_rule = ReviewRule.of(profile)
        store.migrate()
        from connector.accounts import demo_accounts

        logins = demo_accounts(store)
        with FhirClient(base_url=config.ehr.base_url, timeout_s=config.ehr.timeout_s) as client:
            seeded = seed_patients(client, profile, sample_paths())
            click.echo(f"seeded the EHR with {seeded} sample patients (matched by MRN)")
            accepted = rejected = 0
            for file in sample_paths():
                results = list(iter_records(file, source=config.default_source))
                good = [r.record for r in results if isinstance(r, Accepted)]
                accepted += len(good)
                rejected += len(results) - len(good)
                store.add_records(good, actor=f"import:{config.default_source}")
            click.echo(f"imported {accepted} sample records ({rejected} rejected)")
            summary = SyncEngine(
                store=store, client=client, profile=profile, config=config, worker="demo"
            ).run(max_wait_s=10)
        click.echo(f"synced: {dict(summary.states)}")
        counts = store.counts_by_state()
        click.echo("status: " + ", ".join(f"{n} {s}" for s, n in counts.items() if n))
        click.echo(f"EHR: {ehr.base_url}  (try {ehr.base_url}/Encounter)")
        click.echo(f"log in at http://127.0.0.1:{web_port}/login as:")
        for name, role, password in logins:
            click.echo(f"  {name} / {password}   ({role})")
        if serve:
            from connector.serve import serve_in_subprocess

            click.echo(f"PeerSync admin: http://127.0.0.1:{web_port}/   (Ctrl-C stops the demo)")
            serve_in_subprocess(folder, port=web_port, insecure_http=True)  # gunicorn, plain HTTP
    finally:
        ehr.stop()
