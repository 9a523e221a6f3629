"""SMART Backend Services against the real FHIR server (sekmet) with exactly PeerSync's scopes.

sekmet is configured with one client, ``peersync``, whose public JWK (RS384,
with a kid) is registered and whose allowed scopes are exactly
DEFAULT_SMART_SCOPES. Its access tokens live 3 seconds, so a test can watch
one expire mid-run.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from connector.auth import DEFAULT_SMART_SCOPES, SmartBackendAuth, build_auth
from connector.errors import EhrAuthError
from connector.fhir_client import Exchange, FhirClient
from tests.ehr_server import SekmetServer

pytestmark = pytest.mark.integration

TOKEN_LIFETIME_S = 3
KID = "peersync-test-key"
STAFF_SYSTEM = "https://agency.example/fhir/sid/staff"


@pytest.fixture(scope="module")
def key_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path = tmp_path_factory.mktemp("keys") / "peersync.pem"
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return path


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, key_file: Path) -> Iterator[SekmetServer]:
    private = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
    assert isinstance(private, rsa.RSAPrivateKey)
    jwk = json.loads(RSAAlgorithm.to_jwk(private.public_key()))
    jwk.update(kid=KID, alg="RS384", use="sig")
    settings = {
        "server_auth": {
            "types": ["smart"],
            "token_lifetime": TOKEN_LIFETIME_S,
            "smart_clients": [
                {"client_id": "peersync", "jwks": {"keys": [jwk]}, "scopes": DEFAULT_SMART_SCOPES}
            ],
        }
    }
    with SekmetServer(tmp_path_factory.mktemp("ehr"), settings=settings) as srv:
        yield srv


def smart(server: SekmetServer, key_file: Path, **kwargs: Any) -> SmartBackendAuth:
    cfg = {
        "type": "smart",
        "client_id": "peersync",
        "private_key_file": str(key_file),
        "key_id": KID,
        "algorithm": "RS384",
    }
    cfg.update(kwargs.pop("cfg", {}))
    auth = build_auth(cfg, base_url=server.base_url, **kwargs)
    assert isinstance(auth, SmartBackendAuth)
    return auth


def practitioner(staff_id: str) -> dict[str, Any]:
    return {
        "resourceType": "Practitioner",
        "identifier": [{"system": STAFF_SYSTEM, "value": staff_id}],
        "name": [{"family": "Rivera", "given": ["Sam"]}],
    }


def test_anonymous_requests_are_refused(server: SekmetServer) -> None:
    with FhirClient(base_url=server.base_url) as client:
        assert client.capability_statement()["resourceType"] == "CapabilityStatement"
        with pytest.raises(EhrAuthError) as info:
            client.search("Practitioner", {"identifier": f"{STAFF_SYSTEM}|x"})
    assert info.value.status == 401
    assert info.value.outcome is not None and info.value.outcome.codes == ["login"]


def test_discovered_token_and_conditional_create(server: SekmetServer, key_file: Path) -> None:
    auth = smart(server, key_file)
    exchanges: list[Exchange] = []
    with FhirClient(base_url=server.base_url, auth=auth, on_exchange=exchanges.append) as client:
        criteria = f"identifier={STAFF_SYSTEM}|S-100"
        first = client.create(practitioner("S-100"), if_none_exist=criteria)
        again = client.create(practitioner("S-100"), if_none_exist=criteria)
        found = client.search("Practitioner", {"identifier": f"{STAFF_SYSTEM}|S-100"})
    assert auth.token_url == server.base_url.removesuffix("/fhir") + "/auth/token"
    assert (first.status, first.created, first.version_id) == (201, True, "1")
    assert (again.status, again.created, again.id) == (200, False, first.id)
    assert [r["id"] for r in found] == [first.id]
    assert [e.status for e in exchanges] == [201, 200, 200]


def test_out_of_scope_write_names_the_missing_scope(server: SekmetServer, key_file: Path) -> None:
    auth = smart(server, key_file)
    with FhirClient(base_url=server.base_url, auth=auth) as client:
        with pytest.raises(EhrAuthError) as info:
            client.create(
                {"resourceType": "Observation", "status": "final", "code": {"text": "mood"}}
            )
        assert info.value.status == 403
        assert info.value.missing_scope == "system/Observation.c"
        assert "missing scope system/Observation.c" in str(info.value)
        # sekmet checks a bundle POST to [base] as a create on "*": bundles need system/*.c
        with pytest.raises(EhrAuthError) as bundle_info:
            client.transaction({"resourceType": "Bundle", "type": "transaction", "entry": []})
        assert bundle_info.value.missing_scope == "system/*.c"


def test_token_renewed_when_it_expires_mid_run(server: SekmetServer, key_file: Path) -> None:
    auth = smart(server, key_file)
    with FhirClient(base_url=server.base_url, auth=auth) as client:
        client.search("Practitioner", {"_count": "1"})
        time.sleep(TOKEN_LIFETIME_S + 0.3)
        client.search("Practitioner", {"_count": "1"})
    assert auth.tokens_fetched == 2


def test_token_the_server_expired_is_reauthenticated_on_401(
    server: SekmetServer, key_file: Path
) -> None:
    # A client clock that stands still: the cached token looks fresh to us, and
    # only the server's 401 ("expired") can tell us to get a new one.
    frozen = time.time()
    auth = smart(server, key_file, clock=lambda: frozen)
    exchanges: list[Exchange] = []
    with FhirClient(base_url=server.base_url, auth=auth, on_exchange=exchanges.append) as client:
        client.create(practitioner("S-200"), if_none_exist=f"identifier={STAFF_SYSTEM}|S-200")
        time.sleep(TOKEN_LIFETIME_S + 0.3)
        again = client.create(
            practitioner("S-200"), if_none_exist=f"identifier={STAFF_SYSTEM}|S-200"
        )
    assert again.status == 200 and again.created is False
    assert auth.tokens_fetched == 2
    assert [e.status for e in exchanges] == [201, 200]


def test_unknown_client_and_replayed_assertion_are_refused(
    server: SekmetServer, key_file: Path
) -> None:
    stranger = smart(server, key_file, cfg={"client_id": "stranger"})
    with (
        FhirClient(base_url=server.base_url, auth=stranger) as client,
        pytest.raises(EhrAuthError) as info,
    ):
        client.read("Patient", "p1")
    assert info.value.oauth_error == "invalid_client"

    auth = smart(server, key_file)
    token_url = auth.resolve_token_url()
    assertion = auth.client_assertion(token_url)
    form = {
        "grant_type": "client_credentials",
        "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        "client_assertion": assertion,
        "scope": DEFAULT_SMART_SCOPES,
    }
    with requests.Session() as session:
        first = session.post(token_url, data=form, timeout=5)
        replay = session.post(token_url, data=form, timeout=5)
    auth.close()
    assert first.status_code == 200
    assert first.json()["scope"] == DEFAULT_SMART_SCOPES
    assert replay.status_code == 401 and replay.json()["error"] == "invalid_client"
