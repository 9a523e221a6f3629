"""The tamper-evident audit log: a keyed hash chain over ``audit_events``.

Every row carries ``mac = HMAC-SHA256(key, prev_mac || canonical(row))`` where
``prev_mac`` is the previous row's MAC (32 zero bytes before the first row)
and ``canonical(row)`` is the row's content as compact JSON with sorted keys
(every column but ``mac``, ``seq`` included, times as UTC ISO 8601 with
microseconds). The key lives outside the database: ``PEERSYNC_AUDIT_KEY``
(hex or base64) or a key file, mode 0600, beside ``peersync.toml``.

Appends serialise on the one row of ``audit_chain_head`` (``SELECT ... FOR
UPDATE`` on PostgreSQL; on SQLite the store's write transactions hold the
database write lock), take the next sequence numbers from it explicitly and
move it forward in the caller's transaction, so parallel workers never fork
the chain. :func:`verify` walks the rows in sequence order and names every
edited, inserted, deleted, re-ordered or truncated row; an anchor (the last
sequence number and MAC, written by :func:`export` and :func:`anchor`, kept
away from the database) also catches a tail cut off together with a head moved
back, which nothing inside the database can. A chain checked with the public
development key, or holding rows keyed with it, proves nothing: :func:`verify`
fails it.

Nothing here reads or prints the key; the table holds no PHI in the first place.
This module is the public face of the audit log and re-exports every name of
its parts, each with one job: connector.audit_key (the key), connector.audit_chain
(the MACs, appends and reading the rows back), connector.audit_verify (the verify
walk) and connector.audit_export (anchors and the CSV/JSON export). Import names
from here. The command line is connector.audit_cli; none of these modules imports
it or the store (the store imports this module).
"""

from __future__ import annotations

from connector.audit_chain import (
    BATCH_ROWS,
    CONTENT_COLUMNS,
    EXPORT_COLUMNS,
    GENESIS_MAC,
    HEAD_ID,
    AuditError,
    AuditFilter,
    RowFilter,
    append,
    as_utc,
    canonical,
    iter_rows,
    read_head,
    row_mac,
    used_filters,
    utc_iso,
)
from connector.audit_export import (
    FORMULA_START,
    anchor,
    check_anchor,
    csv_cell,
    csv_value,
    export,
    head_problem,
    load_anchor,
    write_anchor,
)
from connector.audit_key import (
    DEVELOPMENT_KEY,
    KEY_ENV,
    KEY_FILE_NAME,
    MIN_KEY_BYTES,
    ensure_key_file,
    is_development_key,
    key_path,
    load_audit_key,
    parse_key,
)
from connector.audit_verify import (
    CROSS_CHECK,
    MAX_PROBLEMS,
    MAX_SHIFT,
    VerifyResult,
    verify,
)

__all__ = [
    "BATCH_ROWS",
    "CONTENT_COLUMNS",
    "CROSS_CHECK",
    "DEVELOPMENT_KEY",
    "EXPORT_COLUMNS",
    "FORMULA_START",
    "GENESIS_MAC",
    "HEAD_ID",
    "KEY_ENV",
    "KEY_FILE_NAME",
    "MAX_PROBLEMS",
    "MAX_SHIFT",
    "MIN_KEY_BYTES",
    "AuditError",
    "AuditFilter",
    "RowFilter",
    "VerifyResult",
    "anchor",
    "append",
    "as_utc",
    "canonical",
    "check_anchor",
    "csv_cell",
    "csv_value",
    "ensure_key_file",
    "export",
    "head_problem",
    "is_development_key",
    "iter_rows",
    "key_path",
    "load_anchor",
    "load_audit_key",
    "parse_key",
    "read_head",
    "row_mac",
    "used_filters",
    "utc_iso",
    "verify",
    "write_anchor",
]
