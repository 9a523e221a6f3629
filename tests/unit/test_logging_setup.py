"""Log redaction at the boundary (connector.logging_setup): library records carry no URL
query value, SQL parameter or row; the FHIR client's urllib3 warnings are redacted even
where nobody called install(); `config check` warns on private files others can read."""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from click.testing import CliRunner

from connector import logging_setup
from connector.ehr_sandbox import free_port
from connector.errors import EhrUnavailable
from connector.fhir_client import FhirClient
from connector.logging_setup import REDACTED, redact_text

MRN = "MRN-70011"


@pytest.fixture
def plain_factory() -> Iterator[None]:
    """No redacting record factory during the test (another test may have installed it)."""
    before = logging.getLogRecordFactory()
    logging_setup.uninstall()
    logging.setLogRecordFactory(logging.LogRecord)
    yield
    logging.setLogRecordFactory(before)


# -- the text rules ------------------------------------------------------------

@pytest.mark.parametrize(("text", "expected"), [
    ("Retrying (Retry(total=None)) after connection broken by 'NewConnectionError(...)': "
     "/fhir/Patient?identifier=urn%3Aoid%3A1%7CMRN-70011&_count=20",
     "Retrying (Retry(total=None)) after connection broken by 'NewConnectionError(...)': "
     f"/fhir/Patient?identifier={REDACTED}&_count={REDACTED}"),
    ('http://127.0.0.1:8090 "GET /fhir/Patient?identifier=x%7CMRN-70011 HTTP/1.1" 200 None',
     f'http://127.0.0.1:8090 "GET /fhir/Patient?identifier={REDACTED} HTTP/1.1" 200 None'),
    # werkzeug decodes the path: a query with spaces, quotes, ANSI colours
    ('[x] "\x1b[33mGET /records/?q=Dana O\'Neil Lopez&page=2 HTTP/1.1\x1b[0m" 404 -',
     f'[x] "\x1b[33mGET /records/?q={REDACTED}&page={REDACTED} HTTP/1.1\x1b[0m" 404 -'),
    ("Incremented Retry for (url='/fhir/Patient?name=Dana'): Retry(total=1)",
     f"Incremented Retry for (url='/fhir/Patient?name={REDACTED} Retry(total=1)"),
    ("Max retries exceeded with url: /fhir/Patient?birthdate=1988-04-12 (Caused by X)",
     f"Max retries exceeded with url: /fhir/Patient?birthdate={REDACTED} (Caused by X)"),
    ("[SQL: INSERT INTO t VALUES (?)]\n[parameters: ('Dana', 'MRN-55821')]\n(Background)",
     "[SQL: INSERT INTO t VALUES (?)]\n[parameters: hidden]\n(Background)"),
    ("ERROR:  null value violates not-null constraint\nDETAIL:  Failing row contains (Dana).",
     "ERROR:  null value violates not-null constraint\nDETAIL: (hidden)"),
    # not a query: left alone
    ("is ehr.base_url the FHIR base URL?", "is ehr.base_url the FHIR base URL?"),
    ("search /fhir/Patient stopped after 20 pages", "search /fhir/Patient stopped after 20 pages"),
])
def test_redact_text(text: str, expected: str) -> None:
    assert redact_text(text) == expected
    assert redact_text(expected) == expected  # idempotent


# -- the FHIR client with the EHR down (finding 5) -----------------------------

def test_urllib3_retry_warnings_of_the_fhir_client_carry_no_query_value(
    plain_factory: None, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="urllib3")
    client = FhirClient(base_url=f"http://127.0.0.1:{free_port()}/fhir", timeout_s=2,
                        connect_retries=2)
    with client, pytest.raises(EhrUnavailable) as raised:
        client.search("Patient", [("identifier", f"urn:oid:1|{MRN}"), ("name", "Dana")])
    retrying = [r for r in caplog.records
                if r.name == "urllib3.connectionpool" and "Retrying" in r.getMessage()]
    assert len(retrying) == 2, caplog.text
    assert f"Patient?identifier={REDACTED}&name={REDACTED}" in retrying[0].getMessage()
    assert MRN not in caplog.text and "Dana" not in caplog.text
    assert MRN not in str(raised.value)
    assert MRN not in "".join(capfd.readouterr())


# -- install(): every record, whatever its logger ------------------------------

