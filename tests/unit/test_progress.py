"""The progress bar of `peersync import` and `peersync sync`: drawn on a terminal only."""

from __future__ import annotations

import io
import json
import logging
import re
from collections import Counter
from collections.abc import Iterator
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result

from connector import progress as progress_module
from connector.progress import CountingReader, Progress
from connector.sync.model import SyncSummary
from tests.conftest import DATA, example_dict

CLEAR = "\r\x1b[K"


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_bar_shows_done_of_total_rate_and_eta_on_a_terminal() -> None:
    stream, clock = Terminal(), Clock()
    with Progress("sync", total=1000, stream=stream, clock=clock, width=120) as bar:
        assert bar.active
        clock.now += 10
        bar.update(250)
        drawn = stream.getvalue()
        assert drawn.startswith(CLEAR)
        assert "250/1,000 records" in drawn and "25%" in drawn
        assert "[#####---------------]" in drawn
        assert "25.0/s" in drawn and "ETA 0:30" in drawn
    assert stream.getvalue().endswith(CLEAR)  # closed: the line is blanked for what follows


def test_the_import_bar_counts_records_and_bytes_and_takes_its_eta_from_the_bytes(
        tmp_path: Path) -> None:
    data = tmp_path / "big.jsonl"
    data.write_bytes(b"x" * 4096)
    stream, clock = Terminal(), Clock()
    bar = Progress("import", total_bytes=8192, stream=stream, clock=clock, width=120)
    reader = CountingReader(data, bar)
    clock.now += 2
    assert len(reader.read(4096)) == 4096
    bar.advance(40)
    bar.draw()
    reader.close()
    line = stream.getvalue().rsplit(CLEAR, 1)[-1]
    assert line == "import  40 records  4.0 KB/8.0 KB  50%  20.0/s  ETA 0:02"


def test_redraws_are_throttled_and_never_wider_than_the_terminal() -> None:
    stream, clock = Terminal(), Clock()
    bar = Progress("sync", total=10**9, stream=stream, clock=clock, interval=0.5, width=30)
    bar.advance()
    assert stream.getvalue() == ""  # too soon: nothing flashes for quick commands
    clock.now += 0.6
    bar.advance()
    assert stream.getvalue().count(CLEAR) == 1
    assert len(stream.getvalue()) - len(CLEAR) <= 29


def test_unknown_rate_and_an_eta_before_anything_is_done() -> None:
    line = Progress("sync", total=5, tty=True, stream=Terminal(), clock=Clock()).line()
    assert "0/5 records" in line and "0.0/s" in line and "ETA --:--" in line


def test_nothing_at_all_is_written_when_not_a_terminal() -> None:
    stream, clock = io.StringIO(), Clock()
    with Progress("sync", total=100, stream=stream, clock=clock, interval=0) as bar:
        assert not bar.active
        for done in range(1, 101):
            clock.now += 1
            bar.update(done)
        bar.draw()
        bar.clear()
        logging.getLogger("peersync.test").warning("a log line")
    assert stream.getvalue() == ""


def test_a_log_line_blanks_the_bar_first() -> None:
    stream, clock = Terminal(), Clock()
    handler = logging.StreamHandler(stream)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        with Progress("sync", total=10, stream=stream, clock=clock) as bar:
            clock.now += 1
            bar.update(3)
            logging.getLogger("peersync.test").warning("the EHR is slow")
        assert stream.getvalue().endswith(CLEAR + "the EHR is slow\n")
        assert not handler.filters  # removed again
    finally:
        root.removeHandler(handler)


# -- the commands: unchanged output off a terminal, a bar on one -----------------

# the CLI tests' own PEERSYNC_HOME fixture and runner
from tests.unit.test_cli import home as home  # noqa: E402
from tests.unit.test_cli import run  # noqa: E402


def _mixed(home: Path) -> Path:
    bad = example_dict("in-person-session.json")
    bad["id"] = "ps-bad-7"
    bad["end"] = "2026-11-20T13:00:00-05:00"  # before start
    path = home / "mixed.jsonl"
    path.write_text(json.dumps(example_dict("in-person-session.json")) + "\n{broken json\n"
                    + json.dumps(bad) + "\n", encoding="utf-8")
    return path


