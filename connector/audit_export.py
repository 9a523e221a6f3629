"""Audit anchors and the audit export (CSV or JSON).

An anchor is the chain's last row (sequence number and MAC) with the row count
and when it was taken; kept away from the database, it lets
:func:`connector.audit.verify` catch a cut-off tail. :func:`export` writes the
rows a filter selects and returns the anchor taken when it began; CSV cells are
escaped against formula injection, reversibly. Part of :mod:`connector.audit`
(which re-exports every name); imports neither the store nor the CLI.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Literal

from connector.audit_chain import (
    BATCH_ROWS,
    EXPORT_COLUMNS,
    GENESIS_MAC,
    AuditFilter,
    as_utc,
    iter_rows,
    read_head,
    used_filters,
    utc_iso,
)
from connector.errors import ConfigError

if TYPE_CHECKING:
    from sqlalchemy import Connection, Engine

# A spreadsheet runs a cell starting with one of these as a formula. Such a cell
# gets a leading "'"; so does one that starts with "'" itself, which keeps the
# escaping reversible: drop one leading "'" and the cell holds what was written.
FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "'")


def csv_cell(value: Any) -> str:
    """``value`` as a CSV cell a spreadsheet will not run as a formula."""
    text = "" if value is None else str(value)
    return "'" + text if text.startswith(FORMULA_START) else text


def csv_value(cell: str) -> str:
    """What :func:`csv_cell` was given (for checking an exported file against its MACs)."""
    return cell[1:] if cell.startswith("'") else cell


def _export_value(name: str, value: Any) -> Any:
    if name == "at" and value is not None:
        return utc_iso(value)
    return value


def _last_row(conn: Connection, upto: int | None) -> tuple[int, str]:
    """The seq and MAC of the last row at or before ``upto`` (the whole log: ``None``)."""
    from sqlalchemy import select

    from connector.schema import audit_events

    query = select(audit_events.c.seq, audit_events.c.mac)
    if upto is not None:
        query = query.where(audit_events.c.seq <= upto)
    last = conn.execute(query.order_by(audit_events.c.seq.desc()).limit(1)).first()
    return (int(last.seq), last.mac or GENESIS_MAC) if last else (0, GENESIS_MAC)


def anchor(engine: Engine, *, upto_seq: int | None = None) -> dict[str, Any]:
    """The chain's last row now (or the last at or before ``upto_seq``), as an anchor.

    ``last_seq`` and ``last_mac`` are what :func:`verify` checks; ``count`` is
    the number of rows up to it and ``anchored_at`` when it was taken. Kept
    apart from the database, it proves later that nothing up to it was cut off
    or rewritten. The last row is taken at or before the chain head, so rows
    inserted beyond the head are never anchored.
    """
    from sqlalchemy import func, select

    from connector.schema import audit_events

    head = read_head(engine)
    upto = head[0] if head else None
    if upto_seq is not None:
        upto = upto_seq if upto is None else min(upto, upto_seq)
    with engine.connect() as conn:
        last_seq, last_mac = _last_row(conn, upto)
        count = conn.execute(select(func.count()).select_from(audit_events)
                             .where(audit_events.c.seq <= last_seq)).scalar_one()
    return {"last_seq": last_seq, "last_mac": last_mac, "count": int(count),
            "anchored_at": utc_iso(datetime.now(UTC))}


def head_problem(engine: Engine) -> str | None:
    """Why the chain head disagrees with the last row (``None``: it agrees)."""
    head = read_head(engine)
    if head is None:
        return "the chain head row is missing: run `peersync db upgrade`"
    with engine.connect() as conn:
        last_seq, last_mac = _last_row(conn, None)
    if (last_seq, last_mac) != head:
        return (f"the chain head (seq {head[0]}) disagrees with the last row (seq {last_seq}): "
                "run `peersync audit verify`")
    return None


def export(
    engine: Engine,
    out: IO[str],
    *,
    since: datetime | None,
    where: AuditFilter | None = None,
    fmt: Literal["csv", "json"] = "csv",
    batch_size: int = BATCH_ROWS,
) -> dict[str, Any]:
    """Write the rows at or after ``since`` matching ``where`` to ``out``; return the anchor.

    The anchor (:func:`anchor`) is the chain's last row when the export began,
    whether or not the filters selected it, with ``rows`` (how many were
    written) and ``filters`` (the names of the filters used, never their values).
    CSV cells are escaped against formula injection (:func:`csv_cell`).
    """
    if fmt not in ("csv", "json"):
        raise ValueError(f"unknown export format {fmt!r}")
    taken = anchor(engine)
    since_utc = as_utc(since) if since is not None else None
    count = 0
    # CRLF (RFC 4180): with "\n" alone, Python 3.11 leaves a cell holding "\r" unquoted
    writer = csv.writer(out, lineterminator="\r\n") if fmt == "csv" else None
    if writer is not None:
        writer.writerow(EXPORT_COLUMNS)
    else:
        out.write("[")
    for row in iter_rows(engine, upto_seq=taken["last_seq"], since=since_utc, where=where,
                         batch_size=batch_size):
        values = {name: _export_value(name, row.get(name)) for name in EXPORT_COLUMNS}
        if writer is not None:
            detail = values["detail"]
            values["detail"] = (
                None if detail is None
                else json.dumps(detail, sort_keys=True, separators=(",", ":"))
            )
            writer.writerow([csv_cell(values[n]) for n in EXPORT_COLUMNS])
        else:
            out.write(("\n" if count == 0 else ",\n") + json.dumps(values, sort_keys=True))
        count += 1
    if writer is None:
        out.write("\n]\n" if count else "]\n")
    return {
        **taken,
        "exported_at": taken["anchored_at"],
        "rows": count,
        "since": utc_iso(since_utc) if since_utc else None,
        "filters": used_filters(where) if where is not None else [],
    }


def write_anchor(anchor: Mapping[str, Any], path: Path) -> None:
    path.write_text(json.dumps(anchor, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def check_anchor(anchor: Mapping[str, Any]) -> dict[str, Any]:
    seq, mac = anchor.get("last_seq"), anchor.get("last_mac")
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
        raise ConfigError("anchor: last_seq must be a whole number, 0 or more")
    if not isinstance(mac, str) or not re.fullmatch(r"[0-9a-f]{64}", mac):
        raise ConfigError("anchor: last_mac must be 64 lowercase hex digits")
    return dict(anchor)


def load_anchor(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read ({exc.strerror})") from None
    except (ValueError, UnicodeDecodeError):
        raise ConfigError(f"{path}: not a JSON anchor file") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: not a JSON anchor file")
    try:
        return check_anchor(data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
