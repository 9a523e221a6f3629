"""JSON readers: JSON Lines, one object, and a streamed top-level array."""

from __future__ import annotations

import codecs
import io
import json
import re
from collections.abc import Callable, Iterator
from typing import Any, Final

from connector.intake import limits
from connector.intake.limits import _JSON_WS
from connector.intake.messages import object_pairs
from connector.intake.results import Result, _check, _reject
from connector.intake.source import _Source


def _json_error_text(msg: str) -> str:
    # "Unterminated string starting at" + " at line ..." reads badly.
    return msg.removesuffix(" at")


# Every record is decoded with this: duplicate keys are kept track of (and the
# record rejected), not silently resolved to the last value.
_DECODER: Final = json.JSONDecoder(object_pairs_hook=object_pairs)


def loads(text: str | bytes) -> Any:
    """``json.loads`` for records: a duplicated key is reported by intake's checks."""
    return _DECODER.decode(text.decode("utf-8") if isinstance(text, bytes) else text)


def _iter_jsonl(src: _Source, source: str) -> Iterator[Result]:
    reader = io.BufferedReader(src, limits.CHUNK_SIZE)
    decode = _DECODER.decode
    lineno = src.skipped_lines
    while True:
        line = reader.readline(limits.MAX_RECORD_SIZE + 1)
        if not line:
            return
        lineno += 1
        if len(line) > limits.MAX_RECORD_SIZE and not line.endswith(b"\n"):
            while (rest := reader.readline(limits.CHUNK_SIZE)) and not rest.endswith(b"\n"):
                pass
            yield _reject(source, lineno, f"record too large (over {limits.MAX_RECORD_SIZE} bytes)")
            continue
        if not line.strip(_JSON_WS):
            continue
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as exc:
            yield _reject(source, lineno, f"invalid UTF-8 (line {lineno}, byte {exc.start + 1})")
            continue
        try:
            obj = decode(text)
        except json.JSONDecodeError as exc:
            yield _reject(
                source,
                lineno,
                f"invalid JSON (line {lineno}, column {exc.colno}): {_json_error_text(exc.msg)}",
            )
            continue
        except RecursionError:
            yield _reject(source, lineno, f"invalid JSON (line {lineno}): nested too deeply")
            continue
        except ValueError:
            yield _reject(source, lineno, f"invalid JSON (line {lineno}): number too long")
            continue
        yield _check(obj, source=source, position=lineno)


def _iter_json_object(src: _Source, source: str) -> Iterator[Result]:
    reader = io.BufferedReader(src, limits.CHUNK_SIZE)
    data = reader.read(limits.MAX_RECORD_SIZE + 1)
    if len(data) > limits.MAX_RECORD_SIZE:
        yield _reject(source, 1, f"record too large (over {limits.MAX_RECORD_SIZE} bytes)")
        return
    text = data.decode("utf-8", "surrogateescape")
    decoder = _DECODER
    start = _skip_ws(text, 0)
    try:
        obj, end = decoder.raw_decode(text, start)
    except json.JSONDecodeError as exc:
        msg = _json_error_text(exc.msg)
        line = exc.lineno + src.skipped_lines
        yield _reject(source, 1, f"invalid JSON: {msg} at line {line} column {exc.colno}")
        return
    except RecursionError:
        yield _reject(source, 1, "invalid JSON: nested too deeply")
        return
    except ValueError:
        yield _reject(source, 1, "invalid JSON: number too long")
        return
    if _ESCAPED.search(text, start, end) is not None:
        yield _reject(source, 1, "invalid UTF-8")
    else:
        yield _check(obj, source=source, position=1)
    rest = _skip_ws(text, end)
    if rest < len(text):
        line, col = _line_col(text, rest)
        line += src.skipped_lines
        yield _reject(
            source, 2, f"invalid JSON: unexpected data after the object at line {line} column {col}"
        )


_NON_WS: Final = re.compile(r"[^ \t\r\n]")
_STRUCTURAL: Final = re.compile(r'["\[\]{},]')
_IN_STRING: Final = re.compile(r'["\\\n]')
_ESCAPED: Final = re.compile("[\udc80-\udcff]")  # undecodable bytes (surrogateescape)


