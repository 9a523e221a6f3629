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
The command line is connector.audit_cli; this module imports neither it nor the
store (the store imports this module).
"""

from __future__ import annotations

import base64
import binascii
import csv
import hashlib
import hmac
import json
import logging
import os
import re
import stat
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Literal, Protocol

from connector.errors import ConfigError, ConnectorError

if TYPE_CHECKING:
    from sqlalchemy import Connection, Engine, Select

# SQLAlchemy is imported where it is used: the CLI registers `peersync audit`
# at start-up, and `peersync --help` or `map` should not pay for it.

log = logging.getLogger("peersync.audit")

KEY_ENV = "PEERSYNC_AUDIT_KEY"
KEY_FILE_NAME = "peersync.key"
MIN_KEY_BYTES = 32
# Used when no key is configured (tests, a demo, a home made before `init` wrote
# a key). It is public, so it proves nothing: `verify` says so whenever it sees it.
DEVELOPMENT_KEY = b"peersync-DEVELOPMENT-audit-key--not-secret--do-not-use-in-production"
GENESIS_MAC = "0" * 64
HEAD_ID = 1

# The content a MAC covers, in this order (the JSON is sorted anyway).
CONTENT_COLUMNS = (
    "seq",
    "at",
    "actor",
    "action",
    "source",
    "record_id",
    "record_version_id",
    "job_id",
    "state_from",
    "state_to",
    "detail",
)
EXPORT_COLUMNS = (*CONTENT_COLUMNS, "mac")

BATCH_ROWS = 2000
MAX_PROBLEMS = 1000  # listed one by one; beyond that, counted
MAX_SHIFT = 8  # how far a renumbering (rows inserted or deleted in the middle) is followed
CROSS_CHECK = 32  # failing rows compared with each other to tell a re-ordering from an edit


class AuditError(ConnectorError):
    """The audit chain cannot be appended to (its head row is missing). Not retry-safe."""


# -- the key --------------------------------------------------------------------


def parse_key(text: str, *, where: str) -> bytes:
    """A key given as hex or base64 text, at least 32 bytes. ``where`` names it in errors."""
    value = text.strip()
    key: bytes | None = None
    padded = value + "=" * (-len(value) % 4)
    try:
        if re.fullmatch(r"(?:[0-9a-fA-F]{2})+", value):  # hex wins where both would parse
            key = bytes.fromhex(value)
        elif re.fullmatch(r"[A-Za-z0-9+/]+=*", padded):
            key = base64.b64decode(padded, validate=True)
        elif re.fullmatch(r"[A-Za-z0-9_-]+=*", padded):
            key = base64.urlsafe_b64decode(padded)
    except (binascii.Error, ValueError):
        key = None
    if key is None:
        raise ConfigError(f"{where}: the audit key must be hex or base64 text")
    if len(key) < MIN_KEY_BYTES:
        raise ConfigError(f"{where}: the audit key must be at least {MIN_KEY_BYTES} bytes")
    return key


def key_path(config_folder: Path, key_file: str | None) -> Path:
    """Where the key file is: ``key_file`` (relative to the config's folder) or the default."""
    candidate = Path(key_file) if key_file else Path(KEY_FILE_NAME)
    return candidate if candidate.is_absolute() else config_folder / candidate


def load_audit_key(
    config_folder: Path, key_file: str | None, environ: Mapping[str, str]
) -> bytes:
    """The audit key: ``PEERSYNC_AUDIT_KEY`` wins, else the key file.

    A key file readable by group or others is refused (ConfigError naming the
    file). A configured ``key_file`` must exist; when none is configured and
    ``peersync.key`` is missing too, the development key is used and a warning
    logged (``peersync audit verify`` reports it as well).
    """
    from_env = environ.get(KEY_ENV)
    if from_env:
        return parse_key(from_env, where=KEY_ENV)
    path = key_path(config_folder, key_file)
    try:
        info = path.stat()
    except FileNotFoundError:
        if key_file:
            raise ConfigError(f"{path}: audit key file not found (audit.key_file)") from None
        log.warning(
            "no audit key (%s unset, %s missing): the audit log is keyed with the public "
            "development key; run `peersync audit init-key`",
            KEY_ENV,
            path,
        )
        return DEVELOPMENT_KEY
    except OSError as exc:
        raise ConfigError(f"{path}: audit key file cannot be read ({exc.strerror})") from None
    if not stat.S_ISREG(info.st_mode):
        raise ConfigError(f"{path}: the audit key file is not a regular file")
    if info.st_mode & 0o077:
        raise ConfigError(
            f"{path}: the audit key file is readable by others (mode "
            f"{stat.S_IMODE(info.st_mode):04o}); it must be 0600: chmod 600 {path}"
        )
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: audit key file cannot be read ({exc.strerror})") from None
    try:
        return parse_key(raw.decode("ascii"), where=str(path))
    except (UnicodeDecodeError, ConfigError):
        if len(raw) >= MIN_KEY_BYTES:  # a raw binary key
            return raw
        raise ConfigError(
            f"{path}: the audit key must be hex or base64 text, at least "
            f"{MIN_KEY_BYTES} bytes"
        ) from None


def ensure_key_file(folder: Path, key_file: str | None = None) -> Path:
    """Create a random 32-byte key file (hex text, mode 0600) unless it exists; return its path.

    Created with O_CREAT|O_EXCL and mode 0600 in one call, so it is never
    readable by others, not even for a moment, and never overwritten.
    """
    path = key_path(folder, key_file)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path
    try:
        os.write(fd, os.urandom(MIN_KEY_BYTES).hex().encode("ascii") + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    return path


def is_development_key(key: bytes) -> bool:
    return hmac.compare_digest(key, DEVELOPMENT_KEY)


# -- the chain ------------------------------------------------------------------


def _utc_iso(value: datetime) -> str:
    if value.tzinfo is None:  # SQLite hands back naive times; everything written is UTC
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def _json_value(value: Any) -> Any:
    """``value`` exactly as it comes back from a JSON column (tuples become lists...)."""
    if value is None:
        return None
    return json.loads(json.dumps(value, sort_keys=True, allow_nan=False))


def canonical(row: Mapping[str, Any]) -> bytes:
    """The bytes a row's MAC covers: its content columns as sorted, compact, ASCII JSON."""
    doc: dict[str, Any] = {}
    for name in CONTENT_COLUMNS:
        value = row.get(name)
        if name == "at":
            value = _utc_iso(value) if value is not None else None
        elif name in ("seq", "record_version_id", "job_id") and value is not None:
            value = int(value)
        doc[name] = value
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), allow_nan=False).encode("ascii")


