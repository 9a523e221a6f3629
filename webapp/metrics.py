"""``/metrics`` in the Prometheus text format (0.0.4), for a bearer token made by
``peersync token add --metrics``: records by sync state, attempts by outcome,
and the sync latency (acceptance to arrival in the EHR) as a histogram."""

from __future__ import annotations

from flask import Blueprint, Response

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
    return Response("\n".join(lines) + "\n",
                    content_type="text/plain; version=0.0.4; charset=utf-8")
