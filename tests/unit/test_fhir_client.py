"""The FHIR client: every EHR answer maps to the right exception, and nothing leaks PHI.

Error paths use ``responses``; transport failures use real sockets on 127.0.0.1
(a closed port, a server that never answers, one that hangs up), because what
matters there is what urllib3 and requests really raise.
"""

from __future__ import annotations

import http.server
import json
import logging
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import pytest
import requests
import responses

from connector.errors import (
    ConfigError,
    EhrAuthError,
    EhrConflict,
    EhrNotFound,
    EhrOutcomeUnknown,
    EhrRejected,
    EhrTransient,
    EhrUnavailable,
)
from connector.fhir_client import (
    Exchange,
    FhirClient,
    encode_query,
    entry_results,
    parse_etag,
    parse_location,
    parse_retry_after,
    redact_url,
)

BASE = "https://ehr.example.org/fhir"
PHI = "Dana Lopez MRN-55821"
ENC_SYSTEM = "https://agency.example/fhir/sid/peersync/peer-tool/encounter"


def outcome(code: str, diagnostics: str = PHI) -> dict[str, Any]:
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": code, "diagnostics": diagnostics}],
    }


def encounter(**extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "Encounter",
        "status": "finished",
        "identifier": [{"system": ENC_SYSTEM, "value": "e-1"}],
        **extra,
    }


@pytest.fixture
def rsps() -> Iterator[responses.RequestsMock]:
    with responses.RequestsMock() as mock:
        yield mock


@pytest.fixture
def exchanges() -> list[Exchange]:
    return []


@pytest.fixture
def client(exchanges: list[Exchange]) -> Iterator[FhirClient]:
    with FhirClient(base_url=BASE, on_exchange=exchanges.append) as c:
        yield c


# --- every error status ------------------------------------------------------

ERRORS = [
    (400, EhrRejected, "invalid", None),
    (401, EhrAuthError, "login", None),
    (403, EhrAuthError, "forbidden", None),
    (404, EhrNotFound, "not-found", None),
    (409, EhrConflict, "duplicate", None),
    (412, EhrConflict, "multiple-matches", None),
    (422, EhrRejected, "processing", None),
    (429, EhrTransient, "throttled", "7"),
    (500, EhrTransient, "exception", None),
    (503, EhrTransient, "transient", "120"),
]


@pytest.mark.parametrize(("status", "cls", "code", "retry_after"), ERRORS)
def test_error_status_maps_to_exception_without_phi(
    rsps: responses.RequestsMock,
    client: FhirClient,
    exchanges: list[Exchange],
    caplog: pytest.LogCaptureFixture,
    status: int,
    cls: type[Exception],
    code: str,
    retry_after: str | None,
) -> None:
    caplog.set_level(logging.DEBUG, logger="peersync")
    headers = {"Retry-After": retry_after} if retry_after else {}
    rsps.put(f"{BASE}/Encounter", status=status, json=outcome(code), headers=headers)

    with pytest.raises(cls) as info:
        client.update(encounter(), conditional={"identifier": f"{ENC_SYSTEM}|MRN-55821"})

    exc = info.value
    assert type(exc) is cls
    assert exc.status == status  # type: ignore[attr-defined]
    assert exc.outcome.codes == [code]  # type: ignore[attr-defined]
    assert exc.method == "PUT"  # type: ignore[attr-defined]
    assert exc.url == f"{BASE}/Encounter?identifier=<redacted>"  # type: ignore[attr-defined]
    assert PHI in exc.outcome_text  # type: ignore[attr-defined]  # kept for admins
    expected_retry = float(retry_after) if retry_after else None
    assert exc.retry_after == expected_retry  # type: ignore[attr-defined]
    text = str(exc)
    assert f"PUT /fhir/Encounter?identifier=<redacted> ({status} " in text
    assert f"OperationOutcome codes: {code}" in text
    for secret in (PHI, "Dana", "MRN-55821", "agency.example"):
        assert secret not in text
        assert secret not in caplog.text
        assert secret not in repr(exchanges)
    assert len(rsps.calls) == 1  # never re-sent by the client, not even a 429/503
    assert exchanges[-1].status == status
    assert exchanges[-1].outcome_codes == (code,)
    assert exchanges[-1].error is not None and exchanges[-1].error.startswith(cls.__name__)