def _mac_bytes(mac: str | None) -> bytes:
    try:
        return bytes.fromhex(mac or "")
    except ValueError:  # not hex at all: chains to nothing that verifies
        return (mac or "").encode("utf-8", "replace")


def row_mac(key: bytes, prev_mac: str, content: bytes) -> str:
    return hmac.digest(key, _mac_bytes(prev_mac) + content, hashlib.sha256).hex()


def append(conn: Connection, rows: Sequence[Mapping[str, Any]], key: bytes) -> None:
    """Append ``rows`` to the chain in the caller's transaction.

    Each row holds the content columns but ``seq`` (``at`` defaults to now).
    Sequence numbers come from the head row, locked first, so two transactions
    can never take the same ones or chain onto the same predecessor.
    """
    if not rows:
        return  # and take no lock
    from sqlalchemy import insert, select, update

    from connector.schema import audit_chain_head, audit_events

    head = conn.execute(
        select(audit_chain_head.c.last_seq, audit_chain_head.c.last_mac)
        .where(audit_chain_head.c.id == HEAD_ID)
        .with_for_update()  # SQLite: no-op; the write transaction already holds the lock
    ).first()
    if head is None:
        raise AuditError("the audit chain head is missing: run `peersync db upgrade`")
    seq, mac = int(head.last_seq), str(head.last_mac)
    values: list[dict[str, Any]] = []
    now = datetime.now(UTC)
    for row in rows:
        seq += 1
        at = row.get("at") or now
        item = {
            "seq": seq,
            "at": at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC),
            "actor": row["actor"],
            "action": row["action"],
            "detail": _json_value(row.get("detail")),
        }
        for name in ("source", "record_id", "record_version_id", "job_id", "state_from",
                     "state_to"):
            item[name] = row.get(name)
        mac = row_mac(key, mac, canonical(item))
        item["mac"] = mac
        values.append(item)
    conn.execute(insert(audit_events), values)
    conn.execute(
        update(audit_chain_head)
        .where(audit_chain_head.c.id == HEAD_ID)
        .values(last_seq=seq, last_mac=mac)
    )


# -- reading --------------------------------------------------------------------


