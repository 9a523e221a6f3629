"""Audit log: filter by time, actor, record and outcome; export as CSV; verify the chain.

The export is :func:`connector.audit.export` (the same rows and MACs as
``peersync audit export``): the rows the page's filters select, cells escaped
against formula injection, never cached. Its anchor (the chain's last seq and
MAC when the export began) is in the ``X-PeerSync-Anchor`` header and at the
``Link``-ed ``anchor.json?seq=N``; ``anchor.json`` alone is the head now, as
``peersync audit anchor`` writes it. The chain check is
:func:`connector.audit.verify`.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from flask import Blueprint, Response, render_template, request, url_for

from connector import audit as audit_log
from connector.reports import AuditQuery, audit_actions, audit_page
from connector.states import ALL_STATES
from webapp import get_store, params
from webapp.access import me, roles
from webapp.views import agency_tz, date_filters

bp = Blueprint("audit", __name__, url_prefix="/audit")

PAGE = 100
FILTERS = ("from", "to", "actor", "record", "outcome")


def _day(value: str | None) -> date | None:
    return params.parse_day(value)  # clamped into a range every page can compute with


def _start_of(day: date | None, *, next_day: bool = False) -> datetime | None:
    if day is None:
        return None
    return datetime.combine(day + timedelta(days=1 if next_day else 0), time.min, agency_tz())


@bp.get("/")
@roles("admin", "auditor")
def index() -> str:
    args = {k: (request.args.get(k) or "").strip()[:128] for k in FILTERS}
    since, until, errors = date_filters(args)  # errors: shown beside the fields
    query = AuditQuery(since=_start_of(since), until=_start_of(until, next_day=True),
                       actor=args["actor"] or None, record_id=args["record"] or None,
                       outcome=args["outcome"] or None)
    before = params.cursor_arg("before")
    store = get_store()
    rows = audit_page(store, query, limit=PAGE + 1, before_seq=before)
    outcomes = sorted(set(ALL_STATES) | set(audit_actions(store)))
    for row in rows:
        row["detail_text"] = json.dumps(row["detail"], sort_keys=True) if row["detail"] else ""
    return render_template("audit.html", rows=rows[:PAGE],
                           older=rows[PAGE - 1]["seq"] if len(rows) > PAGE else None,
                           args=args, filters={k: v for k, v in args.items() if v},
                           outcomes=outcomes, before=before, errors=errors)


def _export_query() -> AuditQuery:
    """The page's filters from the query string, read as :func:`index` reads them."""
    args = {k: (request.args.get(k) or "").strip()[:128] for k in FILTERS}
    since, until = _day(args["from"]), _day(args["to"])
    return AuditQuery(since=_start_of(since), until=_start_of(until, next_day=True),
                      actor=args["actor"] or None, record_id=args["record"] or None,
                      outcome=args["outcome"] or None)


def _download(body: Any, *, mimetype: str, filename: str) -> Response:
    response = Response(body, mimetype=mimetype)
    response.headers["Content-Disposition"] = f'attachment; filename="{filename}"'
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.get("/export.csv")
@roles("admin", "auditor")
def export() -> Response:
    query = _export_query()
    store = get_store()
    spool = tempfile.SpooledTemporaryFile(max_size=8 * 1024 * 1024, mode="w+",  # noqa: SIM115
                                          encoding="utf-8", newline="")
    try:
        anchor = audit_log.export(store.engine, spool, since=None, where=query, fmt="csv")
        with store.begin() as conn:  # the filters by name only: a typed value may be anything
            store.audit(conn, actor=me().actor, action="audit.exported",
                        detail={"rows": anchor["rows"], "last_seq": anchor["last_seq"],
                                "filters": anchor["filters"]})
    except BaseException:
        spool.close()
        raise
    spool.seek(0)

    def stream() -> Iterator[str]:
        try:
            while chunk := spool.read(64 * 1024):
                yield chunk
        finally:
            spool.close()

    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    response = _download(stream(), mimetype="text/csv", filename=f"peersync-audit-{stamp}.csv")
    response.call_on_close(spool.close)  # also when the download is never read to its end
    response.headers["X-PeerSync-Anchor"] = f'{anchor["last_seq"]}:{anchor["last_mac"]}'
    anchor_url = url_for("audit.anchor", seq=anchor["last_seq"])
    response.headers["Link"] = f'<{anchor_url}>; rel="describedby"; type="application/json"'
    return response


@bp.get("/anchor.json")
@roles("admin", "auditor")
def anchor() -> Response:
    """The chain's head as an anchor file (``?seq=N``: the anchor of an export up to row N)."""
    upto = params.cursor_arg("seq")
    store = get_store()
    taken = audit_log.anchor(store.engine, upto_seq=upto)
    with store.begin() as conn:
        store.audit(conn, actor=me().actor, action="audit.anchored",
                    detail={"last_seq": taken["last_seq"], "count": taken["count"]})
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    body = json.dumps(taken, indent=2, sort_keys=True) + "\n"
    return _download(body, mimetype="application/json",
                     filename=f"peersync-audit-anchor-{taken['last_seq']}-{stamp}.json")


@bp.get("/verify")
@roles("admin", "auditor")
def verify() -> Any:
    store = get_store()
    result = audit_log.verify(store.engine, store.audit_key)
    return render_template("audit_verify.html", result=result)