def _skip_ws(text: str, i: int) -> int:
    m = _NON_WS.search(text, i)
    return m.start() if m else len(text)


def _line_col(text: str, i: int) -> tuple[int, int]:
    line = text.count("\n", 0, i) + 1
    return line, i - text.rfind("\n", 0, i)


class _Fatal(Exception):
    """The array can't be followed past this point."""


class _ArrayReader:
    """An incremental splitter for a top-level JSON array.

    Holds one element (plus one chunk) at a time. A fast path hands the
    buffer to the C decoder; when that fails, a light scanner finds where the
    element ends (a top-level ``,`` or ``]``, respecting strings) so that a
    syntax error costs only that element.
    """

    def __init__(self, read: Callable[[int], bytes], skipped_lines: int = 0) -> None:
        self._read = read
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="surrogateescape")
        self.buf = ""
        self.pos = 0
        self.eof = False
        self._lines = skipped_lines  # newlines in text already dropped from the buffer
        self._col = 0  # characters after the last dropped newline

    # buffer management

    def _more(self) -> bool:
        if self.eof:
            return False
        data = self._read(limits.CHUNK_SIZE)
        if not data:
            self.eof = True
            self.buf += self._decoder.decode(b"", final=True)
            return False
        self.buf += self._decoder.decode(data)
        return True

    def _compact(self) -> None:
        p = self.pos
        if not p:
            return
        newlines = self.buf.count("\n", 0, p)
        if newlines:
            self._lines += newlines
            self._col = p - self.buf.rfind("\n", 0, p) - 1
        else:
            self._col += p
        self.buf = self.buf[p:]
        self.pos = 0

    def where(self, i: int) -> str:
        newlines = self.buf.count("\n", 0, i)
        if newlines:
            line, col = self._lines + newlines + 1, i - self.buf.rfind("\n", 0, i)
        else:
            line, col = self._lines + 1, self._col + i + 1
        return f"at line {line} column {col}"

    def skip_ws(self) -> str:
        while True:
            m = _NON_WS.search(self.buf, self.pos)
            if m is not None:
                self.pos = m.start()
                return self.buf[self.pos]
            self.pos = len(self.buf)
            self._compact()
            if not self._more() and not self.buf:
                return ""

    # elements

    def elements(self) -> Iterator[tuple[int, object, str | None]]:
        """(position, value, error message or None); raises _Fatal to stop."""
        if self.skip_ws() != "[":
            raise _Fatal(1, f"invalid JSON: expected '[' {self.where(self.pos)}")
        self.pos += 1
        index = 1
        if self.skip_ws() == "]":
            self.pos += 1
            self._trailing(index)
            return
        while True:
            yield (index, *self._element(index))
            c = self.skip_ws()
            index += 1
            if c == ",":
                self.pos += 1
                if self.skip_ws() in ("]", ""):
                    raise _Fatal(index, f"invalid JSON: Expecting value {self.where(self.pos)}")
            elif c == "]":
                self.pos += 1
                self._trailing(index)
                return
            elif c == "":
                raise _Fatal(
                    index, f"invalid JSON: missing ']' at the end {self.where(len(self.buf))}"
                )
            else:
                raise _Fatal(index, f"invalid JSON: Expecting ',' delimiter {self.where(self.pos)}")

    def _trailing(self, index: int) -> None:
        if self.skip_ws() != "":
            raise _Fatal(
                index, f"invalid JSON: unexpected data after the array {self.where(self.pos)}"
            )

    def _element(self, index: int) -> tuple[object, str | None]:
        if self.pos > limits.CHUNK_SIZE:
            self._compact()
        while len(self.buf) - self.pos < limits.CHUNK_SIZE and self._more():
            pass
        start = self.pos
        try:
            obj, stop = _DECODER.raw_decode(self.buf, start)
        except (ValueError, RecursionError):
            pass
        else:
            if stop < len(self.buf) or self.eof:
                return self._decoded(obj, start, stop)
        # Slow path: find where this element ends, then decode it again.
        end, oversize = self._scan_end(start)
        if oversize is not None:
            if end is None:
                raise _Fatal(index, f"{oversize}; cannot continue")
            self.pos = end
            return None, oversize
        try:
            obj, stop = _DECODER.raw_decode(self.buf, start)
        except (ValueError, RecursionError) as exc:
            message = _decode_problem(exc, self.where)
            if end is None:
                raise _Fatal(index, message) from None
            self.pos = end
            return None, message
        after = _skip_ws(self.buf, stop)
        if end is not None and after < end:
            self.pos = end
            return None, f"invalid JSON: Expecting ',' delimiter {self.where(after)}"
        return self._decoded(obj, start, stop)

    def _decoded(self, obj: object, start: int, stop: int) -> tuple[object, str | None]:
        self.pos = stop
        if stop - start > limits.MAX_RECORD_SIZE:
            return None, f"record too large (over {limits.MAX_RECORD_SIZE} characters)"
        if _ESCAPED.search(self.buf, start, stop) is not None:
            return None, "invalid UTF-8"
        return obj, None

    def _scan_end(self, start: int) -> tuple[int | None, str | None]:
        """Where the element at ``start`` ends: (index of the closing ``,`` or
        ``]`` or None at end of input, why it is rejected when it is too large).

        Past limits.MAX_RECORD_SIZE it keeps scanning (dropping what it has read) to
        find the next element, so memory stays bounded.
        """
        i, depth, in_string = start, 0, False
        oversize: str | None = None
        while True:
            buf = self.buf
            if in_string:
                m = _IN_STRING.search(buf, i)
                if m is not None:
                    j = m.start()
                    if buf[j] == "\\":
                        if j + 1 < len(buf):
                            i = j + 2
                            continue
                        i = j
                    else:  # closing quote, or a raw newline: an unterminated string
                        in_string = False
                        i = j + 1
                        continue
                else:
                    i = len(buf)
            else:
                m = _STRUCTURAL.search(buf, i)
                if m is not None:
                    j = m.start()
                    ch = buf[j]
                    i = j + 1
                    if ch == '"':
                        in_string = True
                    elif ch in "[{":
                        depth += 1
                    elif depth:
                        if ch in "]}":
                            depth -= 1
                    elif ch in ",]":
                        return j, oversize
                    continue
                i = len(buf)
            if oversize is None and i - start > limits.MAX_RECORD_SIZE:
                oversize = self._oversize(start)
            if oversize is not None:
                self.pos = i  # drop what was scanned
                self._compact()
                i = 0
            if not self._more():
                return None, oversize

    def _oversize(self, start: int) -> str:
        """Why an element with no end in sight is rejected: a syntax error in
        view, or else its size."""
        try:
            _DECODER.raw_decode(self.buf, start)
        except json.JSONDecodeError as exc:
            # A string or value cut off by the end of the buffer is no proof.
            if exc.pos < len(self.buf) - 1 and not exc.msg.startswith("Unterminated string"):
                return _decode_problem(exc, self.where)
        except (ValueError, RecursionError):
            pass
        return f"record too large (over {limits.MAX_RECORD_SIZE} characters) {self.where(start)}"


def _decode_problem(exc: Exception, where: Callable[[int], str]) -> str:
    if isinstance(exc, json.JSONDecodeError):
        return f"invalid JSON: {_json_error_text(exc.msg)} {where(exc.pos)}"
    if isinstance(exc, RecursionError):
        return "invalid JSON: nested too deeply"
    return "invalid JSON: number too long"


def _iter_json_array(src: _Source, source: str) -> Iterator[Result]:
    reader = _ArrayReader(io.BufferedReader(src, limits.CHUNK_SIZE).read, src.skipped_lines)
    elements = reader.elements()
    while True:
        try:
            position, obj, problem = next(elements)
        except StopIteration:
            return
        except _Fatal as fatal:
            position, message = fatal.args
            yield _reject(source, position, message)
            return
        if problem is not None:
            yield _reject(source, position, problem)
        else:
            yield _check(obj, source=source, position=position)
