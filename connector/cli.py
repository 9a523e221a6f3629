"""The ``peersync`` command line. It calls the same functions as the web app.

Exit codes: 0 success; 1 some records were rejected or did not reach the EHR;
2 bad usage or configuration (click's own usage errors are 2 as well).
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from connector.accounts_cli import token_group, user_group
from connector.audit import KEY_ENV, ensure_key_file
from connector.audit_cli import audit_group
from connector.cli_common import EXIT_CONFIG, EXIT_FAILED, CliError, open_client, open_store, wiring
from connector.config import CONFIG_NAME, Config, home, load_config, valid_source, write_config
from connector.errors import ConfigError, ConnectorError, EhrError
from connector.states import ALL_STATES, WAITING_STATES, JobState

if TYPE_CHECKING:
    from connector.fhir_client import FhirClient
    from connector.store import Store
    from mappings.profile import Profile

__all__ = ["EXIT_CONFIG", "EXIT_FAILED", "CliError", "main"]


def _config() -> Config:
    return wiring().config


def _profile(config: Config | None = None) -> Profile:
    return wiring().profile


def _store(config: Config | None = None) -> Store:
    return open_store()


def _client(config: Config | None = None, profile: Profile | None = None) -> FhirClient:
    return open_client()


@click.group()
@click.option("-v", "--verbose", count=True, help="More log output on stderr (-vv: debug).")
@click.version_option(package_name="peersync")
def main(verbose: int) -> None:
    """PeerSync: document a peer support encounter once; land it in the EHR over FHIR R4."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # urllib3 logs whole URLs (query values included: identifiers, MRNs) at DEBUG;
    # our client logs them redacted instead.
    logging.getLogger("urllib3").setLevel(max(level, logging.INFO))
    from connector.logging_setup import install as redact_logs

    redact_logs()  # library records too: urllib3's "Retrying ... Patient?identifier=..."


@main.command()
@click.option(
    "--ehr-url",
    default="http://127.0.0.1:8090/fhir",
    show_default=True,
    help="The EHR's FHIR base URL.",
)
@click.option(
    "--database-url",
    default="sqlite:///peersync.db",
    show_default=True,
    help="SQLAlchemy URL (relative SQLite paths are relative to PEERSYNC_HOME).",
)
@click.option(
    "--source",
    "default_source",
    default="peer-tool",
    show_default=True,
    help="Default source name for imports.",
)
@click.option(
    "--profile",
    default="default",
    show_default=True,
    help='Agency profile: "default" or a path to a TOML file.',
)
@click.option(
    "--preset",
    default="generic",
    show_default=True,
    help="What the EHR's write API takes: generic | us-core-notes | epic | oracle-health "
         "(or a path to a preset file); `peersync config check` prints the write plan.",
)
@click.option("--force", is_flag=True, help="Replace an existing peersync.toml.")
def init(ehr_url: str, database_url: str, default_source: str, profile: str, preset: str,
         force: bool) -> None:
    """Write peersync.toml and create the database in $PEERSYNC_HOME (default: here)."""
    folder = home()
    if not valid_source(default_source):
        raise CliError("--source: must be 1-64 characters of A-Z a-z 0-9 . _ -")
    try:
        path = write_config(
            folder,
            base_url=ehr_url,
            database_url=database_url,
            default_source=default_source,
            profile=profile,
            preset=preset,
            overwrite=force,
        )
    except ConfigError as exc:
        raise CliError(str(exc)) from None
    config = load_config(path)
    wiring()
    from connector.store import Store

    store = Store.from_url(config.database_url)
    store.migrate()
    store.close()
    click.echo(f"wrote {path}")
    click.echo(f"database ready: {_safe_url(config.database_url)}")
    key_file = ensure_key_file(folder, config.audit_key_file)
    click.echo(f"audit key: {key_file} (mode 0600; keep a copy away from the database)"
               + (f"; {KEY_ENV} is set and takes precedence" if os.environ.get(KEY_ENV) else ""))


main.add_command(audit_group)
main.add_command(user_group)
main.add_command(token_group)


@main.group("config")
def config_group() -> None:
    """Check or show the deployment config."""


