"""Intake's limits and format names (tests shrink CHUNK_SIZE and MAX_RECORD_SIZE)."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Final

FORMATS: Final = ("json", "jsonl", "csv")
_FORMAT_ALIASES: Final = {"json": "json", "jsonl": "jsonl", "ndjson": "jsonl", "csv": "csv"}
_EXTENSIONS: Final = {".json": "json", ".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv"}

CHUNK_SIZE = 64 * 1024  # not Final: tests shrink it to split input everywhere
# Largest single record accepted from a file (bytes for JSON Lines/one object,
# characters for a JSON array element). A maximal note (100,000 characters,
# each written as a 12-character surrogate-pair escape) stays well below it.
MAX_RECORD_SIZE = 4 * 1024 * 1024
MAX_NAME_IN_MESSAGE: Final = 64
# The contract's structural limits: a record nests 3 levels (record, group,
# goals list) and holds a few dozen values, so these only stop hostile input
# before the validator spends time (or stack) on it.
MAX_DEPTH: Final = 16
MAX_FIELDS: Final = 5_000  # keys and list items, all levels together
MAX_ERRORS: Final = 50  # errors reported for one record; the rest are counted
MAX_SPAN: Final = timedelta(hours=24)
DOCUMENTATION_TOLERANCE_MINUTES: Final = 1.0
# note.cosigned_at may be this far past the clock that checks it (the source tool's clock)
COSIGN_SKEW: Final = timedelta(minutes=5)

_BOM: Final = b"\xef\xbb\xbf"
_JSON_WS: Final = b" \t\r\n"
_NON_WS_BYTES: Final = re.compile(rb"[^ \t\r\n]")
