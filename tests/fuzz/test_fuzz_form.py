"""Fuzz (issue 8): hostile submissions of the specialist's Document form (webapp/document.py).

500 generated submissions, posted as a logged-in specialist with a valid CSRF
token and a server-signed start time, through Flask's test client: values of
the wrong shape or length, control characters, invalid UTF-8, huge strings,
missing, repeated and unknown fields, bad dates and times, unicode edge cases.
Every submission carries the PHI marker (CANARY) in its note text and names,
and most injected values carry it too.

For each one: no 5xx; either the record is accepted (302 to the record, and
stored) or the form comes back (422) with errors at named fields (or a general
message) that never hold the marker or an injected value. The marker may be in
the page only inside the form's re-filled values, which must be exactly what
was typed (escaped). No log record, at any level, holds the marker. A good
submission after every few bad ones is stored. Deterministic and fast.
"""

from __future__ import annotations

import logging
import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus

import pytest
from flask import Flask
from flask.testing import FlaskClient
from hypothesis import example, given
from hypothesis import strategies as st
from markupsafe import escape
from werkzeug import urls  # noqa: F401  (registers the "werkzeug.url_quote" codec handler)

from tests.fuzz.strategies import CANARY, fuzz_settings
from tests.webapp_support import DOCUMENT_FORM

SUBMISSIONS = 500
GOOD_EVERY = 10  # a good submission before every 10th bad one
FIGURES: dict[str, int] = {}

TEXT_FIELDS = (
    "participant.id", "participant.mrn", "participant.given", "participant.family",
    "participant.birth_date", "specialist.given", "specialist.family", "specialist.credential",
    "specialist.npi", "service.code", "service.modality", "service.setting",
    "service.group_size", "date", "start_time", "end_time", "status", "note.text", "goals",
    "consent.status", "consent.id",
)
SELECTS = {"service.modality", "service.setting", "status", "consent.status"}
FIELDS = TEXT_FIELDS + ("part2",)
ERROR_IDS = {name.replace(".", "-") for name in FIELDS}

# A valid form; the marker in free text (names, note) rides along with every submission.
GOOD = {
    **DOCUMENT_FORM,
    "participant.given": "Dana" + CANARY,
    "note.text": "Talked through the lease renewal " + CANARY + ".\nNext: call the landlord.",
}

_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')
_STARTED = re.compile(r'name="started" value="([^"]+)"')
_INPUT = re.compile(r'<input (?:id="[^"]*" )?type="[^"]*" name="([^"]+)" value="([^"]*)"')
_TEXTAREA = re.compile(r'(<textarea id="note-text" name="note\.text"[^>]*>)(.*?)(</textarea>)',
                       re.S)
_FIELD_ERROR = re.compile(r'<p class="field-error" id="err-([^"]+)">(.*?)</p>', re.S)
# the error summary: a link to each field with an error, or the messages of no field
_GENERAL = re.compile(r'<div class="df-error-summary" id="form-errors"[^>]*>(.*?)</div>', re.S)


# -- strategies: form values are strings (or raw bytes) -----------------------

Value = str | bytes
Pair = tuple[str, Value]


def _marked(plain: list[str]) -> st.SearchStrategy[str]:
    """Each value as is, or with the marker before or after it."""
    return st.sampled_from(plain).flatmap(
        lambda v: st.sampled_from([v, v + CANARY, CANARY + v]))


_SPECIALS = ["\x00", "\x1b[2J", "\x7f", "\x85", "\x9f", "\n", "\r\n", "\t", "\u2028", "\u202e",
             "\ufeff", "\u200b", "\ufffd", "\U0001f600", "e\u0301", "\U0001d7d9", '"', "'", "<",
             "</textarea><script>alert(1)</script>", "&amp;", "{{ 7*7 }}", "%00", "\\", "&",
             "=", "+", "; DROP TABLE record_versions; --", "${jndi:x}", "\u0130", "ß"]