@config_group.command("check")
def config_check() -> None:
    """Check the config and profile, the EHR's capabilities, auth, and the agency's
    Organization and Device (matched or created once). Exit 1 when a check fails."""
    from connector.setup_check import check_setup

    wired = wiring()
    store = open_store()
    report = check_setup(wired.config, profile=wired.profile, store=store,
                         client_factory=wired.client, wiring=wired)
    for line in report.lines():
        click.echo(line)
    sys.exit(report.exit_code)


@config_group.command("show")
def config_show() -> None:
    """Print the effective config (environment overrides applied; secrets never shown)."""
    from connector.setup_check import render_config

    click.echo(render_config(_config()))


@main.group()
def db() -> None:
    """Database maintenance."""


@db.command("upgrade")
def db_upgrade() -> None:
    """Apply pending schema migrations."""
    config = _config()
    from connector.store import Store

    store = Store.from_url(config.database_url)
    try:
        store.migrate()
    finally:
        store.close()
    click.echo("database schema is up to date")


def _accepted(results: Iterator[Any], counts: dict[str, int]) -> Iterator[Any]:
    from connector.intake import Accepted

    for result in results:
        if isinstance(result, Accepted):
            counts["accepted"] += 1
            yield result.record
        else:
            counts["rejected"] += 1
            for line in result.error.lines():
                click.echo(line, err=True)


@main.command("import")
@click.option("--source", help="Source name of these records (default: config default_source).")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["json", "jsonl", "csv"]),
    help="Force the file format (default: from the extension and content).",
)
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
def import_(source: str | None, fmt: str | None, files: tuple[Path, ...]) -> None:
    """Validate records and queue them for the EHR. Prints counts and every error."""
    from connector.intake import iter_records

    config = _config()
    source = source or config.default_source
    if not valid_source(source):
        raise CliError("--source: must be 1-64 characters of A-Z a-z 0-9 . _ -")
    store = _store(config)
    counts = {"accepted": 0, "rejected": 0}
    new = unchanged = 0
    for file in files:
        if not file.exists():
            raise CliError(f"{file}: no such file")
        results = iter_records(file, source=source, format=fmt)
        summary = store.add_records(_accepted(results, counts), actor=f"import:{source}")
        new += summary.new_versions
        unchanged += summary.unchanged
        for refused in summary.refused:  # valid, but the database would not store it
            counts["accepted"] -= 1
            counts["rejected"] += 1
            click.echo(str(refused), err=True)
    click.echo(
        f"source {source}: {counts['accepted']} accepted ({new} new, {unchanged} unchanged), "
        f"{counts['rejected']} rejected"
    )
    if counts["rejected"]:
        sys.exit(EXIT_FAILED)


