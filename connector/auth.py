"""How PeerSync authenticates to the EHR: requests ``AuthBase`` classes and :func:`build_auth`.

``[ehr.auth] type`` picks one:

    none           no Authorization header
    basic          username + password_file | password_env
    bearer         token_file | token_env (a static token)
    client_secret  OAuth2 client_credentials, client_secret_basic
                   (client_id, client_secret_file | client_secret_env, scope, token_url)
    smart          SMART Backend Services: client_credentials with a private_key_jwt
                   client assertion (client_id, private_key_file, key_id, algorithm,
                   scope, token_url or discovery from [base]/.well-known/smart-configuration;
                   private_key_env may name a variable holding the PEM instead of a file)

Token-based auths cache the access token, renew it before it expires and, on a
401, fetch a new token once and replay the request. Secrets are read at build
time, kept in private attributes, hidden from ``repr`` and never logged or put
in an exception message (a ConfigError names the config key and the path).
"""

from __future__ import annotations

import base64
import logging
import os
import re
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

import jwt
import requests
import requests.auth
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from .errors import ConfigError, EhrAuthError, EhrTransient
from .fhir_client import (
    DEFAULT_USER_AGENT,
    check_ehr_url,
    new_session,
    parse_retry_after,
    redact_url,
    transport_errors,
)

__all__ = [
    "ASSERTION_LIFETIME_S",
    "AUTH_TYPES",
    "DEFAULT_SMART_SCOPES",
    "BasicAuth",
    "BearerTokenAuth",
    "ClientSecretAuth",
    "SmartBackendAuth",
    "TokenAuth",
    "build_auth",
    "load_private_key",
    "parse_private_key",
    "smart_scopes",
]

log = logging.getLogger("peersync.auth")

AUTH_TYPES = ("none", "basic", "bearer", "client_secret", "smart")
SMART_ALGORITHMS = ("RS384", "ES384")
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
# SMART caps a client assertion at 5 minutes; stay a minute under for clock skew.
ASSERTION_LIFETIME_S = 240
# SMART requires expires_in; if a server omits it, assume the usual 5 minutes.
DEFAULT_TOKEN_LIFETIME_S = 300

# What the connector uses, no more (SMART v2). Patient gains "c" only where the
# agency profile lets PeerSync create patients: see smart_scopes().
DEFAULT_SMART_SCOPES = (
    "system/Patient.rs system/Practitioner.crs system/Encounter.crus "
    "system/DocumentReference.crus system/Provenance.crs system/Organization.crs "
    "system/Device.crs"
)

_V2_ORDER = "cruds"
_OAUTH_CODE_RE = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")

Clock = Callable[[], float]
SessionFactory = Callable[[], requests.Session]


def smart_scopes(create_patients: bool, v1: bool = False) -> str:
    """The scopes to ask for: DEFAULT_SMART_SCOPES, plus Patient create when patients are created.

    ``v1=True`` gives the SMART v1 form (``.read`` for r/s, ``.write`` for c/u/d).
    """
    scopes: list[tuple[str, str]] = []
    for scope in DEFAULT_SMART_SCOPES.split():
        rtype, _, perms = scope.removeprefix("system/").partition(".")
        if create_patients and rtype == "Patient":
            perms += "c"
        scopes.append((rtype, "".join(ch for ch in _V2_ORDER if ch in perms)))
    if not v1:
        return " ".join(f"system/{rtype}.{perms}" for rtype, perms in scopes)
    out: list[str] = []
    for rtype, perms in scopes:
        if set(perms) & set("rs"):
            out.append(f"system/{rtype}.read")
        if set(perms) & set("cud"):
            out.append(f"system/{rtype}.write")
    return " ".join(out)


# ---------------------------------------------------------------- static credentials


class BasicAuth(requests.auth.AuthBase):
    """HTTP Basic. The password is never shown."""

    def __init__(self, username: str, password: str) -> None:
        self.username = username
        self._password = password

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        pair = f"{self.username}:{self._password}".encode()
        r.headers["Authorization"] = "Basic " + base64.b64encode(pair).decode("ascii")
        return r

    def __repr__(self) -> str:
        return f"BasicAuth(username={self.username!r}, password=<hidden>)"


class BearerTokenAuth(requests.auth.AuthBase):
    """A static bearer token. The token is never shown."""

    def __init__(self, token: str) -> None:
        self._token = token

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        r.headers["Authorization"] = f"Bearer {self._token}"
        return r

    def __repr__(self) -> str:
        return "BearerTokenAuth(token=<hidden>)"


