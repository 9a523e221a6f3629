"""The ``peersync`` command line. It calls the same functions as the web app.

Exit codes: 0 success; 1 some records were rejected or did not reach the EHR;
2 bad usage or configuration (click's own usage errors are 2 as well).

``main`` and the record commands (import, map, status) live here, with serve and
demo; the command groups come from their own modules, each imported when one of
its commands is looked up (LAZY_COMMANDS): connector/cli_setup.py (init, config,
db), connector/cli_sync.py (sync, worker, retry, link, consent),
connector/audit_cli.py, connector/accounts_cli.py and connector/review_cli.py.
"""

from __future__ import annotations

import importlib
import json
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, cast

import click

from connector.cli_common import EXIT_CONFIG, EXIT_FAILED, CliError, open_store, wiring
from connector.config import CONFIG_NAME, home, valid_source
from connector.errors import ConnectorError, EhrError
from connector.states import ALL_STATES, JobState

if TYPE_CHECKING:
    from connector.progress import Progress
    from mappings.profile import Profile

__all__ = ["CONFIG_NAME", "EXIT_CONFIG", "EXIT_FAILED", "CliError", "EhrError", "main"]


# The command groups of their own modules, each imported when one of its commands is
# looked up (run, or listed by --help): `peersync status` imports none of them.
LAZY_COMMANDS = {
    "init": "connector.cli_setup:init",
    "config": "connector.cli_setup:config_group",
    "db": "connector.cli_setup:db",
    "sync": "connector.cli_sync:sync",
    "worker": "connector.cli_sync:worker",
    "retry": "connector.cli_sync:retry",
    "link": "connector.cli_sync:link",
    "consent": "connector.cli_sync:consent",
    "audit": "connector.audit_cli:audit_group",
    "user": "connector.accounts_cli:user_group",
    "token": "connector.accounts_cli:token_group",
    "review": "connector.review_cli:review_group",
}


class _Commands(dict[str, click.Command]):
    """A group's commands; one of LAZY_COMMANDS is imported on its first look-up."""

    def __missing__(self, name: str) -> click.Command:
        if name not in LAZY_COMMANDS:
            raise KeyError(name)
        module, attribute = LAZY_COMMANDS[name].split(":")
        command: click.Command = getattr(importlib.import_module(module), attribute)
        self[name] = command
        return command


class _LazyGroup(click.Group):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.commands = _Commands(self.commands)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*self.commands, *LAZY_COMMANDS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        try:
            return self.commands[cmd_name]
        except KeyError:
            return None


@click.group(cls=_LazyGroup)
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


def _accepted(results: Iterator[Any], counts: dict[str, int], bar: Progress) -> Iterator[Any]:
    from connector.intake import Accepted

    for result in results:
        bar.advance()
        if isinstance(result, Accepted):
            counts["accepted"] += 1
            yield result.record
        else:
            counts["rejected"] += 1
            bar.clear()
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
    from connector.progress import CountingReader, Progress, file_size

    config = wiring().config
    source = source or config.default_source
    if not valid_source(source):
        raise CliError("--source: must be 1-64 characters of A-Z a-z 0-9 . _ -")
    store = open_store()
    counts = {"accepted": 0, "rejected": 0}
    new = unchanged = 0
    with Progress("import") as bar:  # on a terminal only: counts, bytes read, rate, ETA
        if bar.active:
            bar.total_bytes = sum(file_size(file) for file in files)
        for file in files:
            if not file.exists():
                raise CliError(f"{file}: no such file")
            reader = CountingReader(file, bar) if bar.active else None
            try:
                source_file = file if reader is None else cast("IO[bytes]", reader)
                results = iter_records(source_file, source=source, format=fmt)
                summary = store.add_records(_accepted(results, counts, bar),
                                            actor=f"import:{source}")
            finally:
                if reader is not None:
                    reader.close()
            new += summary.new_versions
            unchanged += summary.unchanged
            for refused in summary.refused:  # valid, but the database would not store it
                counts["accepted"] -= 1
                counts["rejected"] += 1
                bar.clear()
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
    from connector.records import Specialist
    from connector.store import utcnow
    from connector.sync import EmptyLedger, Refs, bundle_for, plan_record
    from mappings.resources import mrn_identifier, search_token, staff_identifier

    config = wiring().config
    profile = wiring().profile
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
                authenticator="Practitioner?identifier=" + search_token(*staff_identifier(
                    Specialist(id=record.note.cosigned_by), profile))
                if record.note and record.note.cosigned_by else "",
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
    from connector.review import ReviewRule, carried_cosignature
    from connector.sync import wait_rule

    consent = record.consent.status if record.part2 and record.consent else None
    wait = wait_rule(record, consent=consent, sent_before=False,
                     review=ReviewRule.of(profile),
                     cosigned=carried_cosignature(record) is not None)
    if wait is not None:
        return f"{wait.state.value} ({wait.reason})"
    if not record.participant.mrn and not profile.create_patients:
        return f"{JobState.WAITING_PATIENT.value} (no-mrn)"
    return None


@main.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON object: state -> count.")
def status(as_json: bool) -> None:
    """Count records by sync state."""
    from connector.dashboard_figures import state_counts

    store = open_store()
    counts = state_counts(store)  # from the state index: no pass over the synced jobs
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

    config = wiring().config
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