@main.command("map")
@click.option("--source", help="Source name of these records (default: config default_source).")
@click.argument(
    "files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
def map_(source: str | None, files: tuple[Path, ...]) -> None:
    """Print the FHIR transaction Bundle(s) the records would become. No network, no store.

    Patients, practitioners and the agency appear as conditional references
    (the sync resolves them by search first); records that would wait are
    listed with their states on stderr.
    """
    from connector.intake import Accepted, iter_records
    from connector.store import utcnow
    from connector.sync import EmptyLedger, Refs, bundle_for, plan_record
    from mappings.resources import mrn_identifier, search_token, staff_identifier

    config = _config()
    profile = _profile(config)
    plan = wiring().plan()
    source = source or config.default_source
    org, dev = profile.organization, profile.device
    now = utcnow()
    click.echo(
        "# patients, practitioners, the Organization and Device are conditional "
        "references here; `peersync sync` resolves them to literal ids first",
        err=True,
    )
    left_out = failed = 0
    pending: list[Any] = []
    seen_keys: set[tuple[str, str]] = set()

    def flush() -> None:
        if pending:
            click.echo(
                json.dumps(
                    bundle_for(pending, plan),
                    indent=2,
                    ensure_ascii=False,
                )
            )
            pending.clear()
            seen_keys.clear()

    for file in files:
        for result in iter_records(file, source=source):
            if not isinstance(result, Accepted):
                failed += 1
                for line in result.error.lines():
                    click.echo(line, err=True)
                continue
            record = result.record
            wait = _would_wait(record, profile)
            if wait:
                left_out += 1
                click.echo(f"left out: {record.source}/{record.id}: {wait}", err=True)
                continue
            if record.participant.mrn:
                patient = "Patient?identifier=" + search_token(
                    *mrn_identifier(record.participant.mrn, profile)
                )
            else:
                patient = "Patient?identifier=(created from participant)"
            refs = Refs(
                patient=patient,
                practitioner="Practitioner?identifier="
                + search_token(*staff_identifier(record.specialist, profile)),
                organization="Organization?identifier=" + search_token(org.system, org.value)
                if plan.action("Organization") != "none" else "",
                device="Device?identifier=" + search_token(dev.system, dev.value)
                if plan.action("Device") != "none" else "",
                encounter="Encounter?subject=(the EHR's own, matched by time)"
                if plan.encounter == "ehr" else "",
            )
            writes = plan_record(
                record,
                refs,
                key=f"{file}:{result.position}",
                profile=profile,
                plan=plan,
                ledger=EmptyLedger(),
                recorded=now,
            ).writes
            if record.key in seen_keys or (
                len(pending) + len(writes) > config.ehr.max_bundle_entries
            ):
                flush()  # never two versions of one record in one bundle
            pending.extend(writes)
            seen_keys.add(record.key)
    flush()
    click.echo(f"# {left_out} record(s) left out (would wait), {failed} rejected", err=True)
    if failed:
        sys.exit(EXIT_FAILED)


def _would_wait(record: Any, profile: Profile) -> str | None:
    """Why `map` leaves a record out: the sync's own wait rule, plus what needs the EHR."""
    from connector.sync import wait_rule

    consent = record.consent.status if record.part2 and record.consent else None
    wait = wait_rule(record, consent=consent, sent_before=False)
    if wait is not None:
        return f"{wait.state.value} ({wait.reason})"
    if not record.participant.mrn and not profile.create_patients:
        return f"{JobState.WAITING_PATIENT.value} (no-mrn)"
    return None


@main.command()
@click.option(
    "--max-wait",
    type=float,
    default=None,
    help="Seconds to wait for scheduled retries (default: sync.max_wait_s, 120).",
)
def sync(max_wait: float | None) -> None:
    """Send every pending record to the EHR and print a summary."""
    wired = wiring()
    config = wired.config
    store = open_store()
    bound = config.sync.max_wait_s if max_wait is None else max_wait
    with open_client() as client:
        engine = _engine(store, client, f"sync:{os.getpid()}")
        click.echo(
            f"syncing to {config.ehr.base_url} (preset {engine.plan.preset.name}, "
            f"{engine.plan.mode} mode); waiting up to {bound:.0f} s for scheduled retries"
        )
        try:
            summary = engine.run(max_wait_s=bound)
        except ConnectorError as exc:
            raise click.ClickException(f"sync stopped: {exc}") from None
    states = ", ".join(f"{n} {s}" for s, n in sorted(summary.states.items())) or "nothing due"
    click.echo(f"{summary.claimed} record(s) processed in {summary.bundles} bundle(s): {states}")
    for line in summary.errors[:50]:
        click.echo(f"  {line}", err=True)
    counts = store.counts_by_state()
    click.echo("now: " + ", ".join(f"{counts[s]} {s}" for s in ALL_STATES if counts[s]))
    ok_states = {JobState.SYNCED.value} | {s.value for s in WAITING_STATES}
    if any(state not in ok_states for state in summary.states):
        sys.exit(EXIT_FAILED)


def _engine(store: Store, client: FhirClient, worker: str) -> Any:
    try:
        return wiring().engine(store, client, worker=worker)
    except ConnectorError as exc:  # mode = "auto": the CapabilityStatement could not be read
        raise click.ClickException(f"cannot resolve the write plan: {exc}") from None


@main.command()
@click.option("--poll", default=2.0, show_default=True, type=float,
              help="Seconds between looks at the queue when it is idle.")
@click.option("--rescan", default=300.0, show_default=True, type=float,
              help="Seconds between re-resolving waiting records against the EHR.")
def worker(poll: float, rescan: float) -> None:
    """Run continuously (several may run at once); SIGTERM or Ctrl-C stops it gracefully.

    The batch in hand is finished first; a worker that dies instead leaves
    leased jobs that another worker takes again when their lease expires.
    """
    import signal
    import threading
    import time

    config = _config()
    store = open_store()
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        click.echo(f"signal {signum}: finishing the batch in hand, then stopping", err=True)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    name = f"worker:{os.uname().nodename}:{os.getpid()}"
    last_scan = float("-inf")
    totals: dict[str, int] = {}
    with open_client() as client:
        engine = _engine(store, client, name)
        click.echo(f"{name}: syncing to {config.ehr.base_url} "
                   f"(preset {engine.plan.preset.name}, {engine.plan.mode} mode)")
        while not stop.is_set():
            rescan_now = time.monotonic() - last_scan >= rescan
            if rescan_now:
                last_scan = time.monotonic()
            try:
                summary = engine.run(max_wait_s=0, stop=stop, include_waiting=rescan_now)
            except ConnectorError as exc:
                click.echo(f"{name}: {exc}; retrying in {poll:.0f} s", err=True)
                stop.wait(poll)
                continue
            for state, n in summary.states.items():
                totals[state] = totals.get(state, 0) + n
            if not summary.claimed:
                stop.wait(poll)
    click.echo(f"{name}: stopped; " + (", ".join(f"{n} {s}" for s, n in sorted(totals.items()))
                                       or "nothing processed"))


@main.command()
@click.argument("job_ids", nargs=-1, type=int)
@click.option("--all-failed", is_flag=True, help="Re-queue every record that needs attention.")
def retry(job_ids: tuple[int, ...], all_failed: bool) -> None:
    """Re-queue records that need attention (by job id, as `peersync status` and the app show)."""
    if bool(job_ids) == all_failed:
        raise click.UsageError("give job ids or --all-failed (not both)")
    store = _store(_config())
    count = store.requeue(None if all_failed else list(job_ids), actor="cli:retry")
    click.echo(f"{count} record(s) re-queued")
    if job_ids and count < len(job_ids):
        click.echo("some ids were not in needs_attention and were left as they are", err=True)
        sys.exit(EXIT_FAILED)


@main.group()
def link() -> None:
    """Link a participant, a specialist or a session to the EHR's own Patient, Practitioner
    or Encounter."""


@link.command("patient")
@click.argument("participant_id")
@click.argument("patient_id")
@click.option("--source", help="The participant's source (default: config default_source).")
def link_patient(participant_id: str, patient_id: str, source: str | None) -> None:
    """Link PARTICIPANT_ID (the peer tool's id) to the EHR's Patient/PATIENT_ID."""
    config = _config()
    source = source or config.default_source
    _link(config, "patient", f"{source}|{participant_id}", "Patient", patient_id,
          JobState.WAITING_PATIENT, source=source, participant_id=participant_id)


@link.command("staff")
@click.argument("specialist_id")
@click.argument("practitioner_id")
def link_staff(specialist_id: str, practitioner_id: str) -> None:
    """Link SPECIALIST_ID (the agency's staff id) to the EHR's Practitioner/PRACTITIONER_ID."""
    _link(_config(), "practitioner", specialist_id, "Practitioner", practitioner_id,
          JobState.WAITING_STAFF, specialist_id=specialist_id)


@link.command("encounter")
@click.argument("record_id")
@click.argument("encounter_id")
@click.option("--source", help="The record's source (default: config default_source).")
def link_encounter(record_id: str, encounter_id: str, source: str | None) -> None:
    """Attach RECORD_ID's note to the EHR's own Encounter/ENCOUNTER_ID (EHRs that own them)."""
    config = _config()
    source = source or config.default_source
    _link(config, "encounter", f"{source}|{record_id}", "Encounter", encounter_id,
          JobState.WAITING_ENCOUNTER, source=source, record_id=record_id)


def _link(config: Config, kind: str, key: str, resource_type: str, ehr_id: str,
          state: JobState, **who: str) -> None:
    from connector.actions import link

    store = _store(config)
    with _client(config) as client:
        try:  # the same function as the web app's matching page
            linked = link(store, client, kind, key, resource_type, ehr_id, state,
                          actor="cli:link", **who)
        except EhrError as exc:
            raise click.ClickException(f"{resource_type}/{ehr_id}: {exc}") from None
    click.echo(f"linked to {linked.reference}; {linked.released} waiting record(s) released "
               "(run `peersync sync`)")


@main.command()
@click.argument("participant_id")
@click.argument("status", type=click.Choice(["active", "revoked"]))
@click.option("--source", help="The participant's source (default: config default_source).")
@click.option("--consent-id", help="The source's id of the consent document.")
def consent(participant_id: str, status: str, source: str | None,
            consent_id: str | None) -> None:
    """Record a participant's 42 CFR Part 2 consent: active releases, revoked stops."""
    config = _config()
    source = source or config.default_source
    released = _store(config).set_consent(source=source, participant_id=participant_id,
                                          status=status, actor="cli:consent",
                                          consent_id=consent_id)
    if status == "active":
        click.echo(f"consent active; {released} waiting record(s) released (run `peersync sync`)")
    else:
        click.echo("consent revoked; no further Part 2 records of this participant will be sent")


@main.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON object: state -> count.")
def status(as_json: bool) -> None:
    """Count records by sync state."""
    config = _config()
    store = _store(config)
    counts = store.counts_by_state()
    if as_json:
        click.echo(json.dumps(counts))
        return
    width = max(len(s) for s in ALL_STATES)
    for state in ALL_STATES:
        click.echo(f"{state:<{width}}  {counts[state]}")
    from connector.gate import outage_line

    line = outage_line(store)
    if line:
        click.echo(line)


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8080, show_default=True, type=int)
@click.option("--workers", type=int, default=None,
              help="gunicorn worker processes  [default: [web] workers, else 2]")
