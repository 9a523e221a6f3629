"""PHI never in any log line (issue 8): every log record and all stderr, scanned for the test
data's names, birth dates, MRNs and note sentences, after sync against a dead and a live EHR,
the import of hostile files and the web flows (test client and a real werkzeug server)."""

from __future__ import annotations

import csv
import json
import logging
import re
import threading
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from flask import Flask
from werkzeug.serving import make_server

from connector.cli import main
from connector.ehr_sandbox import free_port
from tests.integration.conftest import DATA, SOURCE, Env
from tests.webapp_support import PASSWORDS, Home, csrf_token, document_form, job_id, logged_in

pytestmark = pytest.mark.integration

LOGGERS = ("", "urllib3", "sqlalchemy", "werkzeug", "requests", "peersync", "webapp")
_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


# -- what must never appear ---------------------------------------------------

def _records() -> Iterator[dict[str, Any]]:
    for path in sorted(DATA.iterdir()):
        if path.suffix == ".json":
            data = json.loads(path.read_text("utf-8"))
            yield from data if isinstance(data, list) else [data]
        elif path.suffix == ".jsonl":
            for line in path.read_text("utf-8").splitlines():
                if line.strip():
                    yield json.loads(line)
        elif path.suffix == ".csv":
            text = path.read_text("utf-8")
            for row in csv.DictReader(text.splitlines(keepends=True)):
                yield {"participant": {k.split(".", 1)[1]: v for k, v in row.items()
                                       if k.startswith("participant.")},
                       "note": {"text": row.get("note.text", "")}}


def phi_needles() -> dict[str, re.Pattern[str]]:
    """Each participant name, birth date and MRN, and each note sentence (its first 24
    characters: an echo may be cut), as a case-sensitive pattern."""
    needles: dict[str, re.Pattern[str]] = {}
    for record in _records():
        person = record.get("participant") or {}
        for key in ("given", "family"):
            if person.get(key):
                needles[person[key]] = re.compile(rf"\b{re.escape(person[key])}\b")
        for key in ("mrn", "birth_date"):
            if person.get(key):
                needles[person[key]] = re.compile(re.escape(person[key]))
        text = (record.get("note") or {}).get("text") or ""
        for sentence in re.split(r"(?<=[.!?;])\s+|\n", text):
            sentence = sentence.strip()
            if len(sentence) >= 12:
                needles[sentence[:24]] = re.compile(re.escape(sentence[:24]))
    return needles


def test_the_needles_cover_the_test_data() -> None:
    needles = phi_needles()
    for expected in ("Dana", "Lopez", "Reyes", "O'Neil", "Renée", "MRN-55821", "MRN-70011",
                     "1988-04-12", "Met Dana at the library "):
        assert expected in needles, expected


# -- hostile files (the finding classes of issue 8) ----------------------------

