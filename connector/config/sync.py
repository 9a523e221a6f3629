"""``[sync]``: leases, retries, and when the EHR gate closes and probes."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from connector.config.base import _fail, _take


@dataclass(frozen=True, slots=True)
class SyncConfig:
    lease_s: float = 30.0
    renew_every_s: float = 10.0
    max_wait_s: float = 120.0  # how long `peersync sync` waits for scheduled retries
    max_attempts: int = 8  # failures that are neither transient nor the EHR's refusal
    # a note the EHR does not show yet (found by marker) is looked for again after this long
    lookup_grace_s: float = 30.0
    # transient failures (unreachable, timeouts, 429, 5xx) are retried until this long
    # after the record's first failure, then it needs attention (gave-up-after-outage)
    give_up_after: float = 259200.0
    retry_base_s: float | None = None  # the backoff's first step (None: connector.retry's 2 s)
    retry_max_s: float | None = None  # the backoff's cap (None: connector.retry's 300 s)
    # the EHR gate (connector.gate): one probe this long after the EHR became
    # unreachable, doubling per failed probe up to probe_max_s
    probe_every_s: float = 5.0
    probe_max_s: float = 60.0
    outage_after_failures: int = 3  # 5xx/timeouts in a row that close the gate
    # an MRN's unique Patient match one worker found is reused by every worker for this
    # long (0: each worker searches for itself, once per run)
    match_reuse_s: float = 600.0


def parse_sync(table: dict[str, Any], path: Path) -> SyncConfig:
    """The ``[sync]`` table, validated (unknown keys and out-of-range values refused)."""
    sync = _take(
        table,
        path,
        "sync.",
        {
            "lease_s": (int, float),
            "renew_every_s": (int, float),
            "max_wait_s": (int, float),
            "max_attempts": int,
            "lookup_grace_s": (int, float),
            "give_up_after": (int, float),
            "retry_base_s": (int, float),
            "retry_max_s": (int, float),
            "probe_every_s": (int, float),
            "probe_max_s": (int, float),
            "outage_after_failures": int,
            "match_reuse_s": (int, float),
        },
        {},
    )
    defaults = SyncConfig()
    sync_cfg = SyncConfig(
        lease_s=float(sync.get("lease_s", defaults.lease_s)),
        renew_every_s=float(sync.get("renew_every_s", defaults.renew_every_s)),
        max_wait_s=float(sync.get("max_wait_s", defaults.max_wait_s)),
        max_attempts=int(sync.get("max_attempts", defaults.max_attempts)),
        lookup_grace_s=float(sync.get("lookup_grace_s", defaults.lookup_grace_s)),
        give_up_after=float(sync.get("give_up_after", defaults.give_up_after)),
        retry_base_s=float(sync["retry_base_s"]) if "retry_base_s" in sync else None,
        retry_max_s=float(sync["retry_max_s"]) if "retry_max_s" in sync else None,
        probe_every_s=float(sync.get("probe_every_s", defaults.probe_every_s)),
        probe_max_s=float(sync.get("probe_max_s", defaults.probe_max_s)),
        outage_after_failures=int(sync.get("outage_after_failures",
                                           defaults.outage_after_failures)),
        match_reuse_s=float(sync.get("match_reuse_s", defaults.match_reuse_s)),
    )
    for key in ("give_up_after", "probe_every_s", "probe_max_s", "retry_base_s", "retry_max_s"):
        value = getattr(sync_cfg, key)
        if value is not None and not 0 < value < math.inf:
            raise _fail(path, f"sync.{key}", "must be a number of seconds above 0")
    if sync_cfg.probe_max_s < sync_cfg.probe_every_s:
        raise _fail(path, "sync.probe_max_s", "must not be shorter than sync.probe_every_s")
    if sync_cfg.outage_after_failures < 1:
        raise _fail(path, "sync.outage_after_failures", "must be at least 1")
    for key in ("lease_s", "renew_every_s"):
        if not 0 < getattr(sync_cfg, key) < math.inf:  # TOML allows inf and nan
            raise _fail(path, f"sync.{key}", "must be a number of seconds above 0")
    for key in ("lookup_grace_s", "match_reuse_s"):
        if not 0 <= getattr(sync_cfg, key) <= 86400:
            raise _fail(path, f"sync.{key}", "must be between 0 and 86400 seconds")
    if not 0 <= sync_cfg.max_wait_s < math.inf:
        raise _fail(path, "sync.max_wait_s", "must be a number of seconds, 0 or more")
    if sync_cfg.max_attempts < 1:
        raise _fail(path, "sync.max_attempts", "must be at least 1")
    if sync_cfg.renew_every_s >= sync_cfg.lease_s:
        raise _fail(path, "sync.renew_every_s", "must be shorter than sync.lease_s")
    return sync_cfg