def _head(engine: Engine) -> tuple[int, str] | None:
    from sqlalchemy import select

    from connector.schema import audit_chain_head

    with engine.connect() as conn:
        row = conn.execute(
            select(audit_chain_head.c.last_seq, audit_chain_head.c.last_mac).where(
                audit_chain_head.c.id == HEAD_ID
            )
        ).first()
    return (int(row.last_seq), str(row.last_mac)) if row else None


class AuditFilter(Protocol):
    """The audit page's filters (connector.reports.AuditQuery has the same shape)."""

    @property
    def since(self) -> datetime | None: ...  # at or after
    @property
    def until(self) -> datetime | None: ...  # before
    @property
    def actor(self) -> str | None: ...  # exact, or a prefix ending in "*" or ":"
    @property
    def record_id(self) -> str | None: ...
    @property
    def outcome(self) -> str | None: ...  # a state reached (state_to) or an action


@dataclass(frozen=True)
class RowFilter:
    """An :class:`AuditFilter` for callers without the web app's query (the CLI)."""

    since: datetime | None = None
    until: datetime | None = None
    actor: str | None = None
    record_id: str | None = None
    outcome: str | None = None

    def used(self) -> list[str]:
        return used_filters(self)


def used_filters(where: AuditFilter) -> list[str]:
    """The names of the filters set (never their values: a typed value may be anything)."""
    names = ("since", "until", "actor", "record_id", "outcome")
    return [name for name in names if getattr(where, name) not in (None, "")]


def _as_utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _filtered(query: Select[Any], where: AuditFilter) -> Select[Any]:
    """``query`` narrowed as the audit page narrows its rows (connector.reports)."""
    from sqlalchemy import or_

    from connector.schema import audit_events

    column = audit_events.c
    if where.since is not None:
        query = query.where(column.at >= _as_utc(where.since))
    if where.until is not None:
        query = query.where(column.at < _as_utc(where.until))
    actor = (where.actor or "").strip()
    if actor.endswith(("*", ":")):
        prefix = actor[:-1] if actor.endswith("*") else actor
        escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        query = query.where(column.actor.like(escaped + "%", escape="\\"))
    elif actor:
        query = query.where(column.actor == actor)
    if where.record_id:
        query = query.where(column.record_id == where.record_id)
    if where.outcome:
        query = query.where(or_(column.state_to == where.outcome,
                                column.action == where.outcome))
    return query


def iter_rows(
    engine: Engine,
    *,
    after_seq: int = 0,
    upto_seq: int | None = None,
    since: datetime | None = None,
    where: AuditFilter | None = None,
    batch_size: int = BATCH_ROWS,
) -> Iterator[dict[str, Any]]:
    """Audit rows in sequence order, read in short batches (never all in memory)."""
    from sqlalchemy import select

    from connector.schema import audit_events

    last = after_seq
    while True:
        query = select(audit_events).where(audit_events.c.seq > last)
        if upto_seq is not None:
            query = query.where(audit_events.c.seq <= upto_seq)
        if since is not None:
            query = query.where(audit_events.c.at >= since)
        if where is not None:
            query = _filtered(query, where)
        with engine.connect() as conn:
            result = conn.execute(query.order_by(audit_events.c.seq).limit(batch_size))
            names = tuple(result.keys())
            batch = [dict(zip(names, row, strict=True)) for row in result]
        if not batch:
            return
        yield from batch
        last = batch[-1]["seq"]


# -- verify ---------------------------------------------------------------------


@dataclass
class VerifyResult:
    """What :func:`verify` found. ``problems`` read ``seq N: <kind> (why)``."""

    ok: bool
    rows: int
    last_seq: int
    last_mac: str
    problems: list[str]
    warnings: list[str] = field(default_factory=list)
    development_key: bool = False  # the chain (or its first rows) is keyed with the public key
    bad_rows: int = 0  # rows whose MAC does not verify


@dataclass
class _Suspect:
    seq: int
    orig_seq: int  # where the row belongs after a detected renumbering
    row: dict[str, Any]
    mac: str | None
    prev: str


def _kind(problem: str) -> str:
    """The kind a problem line names: ``seq 4-6: deleted (...)`` -> ``deleted``."""
    return problem.split(": ", 1)[-1].split(" ", 1)[0]


def _anchor_time(anchor: Mapping[str, Any]) -> str:
    when = anchor.get("anchored_at") or anchor.get("exported_at")
    return str(when)[:40] if when else "earlier"


