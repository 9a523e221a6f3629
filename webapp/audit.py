"""Audit log: filter by time, actor, record and outcome; export as CSV; verify the chain.

The export is :func:`connector.audit.export` (the same rows and MACs as
``peersync audit export``), every row since the chosen day, so the file can be
verified on its own; the chain check is :func:`connector.audit.verify`.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from flask import Blueprint, Response, render_template, request

from connector import audit as audit_log
from connector.reports import AuditQuery, audit_actions, audit_page
from connector.states import ALL_STATES
from webapp import get_store
from webapp.access import me, roles
from webapp.views import agency_tz

bp = Blueprint("audit", __name__, url_prefix="/audit")

PAGE = 100
FILTERS = ("from", "to", "actor", "record", "outcome")


def _day(value: str | None) -> date | None:
    try:
        return date.fromisoformat(value) if value else None
    except ValueError:
        return None


def _start_of(day: date | None, *, next_day: bool = False) -> datetime | None:
    if day is None:
        return None
    return datetime.combine(day + timedelta(days=1 if next_day else 0), time.min, agency_tz())


@bp.get("/")
@roles("admin", "auditor")
def index() -> str:
    args = {k: (request.args.get(k) or "").strip()[:128] for k in FILTERS}
    since, until = _day(args["from"]), _day(args["to"])
    args["from"] = since.isoformat() if since else ""
    args["to"] = until.isoformat() if until else ""
    query = AuditQuery(since=_start_of(since), until=_start_of(until, next_day=True),
                       actor=args["actor"] or None, record_id=args["record"] or None,
                       outcome=args["outcome"] or None)
    before = request.args.get("before", type=int)
    store = get_store()
    rows = audit_page(store, query, limit=PAGE + 1, before_seq=before)
    outcomes = sorted(set(ALL_STATES) | set(audit_actions(store)))
    for row in rows:
        row["detail_text"] = json.dumps(row["detail"], sort_keys=True) if row["detail"] else ""
    return render_template("audit.html", rows=rows[:PAGE],
                           older=rows[PAGE - 1]["seq"] if len(rows) > PAGE else None,
                           args=args, filters={k: v for k, v in args.items() if v},
                           outcomes=outcomes, before=before)


@bp.get("/export.csv")
@roles("admin", "auditor")
def export() -> Response:
    since_day = _day(request.args.get("from"))
    since = _start_of(since_day)
    store = get_store()
    spool = tempfile.SpooledTemporaryFile(max_size=8 * 1024 * 1024, mode="w+",  # noqa: SIM115
                                          encoding="utf-8", newline="")
    anchor = audit_log.export(store.engine, spool, since=since.astimezone(UTC) if since else None,
                              fmt="csv")
    with store.begin() as conn:
        store.audit(conn, actor=me().actor, action="audit.exported",
                    detail={"rows": anchor["rows"], "last_seq": anchor["last_seq"],
                            "since": anchor["since"]})
    spool.seek(0)

    def stream() -> Iterator[str]:
        try:
            while chunk := spool.read(64 * 1024):
                yield chunk
        finally:
            spool.close()

    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    response = Response(stream(), mimetype="text/csv")
    response.headers["Content-Disposition"] = f'attachment; filename="peersync-audit-{stamp}.csv"'
    response.headers["X-PeerSync-Anchor"] = f'{anchor["last_seq"]}:{anchor["last_mac"]}'
    return response


@bp.get("/verify")
@roles("admin", "auditor")
def verify() -> Any:
    store = get_store()
    result = audit_log.verify(store.engine, store.audit_key)
    return render_template("audit_verify.html", result=result)