def test_conflict_message_reads_well(rsps: responses.RequestsMock, client: FhirClient) -> None:
    rsps.put(f"{BASE}/Encounter", status=412, json=outcome("multiple-matches"))
    with pytest.raises(EhrConflict) as info:
        client.update(encounter(), conditional={"identifier": f"{ENC_SYSTEM}|e-1"})
    assert str(info.value) == (
        "EHR refused PUT /fhir/Encounter?identifier=<redacted> "
        "(412 Precondition Failed; OperationOutcome codes: multiple-matches)"
    )


def test_transient_message_names_retry_after_and_is_retry_safe(
    rsps: responses.RequestsMock, client: FhirClient
) -> None:
    rsps.post(
        f"{BASE}/Encounter", status=503, json=outcome("transient"), headers={"Retry-After": "30"}
    )
    with pytest.raises(EhrTransient) as info:
        client.create(encounter())
    assert info.value.retry_safe is True
    assert "(503 Service Unavailable; retry after 30 s;" in str(info.value)


def test_retry_after_as_http_date(rsps: responses.RequestsMock, client: FhirClient) -> None:
    when = datetime.now(UTC) + timedelta(seconds=90)
    rsps.get(
        f"{BASE}/Patient/p1",
        status=429,
        json=outcome("throttled"),
        headers={"Retry-After": format_datetime(when, usegmt=True)},
    )
    with pytest.raises(EhrTransient) as info:
        client.read("Patient", "p1")
    assert info.value.retry_after is not None
    assert 80 <= info.value.retry_after <= 91


def test_parse_retry_after_forms() -> None:
    assert parse_retry_after("120") == 120.0
    assert parse_retry_after(" 5 ") == 5.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == 10.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412490.0) == 0.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None


def test_error_without_operation_outcome(rsps: responses.RequestsMock, client: FhirClient) -> None:
    rsps.get(f"{BASE}/Patient/p1", status=502, body="<html>Bad gateway</html>")
    with pytest.raises(EhrTransient) as info:
        client.read("Patient", "p1")
    assert info.value.outcome is None
    assert str(info.value) == "EHR could not process GET /fhir/Patient/p1 (502 Bad Gateway)"


def test_redirect_on_write_is_refused_not_followed(
    rsps: responses.RequestsMock, client: FhirClient
) -> None:
    rsps.post(f"{BASE}/Encounter", status=302, headers={"Location": "https://elsewhere.example/x"})
    with pytest.raises(EhrRejected, match="302 Found; unexpected"):
        client.create(encounter())
    assert len(rsps.calls) == 1


# --- 401/403 and the missing scope ------------------------------------------


def test_403_names_scope_from_www_authenticate(
    rsps: responses.RequestsMock, client: FhirClient
) -> None:
    rsps.post(
        f"{BASE}/Observation",
        status=403,
        json=outcome("forbidden", "no"),
        headers={
            "WWW-Authenticate": 'Bearer realm="x", error="insufficient_scope", '
            'scope="system/Observation.c"'
        },
    )
    with pytest.raises(EhrAuthError) as info:
        client.create({"resourceType": "Observation"})
    assert info.value.missing_scope == "system/Observation.c"
    assert "missing scope system/Observation.c" in str(info.value)