def _span(first: int, last: int) -> str:
    return f"seq {first}" if first == last else f"seq {first}-{last}"


class _Walk:
    """One pass over the rows in sequence order, keeping only a bounded window."""

    def __init__(self, key: bytes, anchor: Mapping[str, Any] | None) -> None:
        self.key = key
        self.keyed_dev = is_development_key(key)
        self.anchor = anchor
        self.rows = 0
        self.good = 0
        self.bad = 0
        self.legacy = 0
        self.dev_rows = 0
        self.chained = False
        self.keyed_seen = False  # a row verified with the (non-development) key
        self.expected = 1
        self.prev = GENESIS_MAC
        self.last_seq = 0
        self.last_mac = GENESIS_MAC
        self.shift = 0
        self.fails_in_a_row = 0
        self.recent: deque[str] = deque([GENESIS_MAC], maxlen=MAX_SHIFT + 2)  # newest last
        self.pending: tuple[int, int, int] | None = None  # a renumbering to confirm
        self.suspects: list[_Suspect] = []
        self.overflow: list[int] = []  # failing rows beyond the cross-check window
        self.overflow_more = 0  # ... and beyond what is worth listing
        self.found: list[tuple[int, str]] = []
        self.anchor_seen = False

    def problem(self, seq: int, text: str) -> None:
        self.found.append((seq, text))

    def _ok(self, key: bytes, row: Mapping[str, Any], seq: int, prev: str, mac: str) -> bool:
        content = canonical({**row, "seq": seq})
        return hmac.compare_digest(row_mac(key, prev, content), mac)

    def feed(self, row: dict[str, Any]) -> None:
        seq, mac = int(row["seq"]), row.get("mac")
        self.rows += 1
        gap = seq != self.expected
        if gap:
            self.problem(
                self.expected,
                f"{_span(self.expected, seq - 1)}: deleted "
                f"({seq - self.expected} row(s) missing from the sequence)",
            )
        self._check_anchor(seq, mac)
        if mac is None and not self.chained and not gap:
            self.legacy += 1  # written before the chain existed (migration 0002)
        else:
            self.chained = True
            self._check(row, seq, mac or "", gap)
            self.prev = mac or ""
        self.recent.append(self.prev)
        self.last_seq, self.last_mac = seq, mac or ""
        self.expected = seq + 1

    def _check(self, row: dict[str, Any], seq: int, mac: str, gap: bool) -> None:
        key, prev = self.key, self.prev
        pending, self.pending = self.pending, None
        if pending and mac and self._ok(key, row, seq - pending[0], prev, mac):
            self._renumbering_confirmed(*pending)
        if mac and self._ok(key, row, seq - self.shift, prev, mac):
            self.good += 1
            self.fails_in_a_row = 0
            self.keyed_seen = self.keyed_seen or not self.keyed_dev
            return
        self.fails_in_a_row += 1
        if mac and not self.keyed_dev and self._ok(DEVELOPMENT_KEY, row, seq - self.shift,
                                                   prev, mac):
            if self.keyed_seen:
                self.bad += 1
                self.problem(seq, f"seq {seq}: edited (keyed with the public development key "
                                  "after rows keyed with the audit key: forged, or written "
                                  "while the key was missing)")
            else:
                self.dev_rows += 1
            return
        self.bad += 1
        if gap:
            return  # its predecessor is gone: the deletion above is the finding
        if mac and self.fails_in_a_row <= 64:
            self.pending = self._renumbering(row, seq, mac, prev)
        if len(self.suspects) < CROSS_CHECK:
            self.suspects.append(_Suspect(seq, seq - self.shift, row, mac or None, prev))
        elif len(self.overflow) < MAX_PROBLEMS:
            self.overflow.append(seq)
        else:
            self.overflow_more += 1

    def _renumbering(
        self, row: dict[str, Any], seq: int, mac: str, prev: str
    ) -> tuple[int, int, int] | None:
        """Would the row verify under another sequence number (rows inserted or deleted)?

        Only a candidate: a row moved elsewhere verifies under its old number
        too. A renumbering is confirmed when the next row verifies the same way.
        """
        for shift in range(-MAX_SHIFT, MAX_SHIFT + 1):
            delta = shift - self.shift  # > 0: rows inserted just before; < 0: rows deleted
            if delta == 0 or seq - shift < 1 or delta >= len(self.recent):
                continue
            # After `delta` forged rows, the row's true predecessor is the one before them.
            before = self.recent[-1 - delta] if delta > 0 else prev
            if self._ok(self.key, row, seq - shift, before, mac):
                return shift, delta, seq
        return None

    def _renumbering_confirmed(self, shift: int, delta: int, seq: int) -> None:
        """Rows from ``seq`` on carry numbers moved by ``delta``; report it once."""
        if delta > 0:
            first = seq - delta
            self.problem(first, f"{_span(first, seq - 1)}: inserted ({delta} row(s) not "
                                "written by PeerSync; the rows after were renumbered)")
        else:
            first = seq - 1
            self.problem(first, f"seq {first}: deleted ({-delta} row(s) removed here "
                                "and the later rows renumbered to hide the gap)")
        self.bad -= 1  # the row at `seq` is genuine, only renumbered
        self.good += 1
        self.suspects = [s for s in self.suspects if s.seq < first]
        self.shift = shift

    def _check_anchor(self, seq: int, mac: str | None) -> None:
        if self.anchor is None or seq != self.anchor["last_seq"]:
            return
        self.anchor_seen = True
        if mac != self.anchor["last_mac"]:
            self.problem(seq, f"seq {seq}: edited (its MAC differs from the anchor's, "
                              f"taken {_anchor_time(self.anchor)})")

    def finish(self, head: tuple[int, str] | None) -> VerifyResult:
        beyond_head = self._check_head(head)
        self._classify(beyond_head)
        for seq in self.overflow:
            if beyond_head is None or seq <= beyond_head:
                self.problem(seq, f"seq {seq}: edited (its MAC does not match its content)")
        if self.overflow_more:
            self.problem(self.overflow[-1], f"seq {self.overflow[-1] + 1}-{self.last_seq}: "
                         f"edited ({self.overflow_more} more row(s) whose MAC does not match)")
        if self.anchor is not None and not self.anchor_seen and self.anchor["last_seq"] > 0:
            seq = int(self.anchor["last_seq"])
            self.problem(seq, f"seq {seq}: truncated (the anchor taken {_anchor_time(self.anchor)} "
                              f"holds seq {seq}; the log now ends at seq {self.last_seq})")
        warnings: list[str] = []
        if self.legacy:
            warnings.append(f"{_span(1, self.legacy)}: written before the audit chain existed "
                            "(no MAC): nothing proves they are unchanged")
        if self.dev_rows and self.keyed_seen:
            # Anyone can rewrite rows keyed with the public key, and a forger who removed the
            # key file gets them pinned by the first row written under a new key: not ok.
            first = self.legacy + 1
            self.problem(first, f"{_span(first, first + self.dev_rows - 1)}: unproven (keyed "
                                "with the public development key, which anyone can recompute: "
                                "written while no audit key was configured, or rewritten "
                                "after the key file was removed)")
        elif self.dev_rows:
            first = self.legacy + 1
            self.problem(first, f"{_span(first, first + self.dev_rows - 1)}: edited (no row is "
                                "keyed with this audit key, only with the public development "
                                "key: nothing proves these rows unchanged)")
        if self.keyed_dev:
            self.problem(0, f"{_span(min(1, self.rows), self.last_seq)}: unproven (no audit key "
                            f"is configured: checked with the public development key, with "
                            f"which anyone can rewrite the whole chain; set {KEY_ENV} or run "
                            "`peersync audit init-key`)")
        chained = self.rows - self.legacy - self.dev_rows
        found = sorted(self.found, key=lambda item: item[0])
        if chained > 0 and self.good == 0 and self.bad >= chained:
            # One finding instead of one per row; problems the key cannot explain stay.
            first = self.legacy + self.dev_rows + 1
            found = [(first, f"{_span(first, self.last_seq)}: edited (no row verifies with this "
                             "key: a wrong audit key, or every row rewritten)")] + [
                item for item in found if _kind(item[1]) not in ("edited", "reordered")
            ]
        problems = [text for _, text in found[:MAX_PROBLEMS]]
        if len(found) > MAX_PROBLEMS:
            problems.append(f"... and {len(found) - MAX_PROBLEMS} more problem(s)")
        return VerifyResult(
            ok=not found,
            rows=self.rows,
            last_seq=self.last_seq,
            last_mac=self.last_mac,
            problems=problems,
            warnings=warnings,
            development_key=self.keyed_dev or bool(self.dev_rows),
            bad_rows=self.bad,
        )

    def _check_head(self, head: tuple[int, str] | None) -> int | None:
        """Compare the head with the last row; return the head's seq when rows lie beyond it."""
        if head is None:
            self.problem(0, "seq 0: truncated (the chain head row is missing)")
            return None
        head_seq, head_mac = head
        if self.rows == 0:
            if head_seq:
                self.problem(1, f"{_span(1, head_seq)}: truncated (the chain head says the log "
                                f"ends at seq {head_seq} but it holds no rows)")
            return None
        if head_seq == self.last_seq:
            legacy_only = self.legacy == self.rows and head_mac == GENESIS_MAC
            if head_mac != self.last_mac and not legacy_only:
                self.problem(head_seq, f"seq {head_seq}: edited (the chain head's MAC differs "
                                       "from the last row's)")
            return None
        if head_seq > self.last_seq:
            self.problem(self.last_seq + 1, f"{_span(self.last_seq + 1, head_seq)}: truncated "
                         f"(the chain head says the log ends at seq {head_seq}; the last row "
                         f"is seq {self.last_seq})")
            return None
        if self.shift and head_seq == self.last_seq - self.shift and head_mac == self.last_mac:
            return None  # a renumbering, already reported
        self.problem(head_seq + 1, f"{_span(head_seq + 1, self.last_seq)}: inserted (after the "
                                   f"chain head, which ends at seq {head_seq})")
        return head_seq

    def _classify(self, beyond_head: int | None) -> None:
        """Tell re-ordered rows from edited ones among the rows that failed."""
        suspects = [s for s in self.suspects if beyond_head is None or s.seq <= beyond_head]
        macs = {s.mac for s in suspects if s.mac} | {s.prev for s in suspects}
        for x in suspects:
            origin: int | None = None
            for y in suspects:
                content = canonical({**x.row, "seq": y.orig_seq})
                for prev in macs:
                    mac = row_mac(self.key, prev, content)
                    if mac == x.mac or mac == y.mac:
                        origin = y.orig_seq
                        break
                if origin is not None:
                    break
            if origin is None:
                self.problem(x.seq, f"seq {x.seq}: edited (its MAC does not match its content)")
            elif origin != x.orig_seq:
                self.problem(x.seq, f"seq {x.seq}: reordered (it holds the row written as "
                                    f"seq {origin})")
            # else: the row is intact; a moved neighbour broke its link (reported there)