@click.option("--behind-proxy", is_flag=True,
              help="A TLS-terminating proxy forwards to this server: trust one hop of "
                   "X-Forwarded-Proto/-For/-Host (as [web] trusted_proxies = 1).")
@click.option("--insecure-http", is_flag=True,
              help="Session cookies without the Secure flag, for plain HTTP on loopback "
                   "(the local demo only).")
def serve(host: str, port: int, workers: int | None, behind_proxy: bool,
          insecure_http: bool) -> None:
    """Serve the admin web app (gunicorn). Put a TLS-terminating proxy in front."""
    from connector.serve import ServeUsageError, bind_address, resolve_options, run

    config = _config()
    try:
        options = resolve_options(config.web, host=host, port=port, workers=workers,
                                  behind_proxy=behind_proxy, insecure_http=insecure_http)
    except ServeUsageError as exc:
        raise CliError(str(exc)) from None  # exit 2
    if options.insecure_http:
        click.echo(f"PeerSync admin: http://{bind_address(host, port)}/login (plain HTTP)")
    else:
        click.echo(f"PeerSync admin on {bind_address(host, port)}, {options.workers} workers; "
                   "cookies are Secure: open it through your HTTPS proxy")
    run(config, options)


@main.command(hidden=True)
@click.option("--port", default=8090, type=int, show_default=True)
@click.option("--web-port", default=8080, type=int, show_default=True)
@click.option("--no-serve", is_flag=True, help="Stop after the sync (for scripts and tests).")
def demo(port: int, web_port: int, no_serve: bool) -> None:
    """Start a local demo EHR, seed it, import the samples, sync, and serve the admin app."""
    from connector.demo import run_demo

    try:
        run_demo(home(), ehr_port=port, web_port=web_port, serve=not no_serve)
    except (ConnectorError, RuntimeError) as exc:
        raise click.ClickException(str(exc)) from None


def _safe_url(url: str) -> str:
    """A database URL without its password, for printing."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - printing only
        return "(database URL)"


__all__ = ["main", "CONFIG_NAME", "EhrError"]
