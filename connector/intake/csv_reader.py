"""CSV: a header row of contract paths, one record per row."""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterator, Mapping
from typing import Any, Final

from connector.errors import FieldError
from connector.intake import limits
from connector.intake.json_readers import _ESCAPED
from connector.intake.results import Result, _check, _reject
from connector.intake.source import _Source
from connector.intake.validator import _ID_RE, SCHEMA

# --------------------------------------------------------------------------
# CSV


def _csv_columns(
    schema: Mapping[str, Any], prefix: str = ""
) -> tuple[dict[str, Mapping[str, Any]], dict[str, str]]:
    """(leaf path -> its schema, group path -> an example leaf), from the schema."""
    leaves: dict[str, Mapping[str, Any]] = {}
    groups: dict[str, str] = {}
    for name, sub in schema.get("properties", {}).items():
        path = f"{prefix}{name}"
        if sub.get("type") == "object" and "properties" in sub:
            sub_leaves, sub_groups = _csv_columns(sub, path + ".")
            leaves.update(sub_leaves)
            groups.update(sub_groups)
            groups[path] = next(iter(sub_leaves))
        else:
            leaves[path] = sub
    return leaves, groups


CSV_COLUMNS, _CSV_GROUPS = _csv_columns(SCHEMA)
_INT_RE: Final = re.compile(r"-?[0-9]+")
_NUM_RE: Final = re.compile(r"-?[0-9]+(?:\.[0-9]+)?")


def _convert(schema: Mapping[str, Any], cell: str) -> tuple[Any, str | None]:
    """A CSV cell -> (value, error message) by the schema's type for its column."""
    kind = schema.get("type")
    if kind == "integer":
        if _INT_RE.fullmatch(cell):
            try:
                return int(cell), None
            except ValueError:  # more digits than int() accepts
                pass
        return None, "must be an integer"
    if kind == "number":
        if _NUM_RE.fullmatch(cell):
            try:
                return (float(cell) if "." in cell else int(cell)), None
            except ValueError:
                pass
        return None, "must be a number (digits, optionally with a '.' decimal part)"
    if kind == "boolean":
        if cell == "true":
            return True, None
        if cell == "false":
            return False, None
        return None, "must be true or false"
    if kind == "array":
        return [item for part in cell.split(";") if (item := part.strip())], None
    return cell, None


MSG_NO_HEADER: Final = (
    "the first row is not a header of contract paths "
    "(was the CSV exported without its header row?)"
)
MSG_UNKNOWN_COLUMN: Final = "its header names no field of the contract"


class _Lines:
    """The physical lines under a csv.reader: numbered, the current row's kept,
    and lines put back to be read again when a row turns out broken."""

    def __init__(self, text: io.TextIOBase) -> None:
        self._text = text
        self._back: list[str] = []  # a stack: the next line to give is last
        self.row: list[str] = []  # the lines of the row being read
        self.row_start = 1  # line number of the row's first line
        self._next = 1

    def __iter__(self) -> _Lines:
        return self

    def __next__(self) -> str:
        line = self._back.pop() if self._back else self._text.readline()
        if not line:
            raise StopIteration
        self.row.append(line)
        self._next += 1
        return line

    def start_row(self) -> None:
        self.row = []
        self.row_start = self._next

    def reread_after_first(self) -> None:
        """Put back every line of the current row but its first."""
        rest = self.row[1:]
        self._back.extend(reversed(rest))
        self._next -= len(rest)
        self.row = self.row[:1]


def _iter_csv(src: _Source, source: str) -> Iterator[Result]:
    text = io.TextIOWrapper(
        io.BufferedReader(src, limits.CHUNK_SIZE),
        encoding="utf-8-sig",
        errors="surrogateescape",
        newline="",
    )
    lines = _Lines(text)
    reader = csv.reader(lines, strict=True)
    try:
        lines.start_row()
        header = next(reader)
        while not header:  # blank lines before the header
            lines.start_row()
            header = next(reader)
    except StopIteration:
        return
    except csv.Error as exc:
        yield _reject(source, 1, f"invalid CSV header at line {lines.row_start}: {exc}")
        return

    # Problems with the header reject every row (nothing is silently dropped).
    # Header cells are named only when they are contract paths: any other text
    # may be data (a first row of names and MRNs) and is named by its position.
    header_errors: list[FieldError] = []
    columns: list[tuple[str, Mapping[str, Any]] | None] = []
    unnamed: set[int] = set()
    seen_names: set[str] = set()
    known = sum(1 for name in header if name in CSV_COLUMNS or name in _CSV_GROUPS)
    if not known and any(header):
        header_errors.append(FieldError("", MSG_NO_HEADER))
        yield _reject(source, 0, f"line {lines.row_start}: {MSG_NO_HEADER}")
    for number, name in enumerate(header, start=1):
        columns.append(None)
        if name == "":
            unnamed.add(number - 1)
        elif not known:
            pass  # one error for the whole header, above
        elif name in seen_names:
            where = name if name in CSV_COLUMNS else f"<column {number}>"
            header_errors.append(FieldError(where, "duplicate column"))
        elif name in _CSV_GROUPS:
            header_errors.append(
                FieldError(
                    name,
                    "is a group of fields, not a column: "
                    f"use its dotted fields (e.g. {_CSV_GROUPS[name]})",
                )
            )
        elif name not in CSV_COLUMNS:
            header_errors.append(FieldError(f"<column {number}>", MSG_UNKNOWN_COLUMN))
        else:
            columns[-1] = (name, CSV_COLUMNS[name])
        seen_names.add(name)
    id_index = header.index("id") if "id" in header and header.count("id") == 1 else None
    width = len(header)

    position = 0
    while True:
        lines.start_row()
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            position += 1
            # Never merge the rows after a broken one (an unterminated quote
            # runs on to the end): reject its first line, read on from the next.
            lines.reread_after_first()
            reader = csv.reader(lines, strict=True)
            yield _reject(
                source,
                position,
                f"invalid CSV at line {lines.row_start}: {exc}; the line was skipped",
            )
            continue
        position += 1
        if not row:
            continue  # blank line
        record_id = None
        if id_index is not None and id_index < len(row):
            candidate = row[id_index]
            if _ID_RE.search(candidate) is not None:
                record_id = candidate
        if len(row) != width:
            message = f"row has {len(row)} cells but the header has {width} columns"
            if len(lines.row) > 1:
                # A quoted cell ran over several lines: most likely an
                # unterminated quote that took in the rows after it.
                lines.reread_after_first()
                reader = csv.reader(lines, strict=True)
                message = f"invalid CSV at line {lines.row_start}: {message}; the line was skipped"
                record_id = None
            else:
                message = f"line {lines.row_start}: {message}"
            yield _reject(source, position, message, record_id=record_id)
            continue
        errors = list(header_errors)
        obj: dict[str, Any] = {}
        for index, cell in enumerate(row):
            column = columns[index]
            if cell == "":
                continue
            if column is None:
                if index in unnamed:
                    errors.append(FieldError("", f"column {index + 1} has a value but no name"))
                continue
            path, schema = column
            if not cell.isascii() and _ESCAPED.search(cell) is not None:
                errors.append(FieldError(path, "invalid UTF-8"))
                continue
            value, problem = _convert(schema, cell)
            if problem is not None:
                errors.append(FieldError(path, problem))
                continue
            target = obj
            *parents, leaf = path.split(".")
            for parent in parents:
                target = target.setdefault(parent, {})
            target[leaf] = value
        yield _check(obj, source=source, position=position, pre_errors=errors)
