"""``peersync sync``, ``worker``, ``retry``, ``link`` and ``consent``: sending records to the
EHR and releasing the ones that wait. Registered on ``main`` by connector/cli.py."""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Any

import click

from connector.cli_common import EXIT_FAILED, open_client, open_store, wiring
from connector.errors import ConnectorError, EhrError
from connector.states import ALL_STATES, RESOLVED_BY_SYNC, WAITING_STATES, JobState

if TYPE_CHECKING:
    from connector.fhir_client import FhirClient
    from connector.store import Store


@click.command("sync")
@click.option(
    "--max-wait",
    type=float,
    default=None,
    help="Seconds to wait for scheduled retries (default: sync.max_wait_s, 120).",
)
def sync(max_wait: float | None) -> None:
    """Send every pending record to the EHR and print a summary."""
    from connector.progress import Progress

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
        with Progress("sync") as bar:  # on a terminal only: done of due, rate, ETA
            progress: dict[str, Any] = {}
            if bar.active:
                bar.total = _due(store)
                progress["on_progress"] = lambda so_far: bar.update(so_far.claimed)
            try:
                summary = engine.run(max_wait_s=bound, **progress)
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


def _due(store: Store) -> int:
    """What this sync will claim, as far as it can be known now: the due jobs, and the
    waiting ones it re-resolves once (retries that fall due meanwhile add to it)."""
    counts = store.counts_by_state()
    return store.count_due() + sum(counts[state.value] for state in RESOLVED_BY_SYNC)


def _engine(store: Store, client: FhirClient, worker: str) -> Any:
    try:
        return wiring().engine(store, client, worker=worker)
    except ConnectorError as exc:  # mode = "auto": the CapabilityStatement could not be read
        raise click.ClickException(f"cannot resolve the write plan: {exc}") from None


@click.command("worker")
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

    config = wiring().config
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
        # A long-running worker loads the mapping (the FHIR models, about 2 s of imports)
        # now, not while the first records it claims wait.
        import mappings.notes  # noqa: F401
        import mappings.resources  # noqa: F401

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


@click.command("retry")
@click.argument("job_ids", nargs=-1, type=int)
@click.option("--all-failed", is_flag=True, help="Re-queue every record that needs attention.")
def retry(job_ids: tuple[int, ...], all_failed: bool) -> None:
    """Re-queue records that need attention (by job id, as `peersync status` and the app show)."""
    if bool(job_ids) == all_failed:
        raise click.UsageError("give job ids or --all-failed (not both)")
    store = open_store()
    count = store.requeue(None if all_failed else list(job_ids), actor="cli:retry")
    click.echo(f"{count} record(s) re-queued")
    if job_ids and count < len(job_ids):
        click.echo("some ids were not in needs_attention and were left as they are", err=True)
        sys.exit(EXIT_FAILED)


@click.group("link")
def link() -> None:
    """Link a participant, a specialist or a session to the EHR's own Patient, Practitioner
    or Encounter."""


# One row per `peersync link` command: its name, its two arguments (the peer tool's id,
# the EHR's id), the kind of link, the EHR resource, the waiting state the link releases,
# the --source help (None: the id is not per source), and the command's help.
_LINKS: tuple[tuple[str, str, str, str, str, JobState, str | None, str], ...] = (
    ("patient", "participant_id", "patient_id", "patient", "Patient", JobState.WAITING_PATIENT,
     "The participant's source (default: config default_source).",
     "Link PARTICIPANT_ID (the peer tool's id) to the EHR's Patient/PATIENT_ID."),
    ("staff", "specialist_id", "practitioner_id", "practitioner", "Practitioner",
     JobState.WAITING_STAFF, None,
     "Link SPECIALIST_ID (the agency's staff id) to the EHR's Practitioner/PRACTITIONER_ID."),
    ("encounter", "record_id", "encounter_id", "encounter", "Encounter",
     JobState.WAITING_ENCOUNTER, "The record's source (default: config default_source).",
     "Attach RECORD_ID's note to the EHR's own Encounter/ENCOUNTER_ID (EHRs that own them)."),
)


def _link_command(name: str, id_arg: str, ehr_arg: str, kind: str, resource_type: str,
                  state: JobState, source_help: str | None, doc: str) -> None:
    """Register ``peersync link NAME ID_ARG EHR_ARG [--source]`` on the ``link`` group."""

    def command(**params: Any) -> None:
        config = wiring().config
        own_id: str = params[id_arg]
        if source_help is None:
            key, who = own_id, {id_arg: own_id}
        else:
            source: str = params["source"] or config.default_source
            key, who = f"{source}|{own_id}", {"source": source, id_arg: own_id}
        _link(kind, key, resource_type, params[ehr_arg], state, **who)

    command.__doc__ = doc
    if source_help is not None:
        command = click.option("--source", help=source_help)(command)
    command = click.argument(ehr_arg)(command)
    command = click.argument(id_arg)(command)
    link.command(name)(command)


for _row in _LINKS:
    _link_command(*_row)


def _link(kind: str, key: str, resource_type: str, ehr_id: str, state: JobState,
          **who: str) -> None:
    from connector.actions import link as link_action

    store = open_store()
    with open_client() as client:
        try:  # the same function as the web app's matching page
            linked = link_action(store, client, kind, key, resource_type, ehr_id, state,
                                 actor="cli:link", **who)
        except EhrError as exc:
            raise click.ClickException(f"{resource_type}/{ehr_id}: {exc}") from None
    click.echo(f"linked to {linked.reference}; {linked.released} waiting record(s) released "
               "(run `peersync sync`)")


@click.command("consent")
@click.argument("participant_id")
@click.argument("status", type=click.Choice(["active", "revoked"]))
@click.option("--source", help="The participant's source (default: config default_source).")
@click.option("--consent-id", help="The source's id of the consent document.")
def consent(participant_id: str, status: str, source: str | None,
            consent_id: str | None) -> None:
    """Record a participant's 42 CFR Part 2 consent: active releases, revoked stops."""
    config = wiring().config
    source = source or config.default_source
    released = open_store().set_consent(source=source, participant_id=participant_id,
                                        status=status, actor="cli:consent",
                                        consent_id=consent_id)
    if status == "active":
        click.echo(f"consent active; {released} waiting record(s) released (run `peersync sync`)")
    else:
        click.echo("consent revoked; no further Part 2 records of this participant will be sent")


COMMANDS = (sync, worker, retry, link, consent)
