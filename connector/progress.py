"""A one-line progress bar on stderr for ``peersync import`` and ``peersync sync``.

It draws only when its stream is a terminal, redrawing in place (``\\r``) at most
every ``interval`` seconds; anywhere else (CI, pipes, CliRunner) it writes nothing at
all, so the commands' output stays byte-for-byte the same. Lines hold counts, sizes,
a rate and an ETA only: never an identifier or any other value of a record.

    with Progress("sync", total=due) as bar:
        bar.update(done)

Import streams its files, so its record total is unknown: it shows records and
their rate, and uses bytes read out of the files' total size as the ETA basis.
"""

from __future__ import annotations

import logging
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import IO, Any

_BAR_WIDTH = 20
DEFAULT_INTERVAL = 0.1  # seconds between redraws
_CLEAR = "\r\x1b[K"


def is_terminal(stream: Any) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except (OSError, ValueError):  # closed or detached
        return False


class Progress:
    """Records done (of ``total`` if known), rate and ETA, redrawn in place on a terminal.

    ``stream`` defaults to ``sys.stderr`` as it is at construction; ``tty`` overrides
    the terminal check (tests); ``clock`` is a monotonic clock in seconds.
    """

    def __init__(
        self,
        label: str,
        *,
        total: int | None = None,
        total_bytes: int | None = None,
        stream: IO[str] | None = None,
        tty: bool | None = None,
        clock: Callable[[], float] = time.monotonic,
        interval: float | None = None,
        width: int | None = None,
    ) -> None:
        self.label = label
        self.total = total
        self.total_bytes = total_bytes
        self.stream: IO[str] = stream if stream is not None else sys.stderr
        self.active = is_terminal(self.stream) if tty is None else tty
        self.clock = clock
        self.interval = DEFAULT_INTERVAL if interval is None else interval
        self.width = width
        self.done = 0
        self.bytes_read = 0
        self.started = clock()
        self._last_draw = self.started
        self._drawn = False
        self._filter: _ClearBeforeLogging | None = None

    # -- counting -----------------------------------------------------------

    def advance(self, n: int = 1) -> None:
        self.done += n
        self._tick()

    def update(self, done: int) -> None:
        self.done = done
        self._tick()

    def add_bytes(self, n: int) -> None:
        self.bytes_read += n
        self._tick()

    # -- drawing ------------------------------------------------------------

    def line(self) -> str:
        """The bar as it would be drawn now (without the carriage return)."""
        elapsed = max(self.clock() - self.started, 1e-9)
        rate = self.done / elapsed
        parts = [f"{self.label:<6}"]
        eta: float | None = None
        if self.total is not None:
            total = max(self.total, self.done)  # retries and rescans may add to it
            share = self.done / total if total else 1.0
            filled = int(share * _BAR_WIDTH)
            parts.append(f"{self.done:,}/{total:,} records")
            parts.append("[" + "#" * filled + "-" * (_BAR_WIDTH - filled) + f"] {share:4.0%}")
            if rate > 0:
                eta = (total - self.done) / rate
        else:
            parts.append(f"{self.done:,} records")
            if self.total_bytes:
                size = max(self.total_bytes, self.bytes_read)
                parts.append(f"{_size(self.bytes_read)}/{_size(size)}"
                             f" {self.bytes_read / size:4.0%}")
                byte_rate = self.bytes_read / elapsed
                if byte_rate > 0:
                    eta = (size - self.bytes_read) / byte_rate
        parts.append(f"{rate:,.0f}/s" if rate >= 100 else f"{rate:.1f}/s")
        parts.append("ETA " + (_duration(eta) if eta is not None else "--:--"))
        return "  ".join(parts)

    def _tick(self) -> None:
        if not self.active:
            return
        now = self.clock()
        if now - self._last_draw >= self.interval:
            self._last_draw = now
            self.draw()

    def draw(self) -> None:
        """Redraw the line now (a terminal only)."""
        if not self.active:
            return
        width = self.width or shutil.get_terminal_size((80, 24)).columns
        text = self.line()[: max(width - 1, 10)]  # never wrap: \r could not redraw it
        self.stream.write(_CLEAR + text)
        self.stream.flush()
        self._drawn = True

    def clear(self) -> None:
        """Blank the line (before another message on the terminal); the next tick redraws."""
        if self._drawn:
            self.stream.write(_CLEAR)
            self.stream.flush()
            self._drawn = False

    # -- as a context -------------------------------------------------------

    def __enter__(self) -> Progress:
        if self.active:
            self._filter = _ClearBeforeLogging(self)
            for handler in logging.getLogger().handlers:
                handler.addFilter(self._filter)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        if self._filter is not None:
            for handler in logging.getLogger().handlers:
                handler.removeFilter(self._filter)
            self._filter = None
        self.clear()


class _ClearBeforeLogging(logging.Filter):
    """Blanks the bar before a log line is written, so the two never share a line."""

    def __init__(self, progress: Progress) -> None:
        super().__init__()
        self.progress = progress

    def filter(self, record: logging.LogRecord) -> bool:
        self.progress.clear()
        return True


class CountingReader:
    """A file opened on the first read, counting its bytes into a :class:`Progress`.

    ``name`` is the path, so the intake still tells the format by the extension.
    """

    def __init__(self, path: Path, progress: Progress) -> None:
        self.name = str(path)
        self.progress = progress
        self._file: IO[bytes] | None = None

    def read(self, size: int = -1) -> bytes:
        if self._file is None:
            self._file = open(self.name, "rb")  # noqa: SIM115 - closed by close()
        data = self._file.read(size)
        self.progress.add_bytes(len(data))
        return data

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"  # pragma: no cover - the loop always returns


def _duration(seconds: float) -> str:
    seconds = int(seconds + 0.5)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"
