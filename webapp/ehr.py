"""The app's way to the EHR: a client per use, one sync pass after an action, a reachability check.

The worker (``peersync worker``) sends records in the background. After a
form is submitted, a failed record retried or a participant linked, the app
also runs *one* sync pass itself (``SYNC_ON_ACTION``, on by default), so the
person who acted sees the outcome at once; the claim is atomic, so this never
races a worker.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from flask import current_app, flash

from connector.errors import ConfigError, ConnectorError, EhrAuthError, EhrError
from webapp import get_store, peersync_config


def ehr_client(*, timeout_s: float | None = None) -> Any:
    """A FHIR client for the configured EHR; close it (``with``). Raises ConfigError."""
    from webapp import peersync_wiring

    return peersync_wiring().client(timeout_s=timeout_s)


def sync_pass(actor: str) -> None:
    """One sync pass (one batch of due records) after a user's action, if enabled.

    If the EHR cannot be reached, the user is told (flashed) that the worker will
    send it later; nothing is lost either way.
    """
    if not current_app.config.get("SYNC_ON_ACTION"):
        return
    import uuid

    from connector.sync import SyncSummary
    from webapp import peersync_wiring

    try:
        with ehr_client() as client:
            engine = peersync_wiring().engine(get_store(), client, worker=actor)
            engine.run_once(uuid.uuid4().hex, SyncSummary(), include_waiting=False)
    except (ConfigError, ConnectorError) as exc:
        current_app.logger.warning("sync after an action did not run: %s", exc)
        flash("The EHR could not be reached now; the worker will send it.", "error")


@dataclass(frozen=True, slots=True)
class EhrStatus:
    reachable: bool
    detail: str
    checked_at: float


def ehr_status() -> EhrStatus:
    """Is the EHR answering ``GET [base]/metadata`` (a CapabilityStatement)? Cached briefly."""
    cache = current_app.extensions.setdefault("peersync_ehr_status", {})
    ttl = float(current_app.config["EHR_CHECK_TTL_S"])
    cached: EhrStatus | None = cache.get("status")
    if cached is not None and time.monotonic() - cached.checked_at < ttl:
        return cached
    from connector.fhir_client import FhirClient

    config = peersync_config()
    timeout = float(current_app.config["EHR_CHECK_TIMEOUT_S"])
    started = time.perf_counter()
    try:
        ca_file = str(config.folder / config.ehr.ca_file) if config.ehr.ca_file else None
        with FhirClient(base_url=config.ehr.base_url, timeout_s=timeout,
                        ca_file=ca_file, connect_retries=0) as client:
            capability = client.capability_statement()
    except EhrAuthError:
        status = EhrStatus(True, "answers; its CapabilityStatement needs a token",
                           time.monotonic())
    except (EhrError, ConfigError) as exc:
        status = EhrStatus(False, str(exc)[:200], time.monotonic())
    else:
        software = capability.get("software") or {}
        name = software.get("name") if isinstance(software, dict) else None
        fhir = capability.get("fhirVersion") or "?"
        ms = (time.perf_counter() - started) * 1000
        status = EhrStatus(True, f"CapabilityStatement (FHIR {fhir}"
                           + (f", {str(name)[:40]}" if name else "") + f") in {ms:.0f} ms",
                           time.monotonic())
    cache["status"] = status
    return status