def hostile_files(folder: Path) -> list[Path]:
    folder.mkdir()
    record = json.loads((DATA / "in-person-session.json").read_text("utf-8"))
    files = []
    # a CSV exported without its header row: the first data row becomes the header
    csv_lines = (DATA / "export.csv").read_text("utf-8").splitlines(keepends=True)
    path = folder / "no-header.csv"
    path.write_text("".join(csv_lines[1:]), "utf-8")
    files.append(path)
    # unknown JSON keys named by what the file holds
    unknown = {**record, "id": "ps-h-unknown", "Dana Lopez": "MRN-55821",
               "participant": {**record["participant"], "MRN-55821": "1988-04-12"}}
    path = folder / "unknown-keys.json"
    path.write_text(json.dumps(unknown), "utf-8")
    files.append(path)
    # JSON Lines in a .json file whose first line is broken
    lines = (DATA / "batch.jsonl").read_text("utf-8").splitlines()
    path = folder / "broken-first-line.json"
    path.write_text(lines[0][: len(lines[0]) // 2] + "\n" + "\n".join(lines[1:]) + "\n", "utf-8")
    files.append(path)
    # bad dates: impossible, no offset, and one whose UTC instant leaves year 9999
    for n, (start, end) in enumerate([
        ("2026-02-30T10:00:00-05:00", "2026-02-30T11:00:00-05:00"),
        ("2026-11-20T14:00:00", "2026-11-20T14:50:00"),
        ("9999-12-31T22:00:00-01:00", "9999-12-31T23:59:00-01:00"),
    ]):
        bad = {**record, "id": f"ps-h-date-{n}", "start": start, "end": end,
               "note": {**record["note"], "id": f"N-h-date-{n}"}}
        path = folder / f"bad-date-{n}.json"
        path.write_text(json.dumps(bad), "utf-8")
        files.append(path)
    return files


# -- the capture ---------------------------------------------------------------

class Capture:
    """Everything an operator could see: log records (formatted, with tracebacks) and the
    CLI's stdout/stderr (and any exception it would have printed)."""

    def __init__(self, caplog: pytest.LogCaptureFixture) -> None:
        self.caplog = caplog
        self.texts: list[tuple[str, str]] = []

    def cli(self, env: Env, *args: str) -> Any:
        result = env.runner.invoke(main, list(args), catch_exceptions=True)
        where = "peersync " + " ".join(a if "/" not in a else Path(a).name for a in args)
        self.texts.append((f"{where}: stdout", result.stdout))
        self.texts.append((f"{where}: stderr", result.stderr))
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            self.texts.append((f"{where}: traceback",
                               "".join(traceback.format_exception(result.exception))))
        return result

    def all_texts(self, capfd: pytest.CaptureFixture[str]) -> list[tuple[str, str]]:
        formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")
        logs = [(f"log record {r.name}", formatter.format(r)) for r in self.caplog.records]
        out, err = capfd.readouterr()
        return [*self.texts, *logs, ("process stdout", out), ("process stderr", err)]


def scan(texts: list[tuple[str, str]]) -> list[str]:
    hits = []
    for needle, pattern in phi_needles().items():
        for origin, text in texts:
            match = pattern.search(text or "")
            if match:
                start = max(0, match.start() - 80)
                hits.append(f"{needle!r} in {origin}: ...{text[start:match.end() + 40]!r}...")
    return hits


def _web_flows(app: Flask, home: Home) -> None:
    """Log in, document a note, search the EHR for a participant, filter records, open a
    record and the audit log: what an admin and a specialist do in a day."""
    alex = logged_in(app, "specialist")
    form = document_form(alex)
    note = "Met Dana at the library to work on the housing application."
    alex.post("/document/", data={
        **form, "participant.id": "P-1001", "participant.mrn": "MRN-55821",
        "participant.given": "Dana", "participant.family": "Lopez",
        "participant.birth_date": "1988-04-12",
        "date": "2026-11-23", "start_time": "09:00", "end_time": "09:30",
        "specialist.family": "Kim", "note.text": note})
    alex.post("/document/", data={  # refused: end before start, PHI in every other field
        **form, "participant.id": "P-1001", "participant.mrn": "MRN-55821",
        "date": "2026-11-23", "start_time": "10:00", "end_time": "09:00", "note.text": note})
    admin = logged_in(app, "admin")
    admin.get("/")
    admin.get("/matching/")
    admin.get(f"/matching/patient?source={SOURCE}&participant=P-1004")
    token = csrf_token(admin, "/matching/")
    admin.post("/matching/patient/search", data={
        "csrf_token": token, "source": SOURCE, "participant": "P-1004",
        "name": "Dana Lopez", "birthdate": "1988-04-12", "mrn": "MRN-55821"})
    admin.get("/records/?q=Dana+Lopez&state=synced")
    job = job_id(home, "ps-2026-000123")
    admin.get(f"/records/{job}")
    admin.get("/audit/?record=ps-2026-000123")


def _served_flows(app: Flask) -> None:
    """The same search through a real werkzeug server: its access log is captured too."""
    app.config["SESSION_COOKIE_SECURE"] = False  # plain http on 127.0.0.1
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_port}"
    try:
        with requests.Session() as web:
            token = _CSRF.search(web.get(f"{base}/login", timeout=30).text).group(1)  # type: ignore[union-attr]
            web.post(f"{base}/login", data={"name": "admin", "password": PASSWORDS["admin"],
                                            "csrf_token": token}, timeout=30)
            page = web.get(f"{base}/matching/patient",
                           params={"source": SOURCE, "participant": "P-1004"}, timeout=60)
            token = _CSRF.search(page.text).group(1)  # type: ignore[union-attr]
            web.post(f"{base}/matching/patient/search", data={
                "csrf_token": token, "source": SOURCE, "participant": "P-1004",
                "name": "Lee Park", "birthdate": "1988-04-12", "mrn": "MRN-55821"}, timeout=60)
            # an admin typing a name into the records filter: a GET, so the log redacts it
            web.get(f"{base}/records/", params={"q": "Dana Lopez", "state": "synced"},
                    timeout=30)
    finally:
        server.shutdown()
        thread.join(10)
        server.server_close()


def test_no_phi_in_any_log_line_or_stderr(
    env: Env, home: Home, app: Flask, tmp_path: Path,
    caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str],
) -> None:
    for name in LOGGERS:
        caplog.set_level(logging.DEBUG, logger=name or None)
    capture = Capture(caplog)
    env.set_keys("sync", max_wait_s=2)
    live = env.base_url
    dead = f"http://127.0.0.1:{free_port()}/fhir"  # a closed port

    # a live EHR: the contract examples (not the CSV yet) land
    capture.cli(env, "import", "--source", SOURCE,
                *[str(DATA / n) for n in ("in-person-session.json", "batch.jsonl",
                                          "part2-without-consent.json")])
    capture.cli(env, "sync")
    # hostile files
    for path in hostile_files(tmp_path / "hostile"):
        capture.cli(env, "import", "--source", SOURCE, str(path))
    capture.cli(env, "import", "--source", SOURCE, str(DATA / "export.csv"))
    # the EHR down: its records need Patient?identifier=<system>|MRN-700xx searches
    env.configure(base_url=dead)
    capture.cli(env, "sync")
    capture.cli(env, "-vv", "sync")
    capture.cli(env, "config", "check")
    _web_flows(app, home)  # against the dead EHR: the matching search fails, and is retried
    # the EHR back
    env.configure(base_url=live)
    capture.cli(env, "-vv", "sync")
    capture.cli(env, "status")
    _web_flows(app, home)
    _served_flows(app)

    texts = capture.all_texts(capfd)
    hits = scan(texts)
    assert not hits, f"{len(hits)} PHI hit(s):\n" + "\n".join(hits)
    everything = "\n".join(text for _, text in texts)
    # the scan is not vacuous: the outage, the requests and the access log were all logged
    assert "Retrying" in everything and "identifier=<redacted>" in everything
    assert "/fhir/Patient?" in everything
    assert "POST /matching/patient/search HTTP/1.1" in everything
    assert "GET /records/?q=<redacted>&state=<redacted> HTTP/1.1" in everything