def verify(
    engine: Engine,
    key: bytes,
    *,
    anchor: Mapping[str, Any] | None = None,
    batch_size: int = BATCH_ROWS,
) -> VerifyResult:
    """Walk the whole chain in sequence order; name every row that is not as written."""
    if anchor is not None:
        anchor = check_anchor(anchor)
    walk = _Walk(key, anchor)
    for row in iter_rows(engine, batch_size=batch_size):
        walk.feed(row)
    # Rows appended while we walked are fine: follow the head until it stands still.
    head = _head(engine)
    for _ in range(5):
        if head is None or head[0] <= walk.last_seq:
            break
        for row in iter_rows(engine, after_seq=walk.last_seq, batch_size=batch_size):
            walk.feed(row)
        head = _head(engine)
    return walk.finish(head)


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


# -- anchors and export ---------------------------------------------------------

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
        return _utc_iso(value)
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

    head = _head(engine)
    upto = head[0] if head else None
    if upto_seq is not None:
        upto = upto_seq if upto is None else min(upto, upto_seq)
    with engine.connect() as conn:
        last_seq, last_mac = _last_row(conn, upto)
        count = conn.execute(select(func.count()).select_from(audit_events)
                             .where(audit_events.c.seq <= last_seq)).scalar_one()
    return {"last_seq": last_seq, "last_mac": last_mac, "count": int(count),
            "anchored_at": _utc_iso(datetime.now(UTC))}


def head_problem(engine: Engine) -> str | None:
    """Why the chain head disagrees with the last row (``None``: it agrees)."""
    head = _head(engine)
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
    since_utc = _as_utc(since) if since is not None else None
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
        "since": _utc_iso(since_utc) if since_utc else None,
        "filters": used_filters(where) if where is not None else [],
    }


def write_anchor(anchor: Mapping[str, Any], path: Path) -> None:
    path.write_text(json.dumps(anchor, indent=2, sort_keys=True) + "\n", encoding="utf-8")
