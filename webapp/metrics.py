"""``/metrics`` in the Prometheus text format (0.0.4), for a bearer token made by
``peersync token add --metrics``: records by sync state, attempts by outcome,
and the sync latency (acceptance to arrival in the EHR) as a histogram."""

from __future__ import annotations

import time

from flask import Blueprint, Response

from connector import gate
from connector.reports import metrics
from webapp import get_store
from webapp.access import bearer

bp = Blueprint("metrics", __name__)


def _num(value: float) -> str:
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


@bp.get("/metrics")
@bearer("metrics")
def index() -> Response:
    data = metrics(get_store())
    lines = [
        "# HELP peersync_records Record versions by sync state.",
        "# TYPE peersync_records gauge",
    ]
    lines += [f'peersync_records{{state="{state}"}} {n}'
              for state, n in data.records_by_state.items()]
    lines += [
        "# HELP peersync_sync_attempts_total Sync attempts by the state each ended in.",
        "# TYPE peersync_sync_attempts_total counter",
    ]
    lines += [f'peersync_sync_attempts_total{{outcome="{state}"}} {n}'
              for state, n in data.attempts_by_outcome.items()]
    lines += [
        "# HELP peersync_sync_latency_seconds Time from a record version's acceptance to its "
        "arrival in the EHR.",
        "# TYPE peersync_sync_latency_seconds histogram",
    ]
    lines += [f'peersync_sync_latency_seconds_bucket{{le="{_num(bound)}"}} {n}'
              for bound, n in data.latency_buckets]
    lines += [
        f'peersync_sync_latency_seconds_bucket{{le="+Inf"}} {data.latency_count}',
        f"peersync_sync_latency_seconds_sum {data.latency_sum:.3f}",
        f"peersync_sync_latency_seconds_count {data.latency_count}",
    ]
    outage = gate.read(get_store())
    since = (time.time() - outage.since.timestamp()) if outage.since and not outage.is_open else 0
    lines += [
        "# HELP peersync_ehr_gate_open 1 while the EHR answers, 0 while every worker waits on "
        "an outage.",
        "# TYPE peersync_ehr_gate_open gauge",
        f"peersync_ehr_gate_open {1 if outage.is_open else 0}",
        "# HELP peersync_ehr_unreachable_since_seconds How long the EHR has been unreachable "
        "(0 while it answers).",
        "# TYPE peersync_ehr_unreachable_since_seconds gauge",
        f"peersync_ehr_unreachable_since_seconds {max(0.0, since):.3f}",
        "# HELP peersync_ehr_gate_probes Probes sent in the current outage.",
        "# TYPE peersync_ehr_gate_probes gauge",
        f"peersync_ehr_gate_probes {0 if outage.is_open else outage.probes}",
    ]
    return Response("\n".join(lines) + "\n",
                    content_type="text/plain; version=0.0.4; charset=utf-8")