# -- the patient search is a POST ----------------------------------------------

def test_patient_search_is_a_csrf_checked_post_and_the_url_takes_ids_only(
    env: Env, home: Home, app: Flask,
) -> None:
    env.import_("batch.jsonl")
    env.run("sync")  # P-1004 (Lee Park, no MRN) waits for a match
    admin = logged_in(app, "admin")
    # the URL's name/birthdate/mrn are ignored: the form is prefilled from the record only
    html = admin.get(f"/matching/patient?source={SOURCE}&participant=P-1004&searched=1"
                     "&name=Dana+Lopez&mrn=MRN-55821").get_data(as_text=True)
    assert 'value="Lee Park"' in html and "Dana" not in html and "MRN-55821" not in html
    form = re.search(r'<form class="filters" method="(\w+)" action="([^"]+)"', html)
    assert form and form.groups() == ("post", "/matching/patient/search")
    token = _CSRF.search(html).group(1)  # type: ignore[union-attr]
    assert admin.post("/matching/patient/search", data={
        "source": SOURCE, "participant": "P-1004", "name": "Sam Okafor"}).status_code == 400
    found = admin.post("/matching/patient/search", data={
        "csrf_token": token, "source": SOURCE, "participant": "P-1004",
        "name": "Sam Okafor", "birthdate": "", "mrn": ""}).get_data(as_text=True)
    assert "Sam Okafor" in found and 'id="results"' in found
    assert admin.post("/matching/patient/search", data={
        "csrf_token": token, "source": SOURCE, "participant": "P-nobody",
        "name": "x"}).status_code == 404
    auditor = logged_in(app, "auditor")
    assert auditor.post("/matching/patient/search", data={  # the role is checked first
        "source": SOURCE, "participant": "P-1004", "name": "x"}).status_code == 403
