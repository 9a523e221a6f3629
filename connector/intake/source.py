"""Byte sources: paths, streams, bytes or chunks, with a look-ahead for sniffing."""

from __future__ import annotations

import io
import json
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any, TypeAlias

from connector.intake import limits
from connector.intake.limits import _BOM, _EXTENSIONS, _JSON_WS, _NON_WS_BYTES

# --------------------------------------------------------------------------
# Byte sources


# A path, the content itself (bytes), a binary or text stream, or chunks.
Input: TypeAlias = (
    str
    | os.PathLike[str]
    | bytes
    | bytearray
    | IO[bytes]
    | IO[str]
    | Iterable[bytes]
    | Iterable[str]
)


class _Source(io.RawIOBase):
    """A raw byte stream over a path, a stream (bytes or text) or an iterable of
    chunks, with a look-ahead buffer for sniffing the format."""

    def __init__(self, read: Callable[[int], bytes]) -> None:
        super().__init__()
        self._read_chunk = read
        self.head = bytearray()
        self._eof = False
        self.skipped_lines = 0  # blank lines dropped by first_data()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        size = len(view)
        if not self.head:
            if self._eof:
                return 0
            data = self._read_chunk(size)
            if not data:
                self._eof = True
                return 0
            if len(data) <= size:
                view[: len(data)] = data
                return len(data)
            self.head += data
        n = min(size, len(self.head))
        view[:n] = self.head[:n]
        del self.head[:n]
        return n

    def pull(self) -> bool:
        """Read one more chunk into the look-ahead buffer; False at end of input."""
        if self._eof:
            return False
        data = self._read_chunk(limits.CHUNK_SIZE)
        if not data:
            self._eof = True
            return False
        self.head += data
        return True

    def strip_bom(self) -> None:
        while len(self.head) < len(_BOM) and self.pull():
            pass
        if self.head.startswith(_BOM):
            del self.head[: len(_BOM)]

    def first_data(self) -> int | None:
        """Index in the look-ahead of the first non-whitespace byte (None: no data).

        Leading blank lines are dropped as they are read and counted in
        ``skipped_lines``, so a long run of them can't fill the memory.
        """
        while True:
            m = _NON_WS_BYTES.search(self.head)
            if m is not None:
                return m.start()
            last_newline = self.head.rfind(b"\n")
            if last_newline >= 0:
                self.skipped_lines += self.head.count(b"\n", 0, last_newline + 1)
                del self.head[: last_newline + 1]
            if not self.pull():
                return None

    def next_non_ws(self, start: int) -> int | None:
        """Index in the look-ahead of the first non-whitespace byte from ``start``
        (None at the end of input or past limits.MAX_RECORD_SIZE)."""
        while True:
            m = _NON_WS_BYTES.search(self.head, start)
            if m is not None:
                return m.start()
            if len(self.head) > limits.MAX_RECORD_SIZE or not self.pull():
                return None

    def looks_like_json_lines(self, start: int) -> bool:
        """At an object starting at ``start``: is this JSON Lines?

        Yes when the first line is a complete object on its own, or when the
        next non-blank line starts another object (never valid JSON as one
        document), whether or not the first line itself is broken.
        """
        nl = self._line_end(start)
        if nl is None:
            return False  # one line: the same records either way
        line = bytes(self.head[start:nl]).strip(_JSON_WS)
        if line.endswith(b"}"):
            try:
                if isinstance(json.loads(line), dict):
                    return True
            except (ValueError, RecursionError):
                pass
        return self.next_line_is_object(nl)

    def next_line_is_object(self, nl: int) -> bool:
        """Does the next non-blank line after the newline at ``nl`` start with ``{``?"""
        after = self.next_non_ws(nl + 1)
        return after is not None and self.head[after] == ord("{")

    def first_line_end(self, start: int) -> int | None:
        return self._line_end(start)

    def _line_end(self, start: int) -> int | None:
        while (nl := self.head.find(b"\n", start)) < 0:
            if len(self.head) > limits.MAX_RECORD_SIZE or not self.pull():
                return None
        return nl


def _reader_for(
    obj: Input,
) -> tuple[Callable[[int], bytes], Callable[[], None] | None, str | None]:
    """(read function, close function, name for format detection)."""
    if isinstance(obj, str | os.PathLike):
        path = Path(obj)
        fh = open(path, "rb")  # noqa: SIM115 - closed by iter_records
        return fh.read, fh.close, path.name
    if isinstance(obj, bytes | bytearray | memoryview):
        chunks: Iterator[bytes | str] = iter([bytes(obj)])
        return _chunk_reader(chunks), None, None
    read = getattr(obj, "read", None)
    if callable(read):
        name = getattr(obj, "name", None)

        def read_stream(size: int) -> bytes:
            data = read(size)
            if isinstance(data, str):
                return data.encode("utf-8", "surrogatepass")
            return bytes(data) if data else b""

        return read_stream, None, name if isinstance(name, str) else None
    if isinstance(obj, Iterable):
        return _chunk_reader(iter(obj)), None, None
    raise TypeError(f"cannot read records from a {type(obj).__name__}")


def _chunk_reader(chunks: Iterator[bytes | str]) -> Callable[[int], bytes]:
    def read(size: int) -> bytes:
        for chunk in chunks:
            data = chunk.encode("utf-8", "surrogatepass") if isinstance(chunk, str) else chunk
            if data:
                return bytes(data)
        return b""

    return read


def _format_from_name(name: str | None) -> str | None:
    if not name:
        return None
    return _EXTENSIONS.get(Path(name).suffix.lower())