def test_403_sekmet_diagnostics_name_the_missing_not_the_granted_scope(
    rsps: responses.RequestsMock, client: FhirClient
) -> None:
    # what sekmet 0.1.1 really answers: the *granted* scopes, then the missing permission
    diagnostics = (
        "Token scopes ['system/Patient.rs', 'system/Observation.rs'] "
        "do not permit 'c' on Observation"
    )
    rsps.post(f"{BASE}/Observation", status=403, json=outcome("forbidden", diagnostics))
    with pytest.raises(EhrAuthError) as info:
        client.create({"resourceType": "Observation"})
    assert info.value.missing_scope == "system/Observation.c"
    assert str(info.value) == (
        "EHR refused POST /fhir/Observation (403 Forbidden; missing scope system/Observation.c; "
        "OperationOutcome codes: forbidden)"
    )


def test_403_scope_token_in_diagnostics(rsps: responses.RequestsMock, client: FhirClient) -> None:
    rsps.put(
        f"{BASE}/Encounter/e1",
        status=403,
        json=outcome("forbidden", "This operation requires system/Encounter.u for Dana"),
    )
    with pytest.raises(EhrAuthError) as info:
        client.update(encounter(), resource_id="e1")
    assert info.value.missing_scope == "system/Encounter.u"
    assert "Dana" not in str(info.value)


def test_403_without_a_named_scope_infers_it_from_the_request(
    rsps: responses.RequestsMock, client: FhirClient
) -> None:
    rsps.post(f"{BASE}/DocumentReference", status=403, json=outcome("forbidden", "Denied"))
    with pytest.raises(EhrAuthError) as info:
        client.create({"resourceType": "DocumentReference"})
    assert info.value.missing_scope == "system/DocumentReference.c"
    assert "needs scope system/DocumentReference.c" in str(info.value)


def test_401_names_the_bearer_error(rsps: responses.RequestsMock, client: FhirClient) -> None:
    rsps.get(
        f"{BASE}/Patient/p1",
        status=401,
        json=outcome("login", "expired"),
        headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
    )
    with pytest.raises(EhrAuthError, match=r"\(401 Unauthorized; invalid_token;"):
        client.read("Patient", "p1")


# --- transport failures on real sockets ---------------------------------------


def closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_connection_refused_is_unavailable(exchanges: list[Exchange]) -> None:
    port = closed_port()
    with (
        FhirClient(
            base_url=f"http://127.0.0.1:{port}/fhir", timeout_s=2, on_exchange=exchanges.append
        ) as c,
        pytest.raises(EhrUnavailable) as info,
    ):
        c.create(encounter())
    exc = info.value
    assert exc.retry_safe is True
    assert "connection refused" in str(exc)
    assert isinstance(exc.__cause__, requests.ConnectionError)
    assert exchanges[-1].status is None
    assert exchanges[-1].error is not None and exchanges[-1].error.startswith("EhrUnavailable")