def test_install_redacts_any_logger_and_keeps_the_previous_factory(
    plain_factory: None, caplog: pytest.LogCaptureFixture
) -> None:
    def tagging(*args: object, **kwargs: object) -> logging.LogRecord:
        record = logging.LogRecord(*args, **kwargs)  # type: ignore[arg-type]
        record.tagged = True
        return record

    logging.setLogRecordFactory(tagging)
    logging_setup.install()
    logging_setup.install()  # idempotent
    assert logging_setup.installed()
    caplog.set_level(logging.INFO)
    logging.getLogger("werkzeug").info('%s - - [%s] "%s" %s %s', "127.0.0.1", "now",
                                       "GET /matching/patient?mrn=MRN-70011 HTTP/1.1", 200, "-")
    logging.getLogger("gunicorn.access.child").info("GET /x?name=Dana+Lopez")
    try:
        raise requests.ConnectionError(f"Max retries exceeded with url: /Patient?mrn={MRN} (x)")
    except requests.ConnectionError:
        logging.getLogger("anything").exception("sync failed")
    assert all(getattr(r, "tagged", False) for r in caplog.records)
    assert MRN not in caplog.text and "Dana" not in caplog.text, caplog.text
    assert f"GET /matching/patient?mrn={REDACTED} HTTP/1.1" in caplog.text
    assert f"/Patient?mrn={REDACTED} (x)" in caplog.text  # the traceback, redacted


def test_a_record_that_cannot_be_formatted_does_not_print_its_arguments(
    plain_factory: None, capfd: pytest.CaptureFixture[str]
) -> None:
    logging_setup.install()
    logger = logging.getLogger("peersync.test.badformat")
    handler = logging.StreamHandler()
    logger.addHandler(handler)
    try:
        logger.warning("%s and %d", f"name Dana {MRN}", "not a number")
    finally:
        logger.removeHandler(handler)
    err = capfd.readouterr().err
    assert "log arguments hidden" in err and MRN not in err and "Dana" not in err


def test_sqlalchemy_parameters_and_rows_are_hidden_even_without_hide_parameters(
    plain_factory: None, caplog: pytest.LogCaptureFixture
) -> None:
    from sqlalchemy import create_engine, text

    logging_setup.install()
    caplog.set_level(logging.DEBUG, logger="sqlalchemy.engine")
    engine = create_engine("sqlite://")  # hide_parameters not set
    try:
        with engine.connect() as conn:
            assert conn.execute(text("SELECT :name"), {"name": "Dana Lopez"}).scalar() == (
                "Dana Lopez")
    finally:
        engine.dispose()
    assert "SELECT ?" in caplog.text  # the statement is logged
    assert "Dana" not in caplog.text, caplog.text


def test_cli_main_and_create_app_install_the_redaction(
    plain_factory: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from connector.cli import main
    from webapp import close_app, create_app

    monkeypatch.setenv("PEERSYNC_HOME", str(tmp_path))
    CliRunner().invoke(main, ["status"])
    assert logging_setup.installed()
    logging_setup.uninstall()
    assert not logging_setup.installed()
    app = create_app({"TESTING": True, "SECRET_KEY": "k",
                      "PEERSYNC_CONFIG": str(tmp_path / "peersync.toml")})
    close_app(app)
    assert logging_setup.installed()


# -- `config check`: private files (finding 8, the warning) ---------------------

def test_config_check_warns_on_private_files_others_can_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from connector.config import load_config, write_config
    from connector.errors import ConfigError
    from connector.setup_check import CheckReport, check_setup, private_files
    from mappings.profile import default_profile_path, load_profile

    def check(config: object) -> CheckReport:
        def no_client() -> FhirClient:
            raise ConfigError("ehr: not needed here")

        return check_setup(config, profile=load_profile(default_profile_path()),  # type: ignore[arg-type]
                           store=None, client_factory=no_client)  # type: ignore[arg-type]

    path = write_config(tmp_path, base_url="https://ehr.example.org/fhir",
                        database_url="sqlite:///peersync.db")
    config = load_config(path, environ={})
    names = {name: p for name, p in private_files(config)}
    assert names["database file"] == tmp_path / "peersync.db"
    for p in names.values():
        p.write_bytes(b"x")
        os.chmod(p, 0o600)
    report = check(config)
    assert not report.warnings, report.lines()
    for p in names.values():
        os.chmod(p, 0o644)
    os.chmod(names["web secret file"], 0o640)
    report = check(config)
    warned = {c.name: c.detail for c in report.warnings}
    assert set(warned) == {"database file", "database -wal file", "database -shm file",
                           "audit key file", "web secret file"}
    assert warned["web secret file"] == (
        f"{names['web secret file']} is open to other users (mode 640); chmod 600 it")
    assert stat.S_IMODE(names["database file"].stat().st_mode) == 0o644  # reported, not changed