_BAD_DATES = ["2026-02-30", "2026-13-01", "2026-00-10", "0000-01-01", "0001-01-01",
              "9999-12-31", "10000-01-01", "20261123", "2026-W47-1", "2026-327",
              "\uff12\uff10\uff12\uff16-11-23", "2026-11-23T10:00", "2026-11-23Z", "2026/11/23",
              "-2026-11-23", "+2026-11-23", "23-11-2026", "2026-1-3", "2026-11-23\x00",
              "1988-02-29", "1900-01-01", "2100-01-01"]
_BAD_TIMES = ["24:00", "23:60", "10:00:60", "10", "1000", "10:00:00.123456789",
              "10:00:00.1234567", "10:00+05:00", "10:00Z", "10:00:00-23:59", "10:00+24:00",
              "T10:00", "\uff11\uff10:00", "-1:00", "10:61", "00:00", "23:59:59.999999",
              "10:00 PM", "10.00", "1:00", "10:00:00,5", "02:30", "01:30"]
_NUMBERS = ["0", "1", "2", "-5", "2147483647", "2147483648", "9" * 4000, "9" * 5000,
            "1e3", "2.0", "\uff11\uff12", "1_000", "0x10", "NaN", "inf", "-0", "+3",
            "\u0663", "true", "[1, 2]", '{"a": 1}', "null", "None"]
_CHOICES = ["completed", "COMPLETED", "cancelled ", "no_show\x00", "entered_in_error",
            "in_person", "in person", "video", "phone", "office", "justice", "other",
            "active", "revoked", "none", "", "\u0130n_person", "completed,video"]
_CODES = ["H0038", "h0038", "H003", "H00388888", "H0038\n", "\uff28\uff10\uff10\uff13\uff18",
          "1234567890", "12345678901", "123456789\uff10", "123456789", "0000000000"]