IMPORT_STDOUT = "source tool-x: 6 accepted (6 new, 0 unchanged), 2 rejected\n"
IMPORT_STDERR = (
    "tool-x: record 2: invalid JSON (line 2, column 2): Expecting property name enclosed in "
    "double quotes\ntool-x: record 3 (id=ps-bad-7): end: must not be before start\n"
)


def _import(home: Path) -> Result:
    return run("import", "--source", "tool-x", str(_mixed(home)), str(DATA / "batch.jsonl"),
               str(DATA / "export.csv"))


def test_import_off_a_terminal_prints_exactly_what_it_did_before(home: Path) -> None:
    run("init")
    result = _import(home)
    assert result.exit_code == 1
    assert result.stdout == IMPORT_STDOUT  # byte for byte, as before the bar existed
    assert result.stderr == IMPORT_STDERR


def test_import_on_a_terminal_draws_counts_only_and_keeps_errors_on_their_own_lines(
        home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run("init")
    monkeypatch.setattr(progress_module, "is_terminal", lambda stream: True)
    monkeypatch.setattr(progress_module, "DEFAULT_INTERVAL", 0.0)
    result = _import(home)
    assert result.stdout == IMPORT_STDOUT
    bars = [part for part in result.stderr.split(CLEAR) if part.startswith("import")]
    assert bars, result.stderr
    for bar in bars:  # counts, sizes, a rate and an ETA: nothing of a record
        assert re.fullmatch(r"import  [\d,]+ records  [\d.]+ K?B/[\d.]+ K?B +\d+%  "
                            r"[\d,.]+/s  ETA (--:--|[\d:]+)", bar), bar
    errors = "".join(p for p in result.stderr.split(CLEAR) if not p.startswith("import"))
    assert errors == IMPORT_STDERR
    assert result.stderr.endswith(CLEAR)


class _Plan:
    class preset:  # noqa: N801 - stands in for the write plan's attribute
        name = "generic"

    mode = "batch"


class _Engine:
    """Two batches of 3 and 2 records, reported through on_progress as the engine does."""

    plan = _Plan()

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def run(self, *, max_wait_s: float, **kwargs: Any) -> SyncSummary:
        self.calls.append(kwargs)
        summary = SyncSummary()
        for claimed in (3, 2):
            summary.claimed += claimed
            if kwargs.get("on_progress"):
                kwargs["on_progress"](summary)
        summary.bundles = 2
        summary.states = Counter({"synced": 4, "needs_attention": 1})
        summary.errors = ["ps-1: refused (422)"]
        return summary


@pytest.fixture
def engine(home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[_Engine]:
    from connector import cli_sync

    fake = _Engine()
    monkeypatch.setattr(cli_sync, "_engine", lambda *args, **kwargs: fake)
    monkeypatch.setattr(cli_sync, "open_client", lambda: nullcontext(None))
    run("init")
    assert run("import", str(DATA / "batch.jsonl"), str(DATA / "export.csv")).exit_code == 0
    yield fake


SYNC_STDOUT = (
    "syncing to http://127.0.0.1:8090/fhir (preset generic, batch mode); waiting up to 0 s for "
    "scheduled retries\n5 record(s) processed in 2 bundle(s): 1 needs_attention, 4 synced\n"
    "now: 5 pending\n"
)


def test_sync_off_a_terminal_prints_exactly_what_it_did_before(engine: _Engine) -> None:
    result = run("sync", "--max-wait", "0")
    assert result.exit_code == 1
    assert result.stdout == SYNC_STDOUT
    assert result.stderr == "  ps-1: refused (422)\n"
    assert engine.calls == [{}]  # no progress callback: the engine runs as before


def test_sync_on_a_terminal_shows_records_done_of_those_due(
        engine: _Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(progress_module, "is_terminal", lambda stream: True)
    monkeypatch.setattr(progress_module, "DEFAULT_INTERVAL", 0.0)
    result = run("sync", "--max-wait", "0")
    assert result.stdout == SYNC_STDOUT
    bars = [part for part in result.stderr.split(CLEAR) if part.startswith("sync")]
    assert [bar.split()[1] for bar in bars] == ["3/5", "5/5"]
    assert "[############--------]  60%" in bars[0] and "ETA" in bars[0]
    assert result.stderr.endswith(CLEAR + "  ps-1: refused (422)\n")
