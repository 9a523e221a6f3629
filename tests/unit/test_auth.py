"""EHR auth: SMART Backend Services assertions and tokens, static credentials, config errors.

The authorization server is played by ``responses``; keys are generated per test.
"""

from __future__ import annotations

import base64
import itertools
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import jwt
import pytest
import requests
import responses
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from connector.auth import (
    DEFAULT_SMART_SCOPES,
    BasicAuth,
    BearerTokenAuth,
    ClientSecretAuth,
    SmartBackendAuth,
    build_auth,
    smart_scopes,
)
from connector.errors import ConfigError, EhrAuthError, EhrTransient
from connector.fhir_client import FhirClient

BASE = "https://ehr.example.org/fhir"
TOKEN_URL = "https://auth.example.org/oauth2/token"
WELL_KNOWN = f"{BASE}/.well-known/smart-configuration"
SECRET = "s3cr3t-Pa55"


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def write_key(tmp_path: Path, algorithm: str) -> tuple[Path, Any]:
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
    if algorithm == "RS384":
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    else:
        key = ec.generate_private_key(ec.SECP384R1())
    path = tmp_path / f"{algorithm}.pem"
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return path, key.public_key()


def smart_cfg(key_file: Path, **extra: Any) -> dict[str, Any]:
    return {
        "type": "smart",
        "client_id": "peersync",
        "private_key_file": str(key_file),
        "key_id": "key-1",
        **extra,
    }


@pytest.fixture
def rsps() -> Iterator[responses.RequestsMock]:
    with responses.RequestsMock() as mock:
        yield mock


@pytest.fixture
def rsa_key(tmp_path: Path) -> tuple[Path, Any]:
    return write_key(tmp_path, "RS384")


def token_server(rsps: responses.RequestsMock, *, expires_in: int = 300) -> list[str]:
    """A token endpoint handing out tok-1, tok-2, ...; returns the list of issued tokens."""
    issued: list[str] = []
    counter = itertools.count(1)

    def answer(request: requests.PreparedRequest) -> tuple[int, dict[str, str], str]:
        token = f"tok-{next(counter)}"
        issued.append(token)
        body = {"access_token": token, "token_type": "bearer", "expires_in": expires_in}
        return 200, {"Cache-Control": "no-store"}, json.dumps(body)

    rsps.add_callback(responses.POST, TOKEN_URL, callback=answer)
    return issued


def form_of(call: Any) -> dict[str, str]:
    body = call.request.body
    text = body.decode() if isinstance(body, bytes) else body
    return {k: v[0] for k, v in parse_qs(text).items()}


# --- the client assertion ------------------------------------------------------


@pytest.mark.parametrize("algorithm", ["RS384", "ES384"])
def test_client_assertion_claims_and_header(tmp_path: Path, algorithm: str) -> None:
    key_file, public_key = write_key(tmp_path, algorithm)
    auth = build_auth(smart_cfg(key_file, algorithm=algorithm, token_url=TOKEN_URL), base_url=BASE)
    assert isinstance(auth, SmartBackendAuth)
    first = auth.client_assertion(TOKEN_URL)
    second = auth.client_assertion(TOKEN_URL)

    header = jwt.get_unverified_header(first)
    assert header["alg"] == algorithm
    assert header["kid"] == "key-1"
    assert header["typ"] == "JWT"
    claims = jwt.decode(first, public_key, algorithms=[algorithm], audience=TOKEN_URL)
    assert claims["iss"] == claims["sub"] == "peersync"
    assert claims["aud"] == TOKEN_URL
    assert 0 < claims["exp"] - claims["iat"] <= 300
    assert claims["exp"] <= time.time() + 300
    other = jwt.decode(second, public_key, algorithms=[algorithm], audience=TOKEN_URL)
    assert claims["jti"] != other["jti"]


def test_token_request_form(rsps: responses.RequestsMock, rsa_key: tuple[Path, Any]) -> None:
    key_file, public_key = rsa_key
    token_server(rsps)
    auth = build_auth(smart_cfg(key_file, token_url=TOKEN_URL), base_url=BASE)
    assert isinstance(auth, SmartBackendAuth)
    assert auth.access_token() == "tok-1"
    form = form_of(rsps.calls[0])
    assert form["grant_type"] == "client_credentials"
    assert form["client_assertion_type"] == (
        "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
    )
    assert form["scope"] == DEFAULT_SMART_SCOPES
    jwt.decode(form["client_assertion"], public_key, algorithms=["RS384"], audience=TOKEN_URL)
    assert "Authorization" not in rsps.calls[0].request.headers
    auth.close()


