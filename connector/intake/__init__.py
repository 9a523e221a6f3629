"""Intake: read encounter records and check them against the intake contract.

The contract is ``contract/CONTRACT.md`` with its machine-readable form
``contract/encounter.schema.json`` (JSON Schema 2020-12). This module

* validates one decoded object (:func:`validate_record`), reporting *every*
  violation as a :class:`~connector.errors.FieldError` with a dotted path and a
  message that never repeats the offending value (it may be PHI);
* streams records out of files and streams (:func:`iter_records`): one JSON
  object, a JSON array, JSON Lines or CSV, in bounded memory, one
  :class:`Accepted` or :class:`Rejected` per record, so that a bad record never
  stops the good ones;
* does the same for payloads already decoded by the web app
  (:func:`parse_payload`).

Positions are 1-based: the line number in JSON Lines, the data-row number in
CSV (1 = the first row after the header), the element number in a JSON array,
and 1 for a single object.
"""

from __future__ import annotations

from collections.abc import Iterator

from connector.intake.csv_reader import CSV_COLUMNS, _iter_csv
from connector.intake.json_readers import _iter_json_array, _iter_json_object, _iter_jsonl, loads
from connector.intake.limits import _FORMAT_ALIASES, FORMATS
from connector.intake.results import (
    Accepted,
    Rejected,
    Result,
    _reject,
    parse_payload,
    validate_record,
)
from connector.intake.source import Input, _format_from_name, _reader_for, _Source
from connector.intake.validator import SCHEMA, SCHEMA_PATH, VALIDATOR

__all__ = [
    "CSV_COLUMNS",
    "SCHEMA_PATH",
    "VALIDATOR",
    "Input",
    "SCHEMA",
    "FORMATS",
    "Accepted",
    "Rejected",
    "Result",
    "validate_record",
    "iter_records",
    "parse_payload",
    "loads",
]


# --------------------------------------------------------------------------
# iter_records


def iter_records(
    path_or_stream: Input, *, source: str, format: str | None = None
) -> Iterator[Result]:
    """Stream the records of a file, stream, bytes or iterable of chunks.

    ``path_or_stream`` is a path (opened and closed here), ``bytes`` (the
    content itself), a binary or text stream, or an iterable of ``bytes`` /
    ``str`` chunks. Give CSV as bytes or a text stream opened with
    ``newline=""``, or line breaks inside quoted cells can't be kept as written.

    ``format`` ("json", "jsonl"/"ndjson", "csv") overrides detection, which
    uses the extension (``.json``, ``.jsonl``/``.ndjson``, ``.csv``) and, for
    ``.json`` or an unknown name, the first non-space byte: ``[`` an array,
    ``{`` one object or JSON Lines (anything else, when the name says nothing:
    CSV). Memory stays bounded by the largest record, whatever the file size.
    A bad format name raises ``ValueError`` at once; the file is opened on the
    first ``next()``.
    """
    forced: str | None = None
    if format is not None:
        forced = _FORMAT_ALIASES.get(format.lower())
        if forced is None:
            raise ValueError(f"unknown format {format!r}; expected one of {', '.join(FORMATS)}")
    return _iter_records(path_or_stream, source, forced)


def _later_lines_are_objects(src: _Source, first: int) -> bool:
    nl = src.first_line_end(first)
    return nl is not None and src.next_line_is_object(nl)


def _iter_records(path_or_stream: Input, source: str, forced: str | None) -> Iterator[Result]:
    read, close, name = _reader_for(path_or_stream)
    try:
        src = _Source(read)
        src.strip_bom()
        by_name = _format_from_name(name)
        fmt = forced or by_name
        if fmt == "csv":
            yield from _iter_csv(src, source)
            return
        if fmt == "jsonl":
            yield from _iter_jsonl(src, source)
            return
        first = src.first_data()
        if first is None:
            return  # empty input: no records
        byte = src.head[first]
        if byte == ord("["):
            yield from _iter_json_array(src, source)
        elif byte == ord("{"):
            if forced is None and src.looks_like_json_lines(first):
                yield from _iter_jsonl(src, source)
            else:
                yield from _iter_json_object(src, source)
        elif forced is None and _later_lines_are_objects(src, first):
            # JSON Lines whose first line is broken, whatever the name says.
            yield from _iter_jsonl(src, source)
        elif fmt is None:
            yield from _iter_csv(src, source)
        else:
            yield _reject(source, 1, "invalid JSON: expected an object '{' or an array '['")
    finally:
        if close is not None:
            close()
