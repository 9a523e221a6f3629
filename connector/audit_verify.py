"""`peersync audit verify`'s walk: name every row of the chain that is not as written.

:func:`verify` walks the rows in sequence order, keeping only a bounded window,
and names every edited, inserted, deleted, re-ordered or truncated row; an
anchor (:mod:`connector.audit_export`) also catches a tail cut off together with
a head moved back. A chain checked with the public development key, or holding
rows keyed with it, proves nothing: :func:`verify` fails it. Part of
:mod:`connector.audit` (which re-exports every name); imports neither the store
nor the CLI.
"""

from __future__ import annotations

import hmac
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from connector.audit_chain import (
    BATCH_ROWS,
    GENESIS_MAC,
    canonical,
    iter_rows,
    read_head,
    row_mac,
)
from connector.audit_export import check_anchor
from connector.audit_key import DEVELOPMENT_KEY, KEY_ENV, is_development_key

if TYPE_CHECKING:
    from sqlalchemy import Engine

MAX_PROBLEMS = 1000  # listed one by one; beyond that, counted
MAX_SHIFT = 8  # how far a renumbering (rows inserted or deleted in the middle) is followed
CROSS_CHECK = 32  # failing rows compared with each other to tell a re-ordering from an edit


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
    head = read_head(engine)
    for _ in range(5):
        if head is None or head[0] <= walk.last_seq:
            break
        for row in iter_rows(engine, after_seq=walk.last_seq, batch_size=batch_size):
            walk.feed(row)
        head = read_head(engine)
    return walk.finish(head)