# --- the token cache ---------------------------------------------------------------


def test_token_is_cached_and_renewed_near_expiry(
    rsps: responses.RequestsMock, rsa_key: tuple[Path, Any]
) -> None:
    issued = token_server(rsps, expires_in=300)
    rsps.get(f"{BASE}/Patient/p1", json={"resourceType": "Patient", "id": "p1"})
    clock = Clock()
    auth = build_auth(smart_cfg(rsa_key[0], token_url=TOKEN_URL), base_url=BASE, clock=clock)
    with FhirClient(base_url=BASE, auth=auth) as client:
        client.read("Patient", "p1")
        clock.now += 200
        client.read("Patient", "p1")
        assert issued == ["tok-1"]
        clock.now += 71  # 29 s left of 300: under 10% -> renew before use
        client.read("Patient", "p1")
        assert issued == ["tok-1", "tok-2"]
    fhir_calls = [c for c in rsps.calls if (c.request.url or "").startswith(BASE)]
    assert [c.request.headers["Authorization"] for c in fhir_calls] == [
        "Bearer tok-1",
        "Bearer tok-1",
        "Bearer tok-2",
    ]


def test_long_lived_token_renewed_a_minute_early(
    rsps: responses.RequestsMock, rsa_key: tuple[Path, Any]
) -> None:
    issued = token_server(rsps, expires_in=3600)
    clock = Clock()
    auth = build_auth(smart_cfg(rsa_key[0], token_url=TOKEN_URL), base_url=BASE, clock=clock)
    assert isinstance(auth, SmartBackendAuth)
    auth.access_token()
    clock.now += 3539
    auth.access_token()
    clock.now += 2  # 59 s left
    auth.access_token()
    assert issued == ["tok-1", "tok-2"]
    auth.close()