@contextmanager
def socket_server(behaviour: str, *, hold_s: float = 3.0) -> Iterator[tuple[int, list[bytes]]]:
    """A server on 127.0.0.1 that accepts and then either never answers ("silent") or hangs up
    once the request is in ("hangup"). Its thread stops by itself within ``hold_s``."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.settimeout(0.05)
    port = int(listener.getsockname()[1])
    received: list[bytes] = []
    stop = threading.Event()

    def serve() -> None:
        deadline = time.monotonic() + hold_s
        open_conns: list[socket.socket] = []
        try:
            while not stop.is_set() and time.monotonic() < deadline:
                try:
                    conn, _ = listener.accept()
                except TimeoutError:
                    continue
                conn.settimeout(0.05)
                data = b""
                while b"\r\n\r\n" not in data and time.monotonic() < deadline:
                    try:
                        chunk = conn.recv(65536)
                    except TimeoutError:
                        continue
                    if not chunk:
                        break
                    data += chunk
                received.append(data)
                if behaviour == "hangup":
                    conn.close()
                else:
                    open_conns.append(conn)
        finally:
            for conn in open_conns:
                conn.close()

    thread = threading.Thread(target=serve, name=f"{behaviour}-server", daemon=True)
    thread.start()
    try:
        yield port, received
    finally:
        stop.set()
        thread.join(hold_s + 1)
        listener.close()
        assert not thread.is_alive()


def test_read_timeout_is_outcome_unknown_and_not_resent() -> None:
    with socket_server("silent") as (port, received):
        with FhirClient(base_url=f"http://127.0.0.1:{port}/fhir", timeout_s=0.3) as c:
            started = time.monotonic()
            with pytest.raises(EhrOutcomeUnknown) as info:
                c.create(encounter())
            assert time.monotonic() - started < 2
        assert len(received) == 1  # one request, never re-sent
    exc = info.value
    assert exc.retry_safe is False
    assert "read timeout" in str(exc)
    assert isinstance(exc.__cause__, requests.RequestException)


def test_hangup_after_sending_is_outcome_unknown() -> None:
    with socket_server("hangup") as (port, received):
        with (
            FhirClient(base_url=f"http://127.0.0.1:{port}/fhir", timeout_s=2) as c,
            pytest.raises(EhrOutcomeUnknown, match="connection (closed by the EHR|reset)"),
        ):
            c.update(encounter(), resource_id="e1")
        assert len(received) == 1
        assert received[0].startswith(b"PUT /fhir/Encounter/e1 HTTP/1.1")


# --- write results ------------------------------------------------------------


def test_created_with_empty_body_parsed_from_headers(
    rsps: responses.RequestsMock, client: FhirClient, exchanges: list[Exchange]
) -> None:
    rsps.post(
        f"{BASE}/Encounter",
        status=201,
        body=b"",
        headers={"Location": f"{BASE}/Encounter/enc-7/_history/3", "ETag": 'W/"3"'},
    )
    result = client.create(encounter())
    assert (result.resource_type, result.id, result.version_id) == ("Encounter", "enc-7", "3")
    assert result.created is True and result.status == 201
    assert result.resource is None
    assert result.location == f"{BASE}/Encounter/enc-7/_history/3"
    assert exchanges[-1].resource_id == "enc-7" and exchanges[-1].version_id == "3"


def test_version_from_etag_when_location_has_none(
    rsps: responses.RequestsMock, client: FhirClient
) -> None:
    rsps.put(f"{BASE}/Encounter/enc-7", status=200, body=b"", headers={"ETag": 'W/"12"'})
    result = client.update(encounter(), resource_id="enc-7")
    assert (result.id, result.version_id, result.created) == ("enc-7", "12", False)


def test_result_from_returned_resource(rsps: responses.RequestsMock, client: FhirClient) -> None:
    body = encounter(id="enc-9", meta={"versionId": "2"})
    rsps.post(f"{BASE}/Encounter", status=200, json=body)
    result = client.create(encounter(), if_none_exist={"identifier": f"{ENC_SYSTEM}|e-1"})
    assert (result.id, result.version_id, result.created) == ("enc-9", "2", False)
    assert result.resource == body


def test_write_without_any_id_is_outcome_unknown(
    rsps: responses.RequestsMock, client: FhirClient
) -> None:
    rsps.post(f"{BASE}/Encounter", status=201, body=b"")
    with pytest.raises(EhrOutcomeUnknown, match="named no resource id"):
        client.create(encounter())


# --- request building ----------------------------------------------------------


def test_conditional_update_url_is_percent_encoded(
    rsps: responses.RequestsMock, client: FhirClient
) -> None:
    rsps.put(f"{BASE}/Encounter", status=200, json=encounter(id="x1", meta={"versionId": "1"}))
    rsps.put(f"{BASE}/Encounter", status=200, json=encounter(id="x1", meta={"versionId": "2"}))
    client.update(encounter(), conditional={"identifier": f"{ENC_SYSTEM}|e-1"})
    client.update(encounter(), conditional=f"identifier={ENC_SYSTEM}|e+1")  # raw string form
    expected = (
        "/fhir/Encounter?identifier="
        "https%3A%2F%2Fagency.example%2Ffhir%2Fsid%2Fpeersync%2Fpeer-tool%2Fencounter%7C"
    )
    assert rsps.calls[0].request.path_url == expected + "e-1"
    assert rsps.calls[1].request.path_url == expected + "e%2B1"  # "+" is literal, not a space
    sent = json.loads(rsps.calls[0].request.body or b"")
    assert sent["identifier"][0]["value"] == "e-1"


def test_encode_query_forms() -> None:
    assert encode_query({"identifier": "s|v", "_count": "2"}) == "identifier=s%7Cv&_count=2"
    assert encode_query([("date", "ge2024"), ("date", "le2025")]) == "date=ge2024&date=le2025"
    assert encode_query("identifier=a b|c\\,d") == "identifier=a%20b%7Cc%5C%2Cd"


def test_if_none_exist_and_write_headers(rsps: responses.RequestsMock, client: FhirClient) -> None:
    rsps.post(f"{BASE}/Practitioner", status=201, json={"resourceType": "Practitioner", "id": "p1"})
    client.create(
        {"resourceType": "Practitioner"},
        if_none_exist="identifier=https://agency.example/staff|S-1",
    )
    headers = rsps.calls[0].request.headers
    assert headers["If-None-Exist"] == "identifier=https%3A%2F%2Fagency.example%2Fstaff%7CS-1"
    assert headers["Prefer"] == "return=representation"
    assert headers["Accept"] == "application/fhir+json"
    assert headers["Content-Type"].startswith("application/fhir+json")
    assert headers["User-Agent"] == "PeerSync/0.1"


@pytest.mark.parametrize("given", ["3", 'W/"3"', '"3"'])
def test_if_match_header_form(rsps: responses.RequestsMock, client: FhirClient, given: str) -> None:
    rsps.put(f"{BASE}/Encounter/e1", status=200, json=encounter(id="e1", meta={"versionId": "4"}))
    client.update(encounter(id="e1"), if_match=given)
    assert rsps.calls[0].request.headers["If-Match"] == 'W/"3"'


def test_update_puts_the_id_in_the_body(rsps: responses.RequestsMock, client: FhirClient) -> None:
    rsps.put(f"{BASE}/Encounter/e1", status=201, body=b"", headers={"ETag": 'W/"1"'})
    result = client.update(encounter(), resource_id="e1")
    assert json.loads(rsps.calls[0].request.body or b"")["id"] == "e1"
    assert result.created is True
    with pytest.raises(ValueError):
        client.update(encounter(id="other"), resource_id="e1")
    with pytest.raises(ValueError):
        client.update(encounter(), resource_id="e1", conditional="identifier=x|y")
    with pytest.raises(ValueError):
        client.update(encounter())
    with pytest.raises(ValueError):
        client.read("Patient", "../metadata")


def test_timeout_passed_on_every_call(rsps: responses.RequestsMock) -> None:
    rsps.get(f"{BASE}/metadata", json={"resourceType": "CapabilityStatement"})
    rsps.get(f"{BASE}/Patient/p1", json={"resourceType": "Patient", "id": "p1"})
    rsps.get(f"{BASE}/Patient", json={"resourceType": "Bundle", "type": "searchset"})
    rsps.post(f"{BASE}/Patient", status=201, json={"resourceType": "Patient", "id": "p2"})
    rsps.put(f"{BASE}/Patient/p2", json={"resourceType": "Patient", "id": "p2"})
    rsps.post(BASE, json={"resourceType": "Bundle", "type": "transaction-response"})
    rsps.post(BASE, json={"resourceType": "Bundle", "type": "batch-response"})
    with FhirClient(base_url=BASE, timeout_s=12.5) as c:
        c.capability_statement()
        c.read("Patient", "p1")
        c.search("Patient", {"name": "x"})
        c.create({"resourceType": "Patient"})
        c.update({"resourceType": "Patient", "id": "p2"})
        c.transaction({"resourceType": "Bundle", "type": "transaction", "entry": []})
        c.batch({"resourceType": "Bundle", "type": "batch", "entry": []})
    assert len(rsps.calls) == 7
    for call in rsps.calls:
        assert call.request.req_kwargs["timeout"] == (10.0, 12.5)  # type: ignore[attr-defined]


# --- search ---------------------------------------------------------------------


def page(
    ids: list[str], next_url: str | None, extra: Sequence[dict[str, Any]] = ()
) -> dict[str, Any]:
    links = [{"relation": "self", "url": "ignored"}]
    if next_url:
        links.append({"relation": "next", "url": next_url})
    entries = [
        {"resource": {"resourceType": "Patient", "id": i}, "search": {"mode": "match"}} for i in ids
    ]
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "link": links,
        "entry": [*entries, *extra],
    }


def test_search_follows_next_links(rsps: responses.RequestsMock, client: FhirClient) -> None:
    include = {
        "resource": {"resourceType": "Organization", "id": "o1"},
        "search": {"mode": "include"},
    }
    warning = {"resource": outcome("informational", "x"), "search": {"mode": "outcome"}}
    no_mode = {"resource": {"resourceType": "Patient", "id": "p5"}}
    rsps.get(
        f"{BASE}/Patient", json=page(["p1", "p2"], f"{BASE}/Patient?_count=2&_offset=2", [include])
    )
    rsps.get(
        f"{BASE}/Patient", json=page(["p3", "p4"], f"{BASE}/Patient?_count=2&_offset=4", [warning])
    )
    rsps.get(f"{BASE}/Patient", json=page([], None, [no_mode]))
    found = client.search("Patient", {"family": "x", "_count": "2"})
    assert [r["id"] for r in found] == ["p1", "p2", "p3", "p4", "p5"]
    assert rsps.calls[1].request.path_url == "/fhir/Patient?_count=2&_offset=2"


def test_search_is_bounded_by_max_pages(
    rsps: responses.RequestsMock, client: FhirClient, caplog: pytest.LogCaptureFixture
) -> None:
    endless = page(["p1"], f"{BASE}/Patient?_offset=1&identifier=secret-mrn")
    rsps.get(f"{BASE}/Patient", json=endless)
    found = client.search("Patient", {"identifier": "x|secret-mrn"}, max_pages=3)
    assert len(found) == 3 and len(rsps.calls) == 3
    assert "stopped after 3 pages" in caplog.text
    assert "secret-mrn" not in caplog.text


def test_search_next_link_on_another_origin_stays_on_ours(
    rsps: responses.RequestsMock, client: FhirClient
) -> None:
    rsps.get(f"{BASE}/Patient", json=page(["p1"], "http://internal-node:8080/fhir/Patient?page=2"))
    rsps.get(f"{BASE}/Patient", json=page(["p2"], None))
    assert [r["id"] for r in client.search("Patient", {})] == ["p1", "p2"]
    assert rsps.calls[1].request.url == f"{BASE}/Patient?page=2"


def test_search_answer_that_is_not_a_bundle(
    rsps: responses.RequestsMock, client: FhirClient
) -> None:
    rsps.get(f"{BASE}/Patient", json={"resourceType": "Patient"})
    with pytest.raises(EhrRejected, match="no Bundle"):
        client.search("Patient", {})


# --- logging and the audit hook ---------------------------------------------------


def test_log_lines_redact_query_values(
    rsps: responses.RequestsMock,
    client: FhirClient,
    exchanges: list[Exchange],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="peersync")
    rsps.get(f"{BASE}/Patient", json=page(["p1"], None))
    client.search("Patient", {"identifier": "urn:oid:1.2.3|MRN-55821", "birthdate": "1980-02-03"})
    lines = [r.getMessage() for r in caplog.records if r.name == "peersync.fhir"]
    assert len(lines) == 1
    assert lines[0].startswith(
        "GET /fhir/Patient?identifier=<redacted>&birthdate=<redacted> -> 200 in "
    )
    assert "MRN-55821" not in caplog.text and "1980" not in caplog.text
    assert exchanges == [
        Exchange(
            method="GET",
            path="/fhir/Patient?identifier=<redacted>&birthdate=<redacted>",
            status=200,
            duration_ms=exchanges[0].duration_ms,
            resource_type="Patient",
            resource_id=None,
            version_id=None,
            outcome_codes=(),
            error=None,
        )
    ]


def test_redact_url() -> None:
    assert (
        redact_url("https://u:pw@ehr.example/fhir/Patient?identifier=s%7CMRN1&_count=5#frag")
        == "https://ehr.example/fhir/Patient?identifier=<redacted>&_count=<redacted>"
    )
    assert redact_url("/fhir/Encounter/e1") == "/fhir/Encounter/e1"
    assert redact_url("http://[::1]:8080/fhir?x") == "http://[::1]:8080/fhir?x=<redacted>"


def test_on_exchange_failure_does_not_break_the_request(
    rsps: responses.RequestsMock, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(exchange: Exchange) -> None:
        raise RuntimeError("audit store down")

    rsps.get(f"{BASE}/Patient/p1", json={"resourceType": "Patient", "id": "p1"})
    with FhirClient(base_url=BASE, on_exchange=broken) as c:
        assert c.read("Patient", "p1")["id"] == "p1"
    assert "on_exchange callback failed" in caplog.text


# --- base URL and session -----------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "http://ehr.example.org/fhir",
        "http://10.0.0.5/fhir",
        "http://127.0.0.1.nip.io/fhir",
        "ftp://ehr/fhir",
        "ehr.example.org/fhir",
        "https://user:pw@ehr.example.org/fhir",
        "https://ehr.example.org/fhir?x=1",
    ],
)
def test_bad_base_urls_are_refused(url: str) -> None:
    with pytest.raises(ConfigError, match="ehr.base_url"):
        FhirClient(base_url=url)


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8090/fhir",
        "http://127.8.9.10/fhir",
        "http://[::1]:8090/fhir",
        "http://localhost:8090/fhir/",
        "https://ehr.example.org/fhir",
    ],
)
def test_loopback_http_and_any_https_are_allowed(url: str) -> None:
    with FhirClient(base_url=url) as c:
        assert c.base_url == url.rstrip("/")


def test_ca_file_sets_verify(tmp_path: Any) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n", encoding="ascii")
    with FhirClient(base_url=BASE, ca_file=str(ca)) as c:
        assert c.session.verify == str(ca)
    with pytest.raises(ConfigError, match="ca_file"):
        FhirClient(base_url=BASE, ca_file=str(tmp_path / "missing.pem"))


def test_adapter_retries_connect_errors_only(client: FhirClient) -> None:
    retry = client.session.get_adapter(BASE).max_retries  # type: ignore[attr-defined]
    assert retry.connect == 2
    assert retry.read is False and retry.status == 0 and retry.other == 0
    assert retry.allowed_methods is None
    assert retry.respect_retry_after_header is False


class _KeepAliveHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    connections: list[object] = []

    def setup(self) -> None:
        super().setup()
        self.connections.append(self.client_address)

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        body = json.dumps({"resourceType": "Patient", "id": "p1"}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/fhir+json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass


def test_one_session_keeps_the_connection_alive() -> None:
    _KeepAliveHandler.connections = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _KeepAliveHandler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        port = server.server_address[1]
        with FhirClient(base_url=f"http://127.0.0.1:{port}/fhir") as c:
            session = c.session
            for _ in range(5):
                assert c.read("Patient", "p1")["id"] == "p1"
            assert c.session is session
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
    assert len(_KeepAliveHandler.connections) == 1


def test_close_closes_session_and_auth() -> None:
    class ClosingAuth(requests.auth.AuthBase):
        closed = False

        def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
            return r

        def close(self) -> None:
            self.closed = True

    auth = ClosingAuth()
    with FhirClient(base_url=BASE, auth=auth):
        pass
    assert auth.closed


# --- bundles ------------------------------------------------------------------------


def test_transaction_posts_to_base_and_entry_results(
    rsps: responses.RequestsMock, client: FhirClient
) -> None:
    response = {
        "resourceType": "Bundle",
        "type": "transaction-response",
        "entry": [
            {
                "response": {
                    "status": "201 Created",
                    "location": "Encounter/e1/_history/1",
                    "etag": 'W/"1"',
                }
            },
            {
                "resource": {
                    "resourceType": "Practitioner",
                    "id": "pr1",
                    "meta": {"versionId": "4"},
                },
                "response": {"status": "200 OK", "etag": 'W/"4"'},
            },
            {
                "response": {
                    "status": "412 Precondition Failed",
                    "outcome": outcome("multiple-matches"),
                }
            },
            {"response": {"status": "weird"}},
        ],
    }
    rsps.post(BASE, json=response)
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": []}
    got = client.transaction(bundle)
    assert got == response
    assert rsps.calls[0].request.url == BASE
    results = entry_results(got)
    assert [(r.status, r.resource_type, r.id, r.version_id, r.ok) for r in results] == [
        (201, "Encounter", "e1", "1", True),
        (200, "Practitioner", "pr1", "4", True),
        (412, None, None, None, False),
        (0, None, None, None, False),
    ]
    assert results[2].outcome is not None and results[2].outcome.codes == ["multiple-matches"]


def test_bundle_kind_is_checked_and_answer_must_be_a_bundle(
    rsps: responses.RequestsMock, client: FhirClient
) -> None:
    with pytest.raises(ValueError):
        client.transaction({"resourceType": "Bundle", "type": "batch"})
    with pytest.raises(ValueError):
        client.batch({"resourceType": "Bundle", "type": "transaction"})
    rsps.post(BASE, status=200, body=b"")
    with pytest.raises(EhrOutcomeUnknown, match="no response Bundle"):
        client.batch({"resourceType": "Bundle", "type": "batch", "entry": []})


def test_transaction_refused_as_a_whole(rsps: responses.RequestsMock, client: FhirClient) -> None:
    rsps.post(BASE, status=400, json=outcome("invalid", f"Entry 1: unresolved reference for {PHI}"))
    with pytest.raises(EhrRejected) as info:
        client.transaction({"resourceType": "Bundle", "type": "transaction", "entry": []})
    assert (
        str(info.value)
        == "EHR refused POST /fhir (400 Bad Request; OperationOutcome codes: invalid)"
    )


def test_parse_helpers() -> None:
    assert parse_etag('W/"3"') == "3"
    assert parse_etag('"abc"') == "abc"
    assert parse_etag(None) is None
    assert parse_location("https://x/fhir/Encounter/e1/_history/2") == ("Encounter", "e1", "2")
    assert parse_location("Patient/p1") == ("Patient", "p1", None)
    assert parse_location("https://x/fhir/") == (None, None, None)


def test_capability_statement_and_read(rsps: responses.RequestsMock, client: FhirClient) -> None:
    rsps.get(
        f"{BASE}/metadata", json={"resourceType": "CapabilityStatement", "fhirVersion": "4.0.1"}
    )
    rsps.get(
        f"{BASE}/Encounter/e1",
        json=encounter(id="e1", meta={"versionId": "5"}),
    )
    assert client.capability_statement()["fhirVersion"] == "4.0.1"
    assert client.read("Encounter", "e1")["meta"]["versionId"] == "5"