typed = st.one_of(
    st.text(max_size=12).map(lambda s: CANARY + s),
    st.text(max_size=12).map(lambda s: s + CANARY),
    st.sampled_from(_SPECIALS).map(lambda s: CANARY + s + CANARY),
)
huge = st.sampled_from([64, 65, 200, 201, 100_000, 100_001]).flatmap(
    lambda n: st.sampled_from([
        (CANARY * (n // len(CANARY) + 1))[:n],
        CANARY + "x" * max(n - len(CANARY), 0),
        CANARY + ",a" * (n // 2),
    ]))
utf8 = st.sampled_from([b"\xff", b"\xfe\xff", b"\xed\xa0\x80", b"\xc0\xaf", b"\xe2\x82",
                        b"\xf4\x90\x80\x80", b"%", b"%zz"]).map(
    lambda b: CANARY.encode() + b + CANARY.encode())
PER_FIELD: dict[str, st.SearchStrategy[str]] = {
    "participant.birth_date": _marked(_BAD_DATES),
    "date": _marked(_BAD_DATES),
    "start_time": _marked(_BAD_TIMES),
    "end_time": _marked(_BAD_TIMES),
    "service.group_size": _marked(_NUMBERS),
    "specialist.npi": _marked(_CODES),
    "service.code": _marked(_CODES),
    "goals": _marked([",", ",,, ,", "a," * 2000, "x" * 65, "housing,\x00", "\u200b"]),
    "part2": _marked(["on", "ON", "off", "true", "1", "on "]),
    **{name: _marked(_CHOICES) for name in SELECTS},
}


def value_for(name: str) -> st.SearchStrategy[Value]:
    options: list[st.SearchStrategy[Any]] = [typed, huge, utf8, st.sampled_from(["", "   "])]
    if name in PER_FIELD:
        options = [PER_FIELD[name], PER_FIELD[name], *options]
    return st.one_of(*options)


@st.composite
def submissions(draw: st.DrawFn) -> list[Pair]:
    """The good form with 1-4 fields changed, dropped, repeated, or unknown ones added."""
    fields: dict[str, list[Value]] = {k: [v] for k, v in GOOD.items()}
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["set", "set", "set", "delete", "repeat", "unknown"]))
        name = draw(st.sampled_from(FIELDS))
        if kind == "set":
            fields[name] = [draw(value_for(name))]
        elif kind == "delete":
            fields.pop(name, None)
        elif kind == "repeat":  # the first one counts
            fields[name] = [draw(value_for(name)), *fields.get(name, [])]
        else:
            fields[CANARY + draw(st.sampled_from(["", "note.", "specialist.id", "\x00"]))] = [
                draw(value_for(""))]
    pairs = [(k, v) for k, vs in fields.items() for v in vs]
    return draw(st.permutations(pairs)) if draw(st.booleans()) else pairs


# -- the app: one home, one app, one logged-in specialist for the module ------


@dataclass
class Form:
    app: Flask
    client: FlaskClient
    csrf: str
    user_id: int

    def started(self) -> tuple[str, str]:
        """A start token as the page signs it (its user, now, a fresh nonce) and its record id."""
        from itsdangerous import URLSafeTimedSerializer

        from webapp.document import SALT

        nonce = secrets.token_hex(8)
        signer = URLSafeTimedSerializer(self.app.config["SECRET_KEY"], salt=SALT)
        now = datetime.now(UTC).isoformat(timespec="milliseconds")
        return signer.dumps({"u": self.user_id, "t": now, "n": nonce}), f"wf-{nonce}"

    def issued(self) -> tuple[str, str]:
        """The start token the page itself issues (a GET of the form) and its record id."""
        from itsdangerous import URLSafeTimedSerializer

        from webapp.document import SALT

        match = _STARTED.search(self.client.get("/document/").get_data(as_text=True))
        assert match
        signer = URLSafeTimedSerializer(self.app.config["SECRET_KEY"], salt=SALT)
        return match.group(1), "wf-" + signer.loads(match.group(1))["n"]

    def stored(self, record_id: str) -> bool:
        from connector.reports import record_states
        from webapp import WEB_SOURCE, get_store

        with self.app.app_context():
            return bool(record_states(get_store(), WEB_SOURCE, [record_id]).get(record_id))


@pytest.fixture(scope="module")
def form(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Form]:
    from itsdangerous import URLSafeTimedSerializer

    from tests.webapp_support import logged_in, make_app, make_home
    from webapp import close_app
    from webapp.document import SALT

    mp = pytest.MonkeyPatch()
    home = make_home(Path(tmp_path_factory.mktemp("fuzz-form")), mp)
    # a sync pass after each accepted form, to an EHR that is not there: more code logs
    application = make_app(home, SYNC_ON_ACTION=True)
    client = logged_in(application, "specialist")
    page = client.get("/document/").get_data(as_text=True)
    csrf, started = _CSRF.search(page), _STARTED.search(page)
    assert csrf and started, page
    user_id = URLSafeTimedSerializer(application.config["SECRET_KEY"], salt=SALT).loads(
        started.group(1))["u"]
    yield Form(application, client, csrf.group(1), user_id)
    close_app(application)
    mp.undo()


def _encode(pairs: list[tuple[str, Value]]) -> bytes:
    def part(v: Value) -> str:
        return quote_plus(v if isinstance(v, bytes) else v.encode("utf-8", "surrogatepass"))

    return "&".join(f"{part(k)}={part(v)}" for k, v in pairs).encode("ascii")


def _post(client: FlaskClient, pairs: list[tuple[str, Value]]) -> Any:
    return client.post("/document/", data=_encode(pairs),
                       content_type="application/x-www-form-urlencoded")


def _typed(pairs: list[Pair], name: str) -> str:
    """What the server reads for a field: the first value, decoded as werkzeug does."""
    for k, v in pairs:
        if k == name:
            # invalid UTF-8 is kept percent-encoded (werkzeug's error handler)
            return v.decode("utf-8", "werkzeug.url_quote") if isinstance(v, bytes) else v
    return ""


def _no_marker_in_logs(caplog: pytest.LogCaptureFixture) -> None:
    FIGURES["log records"] = FIGURES.get("log records", 0) + len(caplog.records)
    formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")
    for record in caplog.records:
        text = formatter.format(record) + repr(record.args)
        assert CANARY not in text, text[:2000]
    caplog.clear()


def _check_page(html: str, pairs: list[Pair]) -> None:
    """A 422 page: errors at named fields, none echoing; re-filled values exactly as typed."""
    errors = _FIELD_ERROR.findall(html)
    general = _GENERAL.search(html)
    assert general, html[:3000]  # the banner: field errors below, or general messages
    assert errors or "<li>" in general.group(1), html[:3000]
    injected = [_typed(pairs, name).strip() for name, _ in pairs]
    for field, message in errors:
        assert field in ERROR_IDS, field
        assert message.strip() and CANARY not in message, message
    for text in [m for _, m in errors] + [general.group(1)]:
        assert CANARY not in text, text
        for value in injected:
            if len(value) >= 8:
                assert str(escape(value)) not in text, (value, text)
    # the marker only inside re-filled values, and those are what was typed
    for name, shown in _INPUT.findall(html):
        if name in TEXT_FIELDS and name not in SELECTS:
            assert shown == str(escape(_typed(pairs, name).strip())), name
    textarea = _TEXTAREA.search(html)
    assert textarea and textarea.group(2) == str(escape(_typed(pairs, "note.text")))
    rest = _TEXTAREA.sub(r"\1\3", re.sub(r'value="[^"]*"', 'value=""', html))
    assert CANARY not in rest


def _edge(**changes: str) -> list[Pair]:
    return list({**GOOD, **changes}.items())


@fuzz_settings(SUBMISSIONS)
@given(submissions())
@example(_edge(date="9999-12-31", start_time="23:00", end_time="23:59"))  # past UTC's range
@example(_edge(date="0001-01-01", start_time="00:00", end_time="00:30"))
@example(_edge(date="2026-03-08", start_time="02:10", end_time="02:40"))  # a DST gap
@example(_edge(date="2026-11-01", start_time="01:10", end_time="01:40"))  # a DST fold
@example(_edge(start_time="10:00+05:00"))
@example(_edge(**{"note.text": " \r\n ", "participant.given": CANARY * 40}))
@example([("csrf_token", CANARY), *_edge()])  # a second token: the first one counts
def test_form_submissions(form: Form, caplog: pytest.LogCaptureFixture,
                          pairs: list[Pair]) -> None:
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.INFO, logger="sqlalchemy.engine")  # SQL and parameters
    n = FIGURES.get("submissions", 0)
    if n % GOOD_EVERY == 0:  # a good one in between, timed as the page times it: stored
        started, record_id = form.issued()
        response = _post(form.client, [("csrf_token", form.csrf), ("started", started),
                                       *GOOD.items()])
        assert response.status_code == 302, response.get_data(as_text=True)[:3000]
        assert response.headers["Location"].startswith("/records/")
        assert form.stored(record_id)
        FIGURES["good"] = FIGURES.get("good", 0) + 1
    started, record_id = form.started()
    response = _post(form.client, [("csrf_token", form.csrf), ("started", started), *pairs])
    status = response.status_code
    FIGURES["submissions"] = n + 1
    FIGURES[f"status-{status}"] = FIGURES.get(f"status-{status}", 0) + 1
    assert status < 500
    assert CANARY not in str(response.headers)
    if status == 302:  # accepted: the record is stored
        assert response.headers["Location"].startswith("/records/")
        assert form.stored(record_id)
    else:
        assert status == 422, (status, response.get_data(as_text=True)[:3000])
        assert not form.stored(record_id)
        _check_page(response.get_data(as_text=True), pairs)
    _no_marker_in_logs(caplog)


def test_form_figures() -> None:
    """Printed for the README (pytest -s): submissions fuzzed, by answer."""
    print("form fuzz figures:", FIGURES)
    if FIGURES:
        assert FIGURES["submissions"] >= SUBMISSIONS and FIGURES["good"] >= 1
        assert FIGURES["log records"] > 0  # the log check saw something