def test_401_reauthenticates_once_and_replays_the_body(
    rsps: responses.RequestsMock, rsa_key: tuple[Path, Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    issued = token_server(rsps)
    url = f"{BASE}/Encounter"
    rsps.post(url, status=401, json={"resourceType": "OperationOutcome", "issue": []})
    rsps.post(url, status=201, json={"resourceType": "Encounter", "id": "e1"})
    auth = build_auth(smart_cfg(rsa_key[0], token_url=TOKEN_URL), base_url=BASE)
    with FhirClient(base_url=BASE, auth=auth) as client:
        result = client.create({"resourceType": "Encounter", "status": "finished"})
    assert result.id == "e1"
    assert issued == ["tok-1", "tok-2"]
    sent = [c.request for c in rsps.calls if c.request.url == url]
    assert [r.headers["Authorization"] for r in sent] == ["Bearer tok-1", "Bearer tok-2"]
    assert sent[0].body == sent[1].body and json.loads(sent[1].body or b"")["status"] == "finished"
    for secret in ("tok-1", "tok-2", "client_assertion", "eyJ"):
        assert secret not in caplog.text


def test_second_401_is_an_auth_error(
    rsps: responses.RequestsMock, rsa_key: tuple[Path, Any]
) -> None:
    issued = token_server(rsps)
    rsps.get(
        f"{BASE}/Patient/p1",
        status=401,
        json={
            "resourceType": "OperationOutcome",
            "issue": [{"severity": "error", "code": "login", "diagnostics": "no"}],
        },
    )
    auth = build_auth(smart_cfg(rsa_key[0], token_url=TOKEN_URL), base_url=BASE)
    with FhirClient(base_url=BASE, auth=auth) as client, pytest.raises(EhrAuthError) as info:
        client.read("Patient", "p1")
    assert info.value.status == 401
    assert issued == ["tok-1", "tok-2"]  # exactly one re-authentication
    assert len([c for c in rsps.calls if (c.request.url or "").startswith(BASE)]) == 2


# --- discovery and token endpoint errors -------------------------------------------


def test_token_endpoint_discovered_once(
    rsps: responses.RequestsMock, rsa_key: tuple[Path, Any]
) -> None:
    key_file, public_key = rsa_key
    rsps.get(WELL_KNOWN, json={"token_endpoint": TOKEN_URL, "capabilities": []})
    issued = token_server(rsps)
    clock = Clock()
    auth = build_auth(smart_cfg(key_file), base_url=BASE, clock=clock)
    assert isinstance(auth, SmartBackendAuth)
    auth.access_token()
    clock.now += 301  # expired: a second token, from the same discovered endpoint
    auth.access_token()
    assert issued == ["tok-1", "tok-2"]
    assert len([c for c in rsps.calls if c.request.url == WELL_KNOWN]) == 1
    assertion = form_of(rsps.calls[1])["client_assertion"]
    assert jwt.decode(assertion, public_key, algorithms=["RS384"], audience=TOKEN_URL)
    assert auth.token_url == TOKEN_URL
    auth.close()


def test_discovery_without_token_endpoint(
    rsps: responses.RequestsMock, rsa_key: tuple[Path, Any]
) -> None:
    rsps.get(WELL_KNOWN, status=404)
    auth = build_auth(smart_cfg(rsa_key[0]), base_url=BASE)
    assert isinstance(auth, SmartBackendAuth)
    with pytest.raises(EhrAuthError, match="SMART discovery failed.*set ehr.auth.token_url"):
        auth.access_token()
    auth.close()


def test_discovered_plain_http_token_endpoint_is_refused(
    rsps: responses.RequestsMock, rsa_key: tuple[Path, Any]
) -> None:
    rsps.get(WELL_KNOWN, json={"token_endpoint": "http://auth.example.org/token"})
    auth = build_auth(smart_cfg(rsa_key[0]), base_url=BASE)
    assert isinstance(auth, SmartBackendAuth)
    with pytest.raises(ConfigError, match="token_url"):
        auth.access_token()
    auth.close()


@pytest.mark.parametrize("status", [400, 401])
def test_token_endpoint_refusal_names_the_oauth_error_only(
    rsps: responses.RequestsMock,
    rsa_key: tuple[Path, Any],
    caplog: pytest.LogCaptureFixture,
    status: int,
) -> None:
    caplog.set_level(logging.DEBUG)
    rsps.post(
        TOKEN_URL,
        status=status,
        json={"error": "invalid_client", "error_description": "assertion eyJhbGc for Dana bad"},
    )
    auth = build_auth(smart_cfg(rsa_key[0], token_url=TOKEN_URL), base_url=BASE)
    with FhirClient(base_url=BASE, auth=auth) as client, pytest.raises(EhrAuthError) as info:
        client.read("Patient", "p1")
    exc = info.value
    assert exc.oauth_error == "invalid_client"
    assert exc.status == status
    assert "OAuth error: invalid_client" in str(exc)
    assert "Dana" not in str(exc) and "eyJ" not in str(exc)
    assert "Dana" not in caplog.text and "eyJ" not in caplog.text


def test_token_endpoint_unavailable_is_transient(
    rsps: responses.RequestsMock, rsa_key: tuple[Path, Any]
) -> None:
    rsps.post(TOKEN_URL, status=503, headers={"Retry-After": "10"})
    auth = build_auth(smart_cfg(rsa_key[0], token_url=TOKEN_URL), base_url=BASE)
    assert isinstance(auth, SmartBackendAuth)
    with pytest.raises(EhrTransient) as info:
        auth.access_token()
    assert info.value.retry_after == 10.0
    auth.close()


# --- client_secret, basic, bearer ----------------------------------------------------


def test_client_secret_uses_basic_client_auth(rsps: responses.RequestsMock, tmp_path: Path) -> None:
    issued = token_server(rsps)
    secret_file = tmp_path / "client.secret"
    secret_file.write_text(SECRET + "\n", encoding="utf-8")
    auth = build_auth(
        {
            "type": "client_secret",
            "client_id": "peersync",
            "client_secret_file": str(secret_file),
            "token_url": TOKEN_URL,
            "scope": ["system/Patient.rs", "system/Encounter.crus"],
        },
        base_url=BASE,
    )
    assert isinstance(auth, ClientSecretAuth)
    assert auth.access_token() == issued[0]
    request = rsps.calls[0].request
    expected = base64.b64encode(f"peersync:{SECRET}".encode()).decode()
    assert request.headers["Authorization"] == f"Basic {expected}"
    assert form_of(rsps.calls[0]) == {
        "grant_type": "client_credentials",
        "scope": "system/Patient.rs system/Encounter.crus",
    }
    assert SECRET not in repr(auth)
    auth.close()


def test_basic_from_file_and_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "pw").write_text(SECRET + "\n", encoding="utf-8")
    from_file = build_auth(
        {"type": "basic", "username": "sync", "password_file": "pw"},
        base_url=BASE,
        base_dir=tmp_path,
    )
    monkeypatch.setenv("PEERSYNC_TEST_PW", SECRET)
    from_env = build_auth(
        {"type": "basic", "username": "sync", "password_env": "PEERSYNC_TEST_PW"}, base_url=BASE
    )
    expected = "Basic " + base64.b64encode(f"sync:{SECRET}".encode()).decode()
    for auth in (from_file, from_env):
        assert isinstance(auth, BasicAuth)
        prepared = requests.Request("GET", BASE, auth=auth).prepare()
        assert prepared.headers["Authorization"] == expected
        assert SECRET not in repr(auth) and "sync" in repr(auth)


def test_bearer_from_file_and_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("static-token-123", encoding="utf-8")
    monkeypatch.setenv("PEERSYNC_TEST_TOKEN", "static-token-123")
    for cfg in (
        {"type": "bearer", "token_file": str(token_file)},
        {"type": "bearer", "token_env": "PEERSYNC_TEST_TOKEN"},
    ):
        auth = build_auth(cfg, base_url=BASE)
        assert isinstance(auth, BearerTokenAuth)
        prepared = requests.Request("GET", BASE, auth=auth).prepare()
        assert prepared.headers["Authorization"] == "Bearer static-token-123"
        assert "static-token-123" not in repr(auth)


def test_none_gives_no_auth() -> None:
    assert build_auth({"type": "none"}, base_url=BASE) is None
    assert build_auth({}, base_url=BASE) is None


# --- config errors name the key, never the secret ---------------------------------------


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        ({"type": "kerberos"}, "ehr.auth.type: must be one of"),
        ({"type": "basic", "password_env": "X"}, "ehr.auth.username: required"),
        ({"type": "basic", "username": "u"}, "ehr.auth.password_file: required (or password_env)"),
        (
            {"type": "basic", "username": "u", "password_file": "/nonexistent/pw"},
            "ehr.auth.password_file: file not found (/nonexistent/pw)",
        ),
        (
            {"type": "bearer", "token_env": "PEERSYNC_TEST_UNSET_VAR"},
            "ehr.auth.token_env: environment variable PEERSYNC_TEST_UNSET_VAR is not set",
        ),
        (
            {"type": "bearer", "token_env": "A", "token_file": "b"},
            "ehr.auth.token_file: set only one of token_file and token_env",
        ),
        (
            {"type": "smart", "client_id": "c", "key_id": "k", "private_key_file": "/nope.pem"},
            "ehr.auth.private_key_file: file not found (/nope.pem)",
        ),
        ({"type": "smart", "client_id": "c", "private_key_file": "x"}, "ehr.auth.key_id: required"),
        (
            {
                "type": "smart",
                "client_id": "c",
                "key_id": "k",
                "private_key_file": "x",
                "algorithm": "HS256",
            },
            "ehr.auth.algorithm: must be one of RS384, ES384",
        ),
        (
            {
                "type": "client_secret",
                "client_id": "c",
                "client_secret_env": "A",
                "token_url": "http://auth.example.org/token",
            },
            "ehr.auth.token_url: http:// is allowed only for loopback",
        ),
    ],
)
def test_config_errors_name_the_key(
    cfg: dict[str, Any], message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PEERSYNC_TEST_UNSET_VAR", raising=False)
    monkeypatch.setenv("A", "x")
    with pytest.raises(ConfigError) as info:
        build_auth(cfg, base_url=BASE)
    assert str(info.value).startswith(message)


def test_bad_key_file_is_named_not_quoted(tmp_path: Path) -> None:
    bogus = tmp_path / "key.pem"
    bogus.write_text("-----BEGIN PRIVATE KEY-----\nTOP-SECRET-MATERIAL\n", encoding="ascii")
    with pytest.raises(ConfigError) as info:
        build_auth(smart_cfg(bogus), base_url=BASE)
    assert str(info.value) == f"ehr.auth.private_key_file: {bogus} is not a PEM private key"


def test_key_must_match_algorithm(rsa_key: tuple[Path, Any], tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="ES384 needs a P-384 EC private key"):
        build_auth(smart_cfg(rsa_key[0], algorithm="ES384"), base_url=BASE)
    es_file, _ = write_key(tmp_path, "ES384")
    with pytest.raises(ConfigError, match="RS384 needs an RSA private key"):
        build_auth(smart_cfg(es_file), base_url=BASE)


def test_private_key_from_env(rsa_key: tuple[Path, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    pem = rsa_key[0].read_text(encoding="ascii")
    monkeypatch.setenv("PEERSYNC_TEST_KEY", pem)
    auth = build_auth(
        {"type": "smart", "client_id": "c", "key_id": "k", "private_key_env": "PEERSYNC_TEST_KEY"},
        base_url=BASE,
    )
    assert isinstance(auth, SmartBackendAuth)
    jwt.decode(
        auth.client_assertion(TOKEN_URL), rsa_key[1], algorithms=["RS384"], audience=TOKEN_URL
    )
    assert "BEGIN" not in repr(auth)


def test_smart_repr_hides_the_key(rsa_key: tuple[Path, Any]) -> None:
    auth = build_auth(smart_cfg(rsa_key[0], token_url=TOKEN_URL), base_url=BASE)
    text = repr(auth)
    assert "client_id='peersync'" in text and "private_key=<hidden>" in text
    assert "BEGIN" not in text and "RSAPrivateKey" not in text


# --- scopes ------------------------------------------------------------------------------


def test_smart_scopes() -> None:
    assert smart_scopes(False) == DEFAULT_SMART_SCOPES
    assert DEFAULT_SMART_SCOPES == (
        "system/Patient.rs system/Practitioner.crs system/Encounter.crus "
        "system/DocumentReference.crus system/Provenance.crs system/Organization.crs "
        "system/Device.crs"
    )
    assert smart_scopes(True).split()[0] == "system/Patient.crs"
    assert smart_scopes(True).split()[1:] == DEFAULT_SMART_SCOPES.split()[1:]
    v1 = smart_scopes(False, v1=True).split()
    assert v1[:3] == [
        "system/Patient.read",
        "system/Practitioner.read",
        "system/Practitioner.write",
    ]
    assert "system/Patient.write" not in v1
    assert "system/Patient.write" in smart_scopes(True, v1=True).split()


def test_default_scope_can_be_given_by_the_caller(
    rsps: responses.RequestsMock, rsa_key: tuple[Path, Any]
) -> None:
    token_server(rsps)
    auth = build_auth(
        smart_cfg(rsa_key[0], token_url=TOKEN_URL),
        base_url=BASE,
        default_scope=smart_scopes(create_patients=True),
    )
    assert isinstance(auth, SmartBackendAuth)
    auth.access_token()
    assert form_of(rsps.calls[0])["scope"].startswith("system/Patient.crs ")
    auth.close()


def test_concurrent_401s_reauthenticate_once_not_once_per_request(
    rsps: responses.RequestsMock, rsa_key: tuple[Path, Any]
) -> None:
    """`[ehr] max_in_flight` requests share one auth: a token the EHR stopped taking is
    renewed once (under the auth's lock), and every request is replayed with the new one."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    issued = token_server(rsps)

    def ehr(request: requests.PreparedRequest) -> tuple[int, dict[str, str], str]:
        time.sleep(0.02)  # keep the requests with the old token in flight together
        if request.headers.get("Authorization") == "Bearer tok-1":
            return 401, {}, json.dumps({"resourceType": "OperationOutcome", "issue": []})
        return 200, {}, json.dumps({"resourceType": "Patient", "id": "p1"})

    rsps.add_callback(responses.GET, f"{BASE}/Patient/p1", callback=ehr)
    auth = build_auth(smart_cfg(rsa_key[0], token_url=TOKEN_URL), base_url=BASE)
    with FhirClient(base_url=BASE, auth=auth, pool_maxsize=8) as client:
        client.auth.access_token()  # type: ignore[union-attr]
        start = threading.Barrier(8)

        def read(_: int) -> str:
            start.wait(timeout=5)
            return str(client.read("Patient", "p1")["id"])

        with ThreadPoolExecutor(max_workers=8) as pool:
            assert list(pool.map(read, range(8))) == ["p1"] * 8
    assert issued == ["tok-1", "tok-2"]  # one re-authentication for the 8 refused requests