# ---------------------------------------------------------------- OAuth tokens


class TokenAuth(requests.auth.AuthBase):
    """Base of the OAuth2 client_credentials auths: token cache, renewal, one re-auth on 401.

    Subclasses say how to ask for a token (:meth:`_token_request`). The token
    endpoint is ``token_url`` or, when None, the ``token_endpoint`` of
    ``[base]/.well-known/smart-configuration`` (fetched once).
    """

    def __init__(
        self,
        *,
        base_url: str,
        scope: str,
        token_url: str | None = None,
        session_factory: SessionFactory | None = None,
        timeout_s: float = 30.0,
        clock: Clock = time.time,
        ca_file: str | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.scope = scope
        self.token_url = token_url
        self._session_factory = session_factory or (lambda: new_session(ca_file=ca_file))
        self._session: requests.Session | None = None
        self._timeout = (min(timeout_s, 10.0), timeout_s)
        self._clock = clock
        self._lock = threading.RLock()
        self._token: str | None = None
        self._expires_at = 0.0
        self._renew_at = 0.0
        self.tokens_fetched = 0

    # -- requests hooks

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        r.headers["Authorization"] = f"Bearer {self.access_token()}"
        r.register_hook("response", self._on_response)
        return r

    def _on_response(self, resp: requests.Response, **kwargs: Any) -> requests.Response:
        """On a 401, drop the token, get a new one and replay the request once."""
        request = resp.request
        if resp.status_code != 401 or getattr(request, "_peersync_replayed", False):
            return resp
        if not isinstance(request, requests.PreparedRequest) or not _can_resend(request):
            return resp
        failed = (request.headers.get("Authorization") or "").removeprefix("Bearer ")
        self.invalidate(failed)
        resp.content  # noqa: B018 - drain the body so the connection goes back to the pool
        resp.close()
        replay = request.copy()
        if getattr(replay, "_body_position", None) is not None:  # a stream body: rewind it
            requests.utils.rewind_body(replay)
        replay.headers["Authorization"] = f"Bearer {self.access_token()}"
        replay._peersync_replayed = True  # type: ignore[attr-defined]
        log.info("EHR answered 401: re-authenticated once and replaying the request")
        adapter = resp.connection
        new = adapter.send(replay, **kwargs)
        new.history.append(resp)
        new.request = replay
        return new

    # -- the token cache

    def access_token(self) -> str:
        """A valid access token: the cached one, or a new one when it is (nearly) expired."""
        with self._lock:
            if self._token is not None and self._clock() < self._renew_at:
                return self._token
            token, lifetime = self._fetch_token()
            now = self._clock()
            self._token = token
            self._expires_at = now + lifetime
            # renew with 10% of the lifetime left, at most 60 s early
            self._renew_at = now + lifetime - min(60.0, lifetime * 0.1)
            self.tokens_fetched += 1
            return token

    def invalidate(self, token: str | None = None) -> None:
        """Forget the cached token (only if it is ``token``, when given)."""
        with self._lock:
            if token is None or token == self._token:
                self._token = None
                self._renew_at = 0.0

    @property
    def token_expires_at(self) -> float | None:
        return self._expires_at if self._token is not None else None

    def close(self) -> None:
        if self._session is not None:
            self._session.close()
            self._session = None

    # -- talking to the authorization server

    @property
    def session(self) -> requests.Session:
        if self._session is None:
            self._session = self._session_factory()
        return self._session

    def resolve_token_url(self) -> str:
        """``token_url`` or the discovered ``token_endpoint`` (cached)."""
        with self._lock:
            if self.token_url is None:
                self.token_url = self._discover()
            return self.token_url

    def _discover(self) -> str:
        url = f"{self.base_url}/.well-known/smart-configuration"
        with transport_errors("GET", url):
            resp = self.session.get(
                url,
                headers={"Accept": "application/json", "User-Agent": DEFAULT_USER_AGENT},
                timeout=self._timeout,
                verify=self.session.verify,
            )
        log.debug("GET %s -> %s (SMART discovery)", redact_url(url), resp.status_code)
        if resp.status_code == 429 or resp.status_code >= 500:
            raise EhrTransient(
                f"SMART discovery failed: GET {redact_url(url)} ({resp.status_code})",
                status=resp.status_code,
                method="GET",
                url=redact_url(url),
                retry_after=parse_retry_after(resp.headers.get("Retry-After")),
            )
        endpoint = None
        if resp.status_code == 200:
            try:
                endpoint = resp.json().get("token_endpoint")
            except (ValueError, AttributeError):
                endpoint = None
        if not isinstance(endpoint, str) or not endpoint:
            raise EhrAuthError(
                f"SMART discovery failed: GET {redact_url(url)} ({resp.status_code}, "
                "no token_endpoint); set ehr.auth.token_url",
                status=resp.status_code,
                method="GET",
                url=redact_url(url),
            )
        return check_ehr_url(endpoint, key="ehr.auth.token_url (discovered token_endpoint)")

    def _token_request(self, token_url: str) -> tuple[dict[str, str], dict[str, str]]:
        """(form fields, extra headers) of a token request."""
        raise NotImplementedError

    def _fetch_token(self) -> tuple[str, float]:
        token_url = self.resolve_token_url()
        form, headers = self._token_request(token_url)
        headers = {"Accept": "application/json", "User-Agent": DEFAULT_USER_AGENT, **headers}
        shown = redact_url(token_url)
        started = time.perf_counter()
        with transport_errors("POST", token_url):
            resp = self.session.post(
                token_url,
                data=form,
                headers=headers,
                timeout=self._timeout,
                verify=self.session.verify,
                allow_redirects=False,
            )
        log.debug(
            "POST %s -> %s in %.1f ms (token request)",
            shown,
            resp.status_code,
            (time.perf_counter() - started) * 1000.0,
        )
        body: Any
        try:
            body = resp.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            body = {}
        status = resp.status_code
        if status == 429 or status >= 500:
            raise EhrTransient(
                f"EHR token endpoint could not process POST {shown} ({status})",
                status=status,
                method="POST",
                url=shown,
                retry_after=parse_retry_after(resp.headers.get("Retry-After")),
            )
        if status != 200:
            code = body.get("error")
            code = code if isinstance(code, str) and _OAUTH_CODE_RE.match(code) else None
            raise EhrAuthError(
                f"EHR token endpoint refused the client: POST {shown} ({status}; "
                f"OAuth error: {code or 'none given'})",
                status=status,
                method="POST",
                url=shown,
                oauth_error=code,
            )
        token = body.get("access_token")
        token_type = str(body.get("token_type") or "bearer")
        if not isinstance(token, str) or not token or token_type.lower() != "bearer":
            raise EhrAuthError(
                f"EHR token endpoint gave no bearer access_token: POST {shown}",
                status=status,
                method="POST",
                url=shown,
            )
        try:
            lifetime = float(body.get("expires_in", DEFAULT_TOKEN_LIFETIME_S))
        except (TypeError, ValueError):
            lifetime = DEFAULT_TOKEN_LIFETIME_S
        return token, max(0.0, lifetime)


def _can_resend(request: requests.PreparedRequest) -> bool:
    body = request.body
    if body is None or isinstance(body, bytes | str):
        return True
    return getattr(request, "_body_position", None) is not None


class ClientSecretAuth(TokenAuth):
    """OAuth2 client_credentials with client_secret_basic (RFC 6749 2.3.1)."""

    def __init__(self, *, client_id: str, client_secret: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.client_id = client_id
        self._client_secret = client_secret

    def _token_request(self, token_url: str) -> tuple[dict[str, str], dict[str, str]]:
        # RFC 6749 2.3.1: both parts form-urlencoded before Basic encoding
        pair = f"{quote(self.client_id, safe='')}:{quote(self._client_secret, safe='')}"
        headers = {"Authorization": "Basic " + base64.b64encode(pair.encode()).decode("ascii")}
        form = {"grant_type": "client_credentials"}
        if self.scope:
            form["scope"] = self.scope
        return form, headers

    def __repr__(self) -> str:
        return (
            f"ClientSecretAuth(client_id={self.client_id!r}, client_secret=<hidden>, "
            f"token_url={self.token_url!r}, scope={self.scope!r})"
        )


class SmartBackendAuth(TokenAuth):
    """SMART Backend Services: client_credentials with a signed JWT client assertion."""

    def __init__(
        self,
        *,
        client_id: str,
        private_key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey,
        key_id: str,
        algorithm: str = "RS384",
        scope: str = DEFAULT_SMART_SCOPES,
        **kwargs: Any,
    ) -> None:
        if algorithm not in SMART_ALGORITHMS:
            raise ConfigError(f"ehr.auth.algorithm: must be one of {', '.join(SMART_ALGORITHMS)}")
        _check_key_matches(private_key, algorithm)
        super().__init__(scope=scope, **kwargs)
        self.client_id = client_id
        self.key_id = key_id
        self.algorithm = algorithm
        self._private_key = private_key

    def client_assertion(self, token_url: str) -> str:
        """A fresh signed assertion: iss = sub = client_id, aud = token URL, unique jti."""
        now = int(self._clock())
        claims = {
            "iss": self.client_id,
            "sub": self.client_id,
            "aud": token_url,
            "iat": now,
            "exp": now + ASSERTION_LIFETIME_S,
            "jti": uuid.uuid4().hex,
        }
        return jwt.encode(
            claims,
            self._private_key,
            algorithm=self.algorithm,
            headers={"kid": self.key_id, "typ": "JWT"},
        )

    def _token_request(self, token_url: str) -> tuple[dict[str, str], dict[str, str]]:
        form = {
            "grant_type": "client_credentials",
            "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": self.client_assertion(token_url),
        }
        if self.scope:
            form["scope"] = self.scope
        return form, {}

    def __repr__(self) -> str:
        return (
            f"SmartBackendAuth(client_id={self.client_id!r}, key_id={self.key_id!r}, "
            f"algorithm={self.algorithm!r}, token_url={self.token_url!r}, "
            f"scope={self.scope!r}, private_key=<hidden>)"
        )


def _check_key_matches(key: object, algorithm: str, key_name: str = "ehr.auth") -> None:
    if algorithm == "RS384":
        if not isinstance(key, rsa.RSAPrivateKey):
            raise ConfigError(f"{key_name}.private_key_file: RS384 needs an RSA private key")
        if key.key_size < 2048:
            raise ConfigError(f"{key_name}.private_key_file: RSA key must be >= 2048 bits")
    elif algorithm == "ES384" and (
        not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp384r1"
    ):
        raise ConfigError(f"{key_name}.private_key_file: ES384 needs a P-384 EC private key")


def load_private_key(
    path: str | os.PathLike[str], *, key: str = "ehr.auth.private_key_file"
) -> rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey:
    """Load an unencrypted PEM private key; errors name ``key`` and the path, never the content."""
    p = Path(path).expanduser()
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{key}: file not found ({p})") from None
    except OSError as exc:
        raise ConfigError(f"{key}: cannot read {p} ({exc.strerror})") from None
    return parse_private_key(data, key=key, where=str(p))


def parse_private_key(
    data: bytes, *, key: str, where: str = "the key"
) -> rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey:
    """Parse PEM bytes into a private key; errors never quote the bytes."""
    try:
        loaded = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise ConfigError(f"{key}: {where} is encrypted; give an unencrypted PEM key") from None
    except (ValueError, UnsupportedAlgorithm):
        raise ConfigError(f"{key}: {where} is not a PEM private key") from None
    if not isinstance(loaded, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise ConfigError(f"{key}: {where} is neither an RSA nor an EC private key")
    return loaded


# ---------------------------------------------------------------- the builder


def _text(cfg: Mapping[str, Any], name: str, prefix: str, *, required: bool = True) -> str | None:
    value = cfg.get(name)
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            raise ConfigError(f"{prefix}.{name}: required")
        return None
    if not isinstance(value, str):
        raise ConfigError(f"{prefix}.{name}: must be a string")
    return value.strip()


def _required(cfg: Mapping[str, Any], name: str, prefix: str) -> str:
    value = _text(cfg, name, prefix)
    if value is None:  # _text raised already; this keeps the type checker informed
        raise ConfigError(f"{prefix}.{name}: required")
    return value


def _path(value: str, base_dir: Path | None) -> Path:
    p = Path(value).expanduser()
    return base_dir / p if base_dir is not None and not p.is_absolute() else p


def _file_or_env(cfg: Mapping[str, Any], name: str, prefix: str) -> tuple[str | None, str | None]:
    file_key, env_key = f"{name}_file", f"{name}_env"
    path = _text(cfg, file_key, prefix, required=False)
    var = _text(cfg, env_key, prefix, required=False)
    if path and var:
        raise ConfigError(f"{prefix}.{file_key}: set only one of {file_key} and {env_key}")
    if not path and not var:
        raise ConfigError(f"{prefix}.{file_key}: required (or {env_key})")
    return path, var


def _env(var: str, key: str) -> str:
    value = os.environ.get(var)
    if value is None:
        raise ConfigError(f"{key}: environment variable {var} is not set")
    if not value.strip():
        raise ConfigError(f"{key}: environment variable {var} is empty")
    return value.strip()


def _secret(cfg: Mapping[str, Any], name: str, prefix: str, base_dir: Path | None = None) -> str:
    """A secret from ``<name>_file`` (its one line) or ``<name>_env`` (a variable's name)."""
    file_key, env_key = f"{name}_file", f"{name}_env"
    path, var = _file_or_env(cfg, name, prefix)
    if path:
        p = _path(path, base_dir)
        try:
            value = p.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            raise ConfigError(f"{prefix}.{file_key}: file not found ({p})") from None
        except UnicodeDecodeError:
            raise ConfigError(f"{prefix}.{file_key}: {p} is not UTF-8 text") from None
        except OSError as exc:
            raise ConfigError(f"{prefix}.{file_key}: cannot read {p} ({exc.strerror})") from None
        if not value:
            raise ConfigError(f"{prefix}.{file_key}: {p} is empty")
        if "\n" in value:
            raise ConfigError(f"{prefix}.{file_key}: {p} must hold a single line")
        return value
    assert var is not None
    return _env(var, f"{prefix}.{env_key}")


def _scope(cfg: Mapping[str, Any], prefix: str, default: str) -> str:
    value = cfg.get("scope")
    if value is None:
        return default
    if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
        value = " ".join(value)
    if not isinstance(value, str) or not value.split():
        raise ConfigError(f"{prefix}.scope: must be a non-empty string or list of strings")
    return " ".join(value.split())


def build_auth(
    cfg: Mapping[str, Any],
    *,
    base_url: str,
    session_factory: SessionFactory | None = None,
    ca_file: str | None = None,
    timeout_s: float = 30.0,
    default_scope: str | None = None,
    clock: Clock = time.time,
    base_dir: str | os.PathLike[str] | None = None,
    prefix: str = "ehr.auth",
) -> requests.auth.AuthBase | None:
    """Build the auth named by the ``[ehr.auth]`` table; secrets and keys are read now.

    ``default_scope`` is used when the table has no ``scope`` (default
    :data:`DEFAULT_SMART_SCOPES`; pass ``smart_scopes(create_patients=True)``
    where the profile creates patients). Relative file paths are taken from
    ``base_dir`` (the config file's folder) when given. ``private_key_env`` names
    a variable holding the PEM text. Returns None for ``type = "none"``.
    """
    folder = Path(base_dir) if base_dir is not None else None
    kind = cfg.get("type", "none")
    if kind not in AUTH_TYPES:
        raise ConfigError(f"{prefix}.type: must be one of {', '.join(AUTH_TYPES)}")
    if kind == "none":
        return None
    if kind == "basic":
        return BasicAuth(
            _required(cfg, "username", prefix), _secret(cfg, "password", prefix, folder)
        )
    if kind == "bearer":
        return BearerTokenAuth(_secret(cfg, "token", prefix, folder))

    token_url = _text(cfg, "token_url", prefix, required=False)
    common: dict[str, Any] = {
        "base_url": check_ehr_url(base_url),
        "token_url": check_ehr_url(token_url, key=f"{prefix}.token_url") if token_url else None,
        "session_factory": session_factory,
        "timeout_s": timeout_s,
        "clock": clock,
        "ca_file": ca_file,
    }
    client_id = _required(cfg, "client_id", prefix)
    if kind == "client_secret":
        return ClientSecretAuth(
            client_id=client_id,
            client_secret=_secret(cfg, "client_secret", prefix, folder),
            scope=_scope(cfg, prefix, default_scope or ""),
            **common,
        )
    # smart
    algorithm = _text(cfg, "algorithm", prefix, required=False) or "RS384"
    if algorithm not in SMART_ALGORITHMS:
        raise ConfigError(f"{prefix}.algorithm: must be one of {', '.join(SMART_ALGORITHMS)}")
    key_id = _required(cfg, "key_id", prefix)
    key_file, key_var = _file_or_env(cfg, "private_key", prefix)
    if key_file:
        private_key = load_private_key(_path(key_file, folder), key=f"{prefix}.private_key_file")
    else:
        assert key_var is not None
        pem = _env(key_var, f"{prefix}.private_key_env")
        private_key = parse_private_key(
            pem.encode(), key=f"{prefix}.private_key_env", where=f"${key_var}"
        )
    _check_key_matches(private_key, algorithm, prefix)
    return SmartBackendAuth(
        client_id=client_id,
        private_key=private_key,
        key_id=key_id,
        algorithm=algorithm,
        scope=_scope(cfg, prefix, default_scope or DEFAULT_SMART_SCOPES),
        **common,
    )
