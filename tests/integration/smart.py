"""Helpers for tests against sekmet with SMART Backend Services switched on.

One RSA key (RS384, with a kid) is registered for several sekmet clients:
``peersync`` with exactly the scopes DESIGN.md lists (DEFAULT_SMART_SCOPES),
``seeder`` with ``system/*.*`` (the tests' own hand: seeding patients and
reading back what the EHR holds), and ``lacking``, whose Provenance scope is
read/search only. sekmet grants the requested scopes that appear verbatim in
the client's list (``system/Provenance.crs`` asked of ``lacking`` is dropped
entirely, not narrowed), and checks a bundle POST as a create on ``*``: so the
connector runs in ``single`` mode here.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from connector.auth import DEFAULT_SMART_SCOPES, build_auth
from connector.fhir_client import FhirClient

KID = "peersync-test-key"
LACKING_SCOPES = DEFAULT_SMART_SCOPES.replace("system/Provenance.crs", "system/Provenance.rs")
CLIENTS = {
    "peersync": DEFAULT_SMART_SCOPES,
    "seeder": "system/*.*",
    "lacking": LACKING_SCOPES,
}
PEM_HEADER = "-----BEGIN"
JWT_PREFIX = "eyJ"  # base64url of '{"' : every JWT (client assertion, access token) starts so


def write_key(folder: Path) -> tuple[Path, dict[str, Any]]:
    """A fresh RSA key written 0600 under ``folder``; returns (path, public JWK)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "peersync-ehr.pem"
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    jwk = json.loads(RSAAlgorithm.to_jwk(key.public_key()))
    jwk.update(kid=KID, alg="RS384", use="sig")
    return path, jwk


def smart_settings(jwk: dict[str, Any], *, token_lifetime: int) -> dict[str, Any]:
    return {
        "server_auth": {
            "types": ["smart"],
            "token_lifetime": token_lifetime,
            "smart_clients": [
                {"client_id": cid, "jwks": {"keys": [jwk]}, "scopes": scopes}
                for cid, scopes in CLIENTS.items()
            ],
        }
    }


def configure_smart(home: Path, key_file: Path, *, client_id: str = "peersync",
                    mode: str = "single") -> None:
    """Point peersync.toml's [ehr.auth] at SMART Backend Services (as an operator would)."""
    path = home / "peersync.toml"
    text = path.read_text(encoding="utf-8")
    block = "\n".join([
        'type = "smart"',
        f'client_id = "{client_id}"',
        f"private_key_file = {json.dumps(str(key_file))}",
        f'key_id = "{KID}"',
        'algorithm = "RS384"',
    ])
    text, n = re.subn(r'(?m)^type = "none".*$', lambda _m: block, text, count=1)
    assert n == 1
    text, n = re.subn(r"(?m)^(?:# )?mode = .*$", f'mode = "{mode}"', text, count=1)
    assert n == 1
    path.write_text(text, encoding="utf-8")


def seeder(base_url: str, key_file: Path) -> FhirClient:
    """The tests' own client (``system/*.*``): seeds patients, reads back what the EHR holds."""
    auth = build_auth(
        {"type": "smart", "client_id": "seeder", "private_key_file": str(key_file),
         "key_id": KID, "algorithm": "RS384", "scope": "system/*.*"},
        base_url=base_url,
    )
    return FhirClient(base_url=base_url, auth=auth, timeout_s=10)
