"""The FHIR R4 REST client: one HTTP session to one EHR, every failure mapped once.

:class:`FhirClient` speaks the handful of interactions PeerSync needs (read,
search, create, update, transaction, batch, capabilities) over a single
keep-alive :class:`requests.Session` with explicit (connect, read) timeouts.

Transport retries happen only where the request cannot have reached the
server (connect errors). Anything after that is reported, never re-sent: a
lost answer is :class:`~connector.errors.EhrOutcomeUnknown` and the queue
decides (after looking the resource up by identifier).

Every requests/urllib3 exception and every HTTP error status becomes one of
ours in exactly one place, :func:`transport_errors` and :func:`http_error`.
Messages, log lines and audit exchanges carry method, path, status and
OperationOutcome *codes*; query values (identifiers, MRNs) and diagnostics
text never appear in them.
"""

from __future__ import annotations

import contextlib
import email.utils
import http.client
import json
import logging
import re
import socket
import ssl
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC
from http import HTTPStatus
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qsl, quote, urlencode, urljoin, urlsplit, urlunsplit

import requests
import requests.auth
import urllib3.exceptions
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from .config import check_ehr_url, is_loopback_host
from .errors import (
    ConfigError,
    ConnectorError,
    EhrAuthError,
    EhrError,
    EhrHttpError,
    EhrOutcomeUnknown,
    EhrRejected,
    EhrTransient,
    EhrUnavailable,
    Outcome,
    error_class_for,
)
from .logging_setup import protect_library_loggers

__all__ = [
    "FHIR_JSON",
    "EntryResult",
    "Exchange",
    "FhirClient",
    "QueryParams",
    "WriteResult",
    "check_ehr_url",
    "encode_query",
    "entry_results",
    "http_error",
    "is_loopback_host",
    "new_session",
    "parse_etag",
    "parse_location",
    "parse_retry_after",
    "redact_url",
    "transport_errors",
]

log = logging.getLogger("peersync.fhir")
# urllib3 logs request URLs with their query values (identifiers, MRNs): its "Retrying ..."
# warning with the EHR down, its request lines at DEBUG. Redacted at the source, whoever
# configured logging (see connector.logging_setup).
protect_library_loggers()

FHIR_JSON = "application/fhir+json"
DEFAULT_USER_AGENT = "PeerSync/0.1"

# A query as the caller has it: a mapping, (name, value) pairs (repeated names),
# or a raw query string such as "identifier=https://sys|v". A string is taken
# literally, NOT decoded ("+" stays "+", "%" stays "%"): split on "&" and the
# first "=", then percent-encoded. A value holding "&" needs the mapping form.
QueryParams = Mapping[str, str] | Sequence[tuple[str, str]] | str

_TYPE_RE = re.compile(r"^[A-Z][A-Za-z]{1,63}$")
_ID_RE = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
_LOCATION_RE = re.compile(
    r"(?:^|/)(?P<type>[A-Z][A-Za-z]+)/(?P<id>[A-Za-z0-9\-.]{1,64})"
    r"(?:/_history/(?P<version>[A-Za-z0-9\-.]{1,64}))?/?$"
)
_ETAG_RE = re.compile(r'^\s*(?:W/)?"?([^"\s]+)"?\s*$')
_STATUS_RE = re.compile(r"^\s*(\d{3})\b")
_CODE_RE = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")
_PARAM_NAME_RE = re.compile(r"^[A-Za-z0-9_:.\-]{1,100}$")
_SCOPE_RE = re.compile(r"\b(?:system|user|patient)/(?:[A-Z][A-Za-z]+|\*)\.(?:[a-z]+|\*)")
# sekmet: "Token scopes [...] do not permit 'c' on Observation"
_NOT_PERMIT_RE = re.compile(r"do not permit '([cruds]+)' on ([A-Z][A-Za-z]+|\*)")


# ---------------------------------------------------------------- results


@dataclass(frozen=True)
class WriteResult:
    """What a create or update left on the EHR (parsed from the body, else the headers)."""

    resource_type: str
    id: str
    version_id: str | None
    status: int
    created: bool
    location: str | None
    resource: dict[str, Any] | None


@dataclass(frozen=True)
class Exchange:
    """One HTTP exchange, for the audit log: no bodies, no query values."""

    method: str
    path: str
    status: int | None
    duration_ms: float
    resource_type: str | None
    resource_id: str | None
    version_id: str | None
    outcome_codes: tuple[str, ...]
    error: str | None


@dataclass(frozen=True)
class EntryResult:
    """One entry of a transaction-response or batch-response Bundle.

    ``status`` is the number from ``response.status`` ("201 Created" -> 201),
    0 when the server sent none or garbage.
    """

    status: int
    location: str | None
    resource_type: str | None
    id: str | None
    version_id: str | None
    outcome: Outcome | None
    resource: dict[str, Any] | None

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


# ---------------------------------------------------------------- URL helpers


def encode_query(params: QueryParams) -> str:
    """Percent-encode a query uniformly ("|" -> %7C, ":" -> %3A, "/" -> %2F, " " -> %20).

    ``encode_query("identifier=https://s|a+b")`` -> ``identifier=https%3A%2F%2Fs%7Ca%2Bb``.
    """
    if isinstance(params, str):
        pairs = []
        for part in params.removeprefix("?").split("&"):
            if part:
                name, _, value = part.partition("=")
                pairs.append((name, value))
    elif isinstance(params, Mapping):
        pairs = [(str(k), str(v)) for k, v in params.items()]
    else:
        pairs = [(str(k), str(v)) for k, v in params]
    return urlencode(pairs, quote_via=quote, safe="")


def redact_url(url: str) -> str:
    """The URL with every query value replaced by ``<redacted>`` (names kept), no userinfo.

    ``https://ehr/fhir/Patient?identifier=x|MRN1`` -> ``https://ehr/fhir/Patient?identifier=<redacted>``;
    a bare path stays a bare path.
    """
    parts = urlsplit(url)
    netloc = ""
    if parts.hostname:
        host = parts.hostname
        netloc = f"[{host}]" if ":" in host else host
        try:
            port = parts.port
        except ValueError:
            port = None
        if port is not None:
            netloc += f":{port}"
    names = []
    for name, _ in parse_qsl(parts.query, keep_blank_values=True):
        names.append(name if _PARAM_NAME_RE.match(name) else "<param>")
    query = "&".join(f"{name}=<redacted>" for name in names)
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def _redacted_path(url: str) -> str:
    parts = urlsplit(redact_url(url))
    return urlunsplit(("", "", parts.path or "/", parts.query, ""))


def parse_etag(value: str | None) -> str | None:
    """``W/"3"`` -> ``"3"``."""
    if not value:
        return None
    match = _ETAG_RE.match(value)
    return match.group(1) if match else None


def parse_location(value: str | None) -> tuple[str | None, str | None, str | None]:
    """``[base]/Encounter/42/_history/3`` (absolute or relative) -> (type, id, version)."""
    if not value:
        return None, None, None
    path = urlsplit(value).path if "://" in value else value.split("?", 1)[0]
    match = _LOCATION_RE.search(path)
    if not match:
        return None, None, None
    return match.group("type"), match.group("id"), match.group("version")


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Retry-After as seconds from now: delta-seconds or an HTTP-date; None if absent or bad."""
    if not value:
        return None
    text = value.strip()
    if re.fullmatch(r"\d+(?:\.\d+)?", text):
        return float(text)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


# ---------------------------------------------------------------- the boundary

# Exceptions proving the request got out (or may have): nothing can be assumed.
_MAYBE_SENT: tuple[type[BaseException], ...] = (
    requests.exceptions.ReadTimeout,
    requests.exceptions.ChunkedEncodingError,
    requests.exceptions.ContentDecodingError,
    urllib3.exceptions.ReadTimeoutError,
    urllib3.exceptions.ProtocolError,
    http.client.RemoteDisconnected,
    ConnectionResetError,
    BrokenPipeError,
)
# Exceptions raised before any byte of the request was written.
_NOT_SENT: tuple[type[BaseException], ...] = (
    requests.exceptions.ConnectTimeout,
    urllib3.exceptions.ConnectTimeoutError,  # includes NewConnectionError, NameResolutionError
    ConnectionRefusedError,
    socket.gaierror,
    ssl.SSLCertVerificationError,
    urllib3.exceptions.ProxyError,
)


def _exception_chain(exc: BaseException) -> list[BaseException]:
    """exc, its causes, contexts, urllib3 ``reason`` and wrapped args (bounded, no repeats)."""
    seen: list[BaseException] = []
    stack: list[BaseException | None] = [exc]
    while stack and len(seen) < 40:
        item = stack.pop()
        if item is None or any(item is s for s in seen):
            continue
        seen.append(item)
        stack.append(item.__cause__)
        stack.append(item.__context__)
        reason = getattr(item, "reason", None)
        if isinstance(reason, BaseException):
            stack.append(reason)
        stack.extend(a for a in getattr(item, "args", ()) if isinstance(a, BaseException))
    return seen


def _describe(chain: list[BaseException], sent: bool) -> str:
    def has(*types: type[BaseException]) -> bool:
        return any(isinstance(e, types) for e in chain)

    if sent:
        if has(requests.exceptions.ReadTimeout, urllib3.exceptions.ReadTimeoutError):
            return "read timeout"
        if has(http.client.RemoteDisconnected):
            return "connection closed by the EHR"
        if has(ConnectionResetError, BrokenPipeError):
            return "connection reset"
        if has(requests.exceptions.ChunkedEncodingError):
            return "response cut off"
        return "transport error after sending"
    if has(ssl.SSLCertVerificationError):
        return "TLS certificate verification failed"
    if has(socket.gaierror, urllib3.exceptions.NameResolutionError):
        return "host name not resolved"
    if has(ConnectionRefusedError):
        return "connection refused"
    if has(urllib3.exceptions.ProxyError):
        return "proxy unreachable"
    if has(urllib3.exceptions.NewConnectionError):
        return "cannot connect"
    return "connect timeout"


def transport_error(exc: requests.RequestException, method: str, url: str) -> EhrError:
    """Classify a requests exception: EhrUnavailable only when nothing can have been sent."""
    chain = _exception_chain(exc)
    sent = any(isinstance(e, _MAYBE_SENT) for e in chain) or not any(
        isinstance(e, _NOT_SENT) for e in chain
    )
    shown = redact_url(url)
    reason = _describe(chain, sent)
    if sent:
        return EhrOutcomeUnknown(
            f"No answer from the EHR to {method} {shown} ({reason}); "
            "it may have been applied: look it up before sending again",
            method=method,
            url=shown,
        )
    return EhrUnavailable(f"EHR unreachable: {method} {shown} ({reason})", method=method, url=shown)


@contextmanager
def transport_errors(method: str, url: str) -> Iterator[None]:
    """The one place where requests/urllib3 exceptions become PeerSync errors."""
    try:
        yield
    except (
        requests.exceptions.InvalidURL,
        requests.exceptions.MissingSchema,
        requests.exceptions.InvalidSchema,
        requests.exceptions.URLRequired,
        requests.exceptions.InvalidHeader,
    ) as exc:
        raise ConfigError(
            f"request {method} {redact_url(url)} could not be built ({type(exc).__name__})"
        ) from exc
    except requests.RequestException as exc:
        raise transport_error(exc, method, url) from exc


def _json_body(resp: requests.Response) -> Any:
    if not resp.content or not resp.content.strip():
        return None
    try:
        return json.loads(resp.content)
    except ValueError:
        return None


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""


def _safe_codes(outcome: Outcome | None) -> list[str]:
    if outcome is None:
        return []
    return [code if _CODE_RE.match(code) else "?" for code in outcome.codes]


def _request_scope(method: str, url: str, base_url: str | None) -> str | None:
    """The SMART v2 scope this request needs, inferred from method and path."""
    path = urlsplit(url).path
    if base_url:
        base_path = urlsplit(base_url).path.rstrip("/")
        if path.startswith(base_path):
            path = path[len(base_path) :]
    segs = [s for s in path.split("/") if s]
    if not segs or not _TYPE_RE.match(segs[0]):
        return None
    perm = {
        "GET": "r" if len(segs) > 1 else "s",
        "HEAD": "r",
        "POST": "c",
        "PUT": "u",
        "PATCH": "u",
        "DELETE": "d",
    }.get(method)
    if method == "POST" and len(segs) > 1 and segs[1] == "_search":
        perm = "s"
    return f"system/{segs[0]}.{perm}" if perm else None


def _missing_scope(
    resp: requests.Response, outcome: Outcome | None, method: str, url: str, base_url: str | None
) -> tuple[str | None, bool]:
    """(scope, stated_by_server) for a 403. Only scope-shaped tokens are taken from the answer."""
    header = resp.headers.get("WWW-Authenticate", "")
    if "insufficient_scope" in header:
        match = re.search(r'scope="([^"]*)"', header)
        if match:
            scopes = _SCOPE_RE.findall(match.group(1))
            if scopes:
                return " ".join(scopes), True
    needed = _request_scope(method, url, base_url)
    if outcome is not None:
        for issue in outcome.issues:
            match = _NOT_PERMIT_RE.search(issue.diagnostics)
            if match:
                return f"system/{match.group(2)}.{match.group(1)}", True
        rtype = needed.split("/", 1)[1].split(".", 1)[0] if needed else None
        for issue in outcome.issues:
            for token in _SCOPE_RE.findall(issue.diagnostics):
                token_type = token.split("/", 1)[1].split(".", 1)[0]
                # a diagnostics text may list the scopes *granted*: only trust a token
                # about the resource type this request touched
                if rtype is None or token_type in (rtype, "*"):
                    return token, True
    return needed, False


def http_error(
    resp: requests.Response, method: str, url: str, *, base_url: str | None = None
) -> EhrHttpError:
    """Map an error (or unexpected 3xx) answer to the exception tree; str() is log-safe."""
    status = resp.status_code
    outcome = Outcome.from_json(_json_body(resp))
    shown = redact_url(url)
    where = f"{method} {_redacted_path(url)}"
    details: list[str] = []
    codes = _safe_codes(outcome)
    kwargs: dict[str, Any] = {"status": status, "method": method, "url": shown, "outcome": outcome}

    def message(verb: str) -> str:
        tail = "; ".join([f"{status} {_phrase(status)}".rstrip(), *details])
        return f"{verb} {where} ({tail})"

    if status in (401, 403):
        missing = None
        if status == 403:
            missing, stated = _missing_scope(resp, outcome, method, url, base_url)
            if missing:
                details.append(f"missing scope {missing}" if stated else f"needs scope {missing}")
        else:
            match = re.search(r'error="([^"]*)"', resp.headers.get("WWW-Authenticate", ""))
            if match and _CODE_RE.match(match.group(1)):
                details.append(match.group(1))
        if codes:
            details.append("OperationOutcome codes: " + ", ".join(codes))
        return EhrAuthError(message("EHR refused"), missing_scope=missing, **kwargs)
    if codes:
        details.append("OperationOutcome codes: " + ", ".join(codes))
    if status == 429 or status >= 500:
        retry_after = parse_retry_after(resp.headers.get("Retry-After"))
        if retry_after is not None:
            details.insert(0, f"retry after {retry_after:g} s")
        return EhrTransient(message("EHR could not process"), retry_after=retry_after, **kwargs)
    if status < 400:
        details.insert(0, "unexpected for this interaction")
    return error_class_for(status)(message("EHR refused"), **kwargs)


# ---------------------------------------------------------------- the session


def new_session(
    *,
    ca_file: str | None = None,
    user_agent: str = DEFAULT_USER_AGENT,
    connect_retries: int = 2,
    pool_maxsize: int = 10,
) -> requests.Session:
    """A session whose adapter retries connect errors only (never reads, statuses or others).

    ``pool_maxsize``: keep-alive connections kept per host, at least the requests a
    worker has in flight at once (``[ehr] max_in_flight``), so none is dropped and
    re-opened under concurrency.

    ``read=False`` rather than ``read=0``: with 0, urllib3 wraps a read timeout in
    MaxRetryError and requests reports a ConnectionError; False re-raises it as is.
    Either way nothing that may have reached the server is sent again.
    """
    session = requests.Session()
    retry = Retry(
        total=None,
        connect=connect_retries,
        read=False,
        status=0,
        other=0,
        redirect=0,
        allowed_methods=None,
        backoff_factor=0.1,
        raise_on_status=False,
        respect_retry_after_header=False,
    )
    adapter = HTTPAdapter(max_retries=retry, pool_maxsize=max(1, pool_maxsize))
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    session.headers["User-Agent"] = user_agent
    if ca_file:
        session.verify = ca_file
    return session


T = TypeVar("T")
_Ids = tuple[str | None, str | None, str | None]


class FhirClient:
    """A FHIR R4 client for one EHR base URL. Not for sharing across processes.

    Shared by the threads of one worker (the sync's requests in flight): the
    session's connection pool holds ``pool_maxsize`` connections, and the OAuth
    auths of :mod:`connector.auth` renew their token under a lock.

    Raises only :class:`~connector.errors.EhrError` subclasses for EHR trouble
    (and ConfigError for a bad base URL / CA file); see :mod:`connector.errors`.
    ``close()`` closes the session and, if it has ``close()``, the auth.
    """

    def __init__(
        self,
        *,
        base_url: str,
        timeout_s: float = 30.0,
        auth: requests.auth.AuthBase | None = None,
        ca_file: str | None = None,
        session: requests.Session | None = None,
        on_exchange: Callable[[Exchange], None] | None = None,
        user_agent: str = DEFAULT_USER_AGENT,
        connect_timeout_s: float | None = None,
        connect_retries: int = 2,
        pool_maxsize: int = 10,
    ) -> None:
        self.base_url = check_ehr_url(base_url)
        if timeout_s <= 0:
            raise ConfigError("ehr.timeout_s: must be > 0")
        if ca_file is not None and not Path(ca_file).is_file():
            raise ConfigError(f"ehr.ca_file: file not found ({ca_file})")
        self.timeout: tuple[float, float] = (
            connect_timeout_s if connect_timeout_s else min(timeout_s, 10.0),
            timeout_s,
        )
        self.auth = auth
        self.user_agent = user_agent
        self.on_exchange = on_exchange
        # called before every request, e.g. the shared rate limit (connector.ratelimit.install)
        self.before_request: Callable[[], None] | None = None
        # requests in flight at once from this client's threads ([ehr] max_in_flight: the
        # sync engine sets a connector.sync.concurrency.InFlight); None: no bound
        self.in_flight: contextlib.AbstractContextManager[Any] | None = None
        self._owns_session = session is None
        self.session = session or new_session(
            ca_file=ca_file, user_agent=user_agent, connect_retries=connect_retries,
            pool_maxsize=pool_maxsize,
        )
        if ca_file:
            self.session.verify = ca_file
        # passed on every request: requests lets REQUESTS_CA_BUNDLE override session.verify
        self._verify: bool | str = ca_file or (
            self.session.verify if self.session.verify is not None else True
        )

    # -- lifecycle

    def close(self) -> None:
        self.session.close()
        closer = getattr(self.auth, "close", None)
        if callable(closer):
            closer()

    def __enter__(self) -> FhirClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"FhirClient(base_url={self.base_url!r})"

    # -- interactions

    def capability_statement(self) -> dict[str, Any]:
        """GET [base]/metadata."""
        url = f"{self.base_url}/metadata"

        def parse(resp: requests.Response) -> tuple[dict[str, Any], _Ids]:
            body = self._expect_resource(resp, "GET", url, "CapabilityStatement")
            return body, ("CapabilityStatement", None, None)

        return self._call("GET", url, parse=parse, resource_type="CapabilityStatement")

    def read(self, resource_type: str, resource_id: str) -> dict[str, Any]:
        """GET [base]/Type/id."""
        _check_type(resource_type)
        _check_id(resource_id)
        url = f"{self.base_url}/{resource_type}/{resource_id}"

        def parse(resp: requests.Response) -> tuple[dict[str, Any], _Ids]:
            body = self._expect_resource(resp, "GET", url, resource_type)
            meta = body.get("meta") or {}
            version = meta.get("versionId") or parse_etag(resp.headers.get("ETag"))
            return body, (resource_type, str(body.get("id") or resource_id), version)

        return self._call("GET", url, parse=parse, resource_type=resource_type)

    def search(
        self, resource_type: str, params: QueryParams, *, max_pages: int = 20
    ) -> list[dict[str, Any]]:
        """GET [base]/Type?params, following ``next`` links for at most ``max_pages`` pages.

        Returns the entry resources whose ``search.mode`` is ``match`` (or absent).
        Stopping at ``max_pages`` with more pages left logs a warning.
        """
        _check_type(resource_type)
        if max_pages < 1:
            raise ValueError("max_pages must be >= 1")
        query = encode_query(params)
        url: str | None = f"{self.base_url}/{resource_type}" + (f"?{query}" if query else "")
        found: list[dict[str, Any]] = []
        pages = 0
        while url is not None and pages < max_pages:
            page_url = url

            def parse(resp: requests.Response, page_url: str = page_url) -> tuple[Any, _Ids]:
                body = self._expect_resource(resp, "GET", page_url, "Bundle")
                return body, (resource_type, None, None)

            bundle = self._call("GET", page_url, parse=parse, resource_type=resource_type)
            pages += 1
            for entry in bundle.get("entry") or []:
                if not isinstance(entry, dict):
                    continue
                mode = (entry.get("search") or {}).get("mode")
                resource = entry.get("resource")
                if mode not in (None, "match") or not isinstance(resource, dict):
                    continue
                if resource.get("resourceType") == "OperationOutcome":
                    continue
                found.append(resource)
            url = self._next_link(bundle)
        if url is not None:
            log.warning(
                "search %s stopped after %d pages with more left",
                _redacted_path(url),
                pages,
            )
        return found

    def create(
        self, resource: dict[str, Any], *, if_none_exist: QueryParams | None = None
    ) -> WriteResult:
        """POST [base]/Type; with ``if_none_exist`` a conditional create (If-None-Exist header).

        A conditional create that matched answers 200 (``created=False``) with the match.
        """
        rtype = _resource_type(resource)
        url = f"{self.base_url}/{rtype}"
        headers = {"Prefer": "return=representation"}
        if if_none_exist is not None:
            criteria = encode_query(if_none_exist)
            if not criteria:
                raise ValueError("if_none_exist needs at least one search parameter")
            headers["If-None-Exist"] = criteria

        def parse(resp: requests.Response) -> tuple[WriteResult, _Ids]:
            result = self._write_result(resp, "POST", url, rtype, None)
            return result, (rtype, result.id, result.version_id)

        return self._call(
            "POST", url, body=resource, headers=headers, parse=parse, resource_type=rtype
        )

    def update(
        self,
        resource: dict[str, Any],
        *,
        resource_id: str | None = None,
        conditional: QueryParams | None = None,
        if_match: str | None = None,
    ) -> WriteResult:
        """PUT [base]/Type/id, or a conditional update PUT [base]/Type?<conditional>.

        Without ``resource_id`` or ``conditional`` the resource's own ``id`` is used.
        ``if_match`` is a version id ("3") or an ETag (``W/"3"``).
        """
        rtype = _resource_type(resource)
        body = resource
        if conditional is not None:
            if resource_id is not None:
                raise ValueError("give resource_id or conditional, not both")
            query = encode_query(conditional)
            if not query:
                raise ValueError("conditional needs at least one search parameter")
            url = f"{self.base_url}/{rtype}?{query}"
            known_id = None
        else:
            rid = resource_id or resource.get("id")
            if not rid:
                raise ValueError("update needs resource_id, conditional or resource['id']")
            _check_id(rid)
            if resource.get("id") not in (None, rid):
                raise ValueError("resource['id'] differs from resource_id")
            if resource.get("id") is None:
                body = {**resource, "id": rid}
            url = f"{self.base_url}/{rtype}/{rid}"
            known_id = rid
        headers = {"Prefer": "return=representation"}
        if if_match is not None:
            version = parse_etag(if_match)
            if not version:
                raise ValueError("if_match must be a version id or an ETag")
            headers["If-Match"] = f'W/"{version}"'

        def parse(resp: requests.Response) -> tuple[WriteResult, _Ids]:
            result = self._write_result(resp, "PUT", url, rtype, known_id)
            return result, (rtype, result.id, result.version_id)

        return self._call("PUT", url, body=body, headers=headers, parse=parse, resource_type=rtype)

    def transaction(self, bundle: dict[str, Any]) -> dict[str, Any]:
        """POST [base] with a transaction Bundle; returns the transaction-response Bundle."""
        return self._post_bundle(bundle, "transaction")

    def batch(self, bundle: dict[str, Any]) -> dict[str, Any]:
        """POST [base] with a batch Bundle; returns the batch-response Bundle.

        A batch succeeds or fails per entry: read them with :func:`entry_results`.
        """
        return self._post_bundle(bundle, "batch")

    # -- internals

    def _post_bundle(self, bundle: dict[str, Any], kind: str) -> dict[str, Any]:
        if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
            raise ValueError("expected a Bundle")
        if bundle.get("type") != kind:
            raise ValueError(f"expected Bundle.type {kind!r}, got {bundle.get('type')!r}")
        url = self.base_url

        def parse(resp: requests.Response) -> tuple[dict[str, Any], _Ids]:
            body = _json_body(resp)
            if not isinstance(body, dict) or body.get("resourceType") != "Bundle":
                raise EhrOutcomeUnknown(
                    f"EHR answered POST {_redacted_path(url)} ({kind}) with {resp.status_code} "
                    "but no response Bundle; it may have been applied: look it up",
                    method="POST",
                    url=redact_url(url),
                )
            return body, ("Bundle", None, None)

        return self._call(
            "POST",
            url,
            body=bundle,
            headers={"Prefer": "return=representation"},
            parse=parse,
            resource_type="Bundle",
        )

    def _call(
        self,
        method: str,
        url: str,
        *,
        parse: Callable[[requests.Response], tuple[T, _Ids]],
        resource_type: str | None,
        body: dict[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> T:
        if self.before_request is not None:
            self.before_request()  # may wait; raises (nothing sent) when it will not let it go
        started = time.perf_counter()
        status: int | None = None
        ids: _Ids = (resource_type, None, None)
        codes: tuple[str, ...] = ()
        error: BaseException | None = None
        try:
            resp = self._http(method, url, body, headers)
            status = resp.status_code
            if not 200 <= status < 300:
                raise http_error(resp, method, url, base_url=self.base_url)
            result, ids = parse(resp)
            return result
        except EhrHttpError as exc:
            if status is not None:  # an answer to this request (not, say, a token endpoint's)
                codes = tuple(_safe_codes(exc.outcome))
            error = exc
            raise
        except BaseException as exc:
            error = exc
            raise
        finally:
            self._after(method, url, status, started, ids, codes, error)

    def _http(
        self,
        method: str,
        url: str,
        body: dict[str, Any] | None,
        extra: Mapping[str, str] | None,
    ) -> requests.Response:
        headers = {"Accept": FHIR_JSON, "User-Agent": self.user_agent}
        data = None
        if body is not None:
            headers["Content-Type"] = f"{FHIR_JSON}; charset=utf-8"
            data = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        if extra:
            headers.update(extra)
        with self.in_flight or contextlib.nullcontext(), transport_errors(method, url):
            return self.session.request(
                method,
                url,
                data=data,
                headers=headers,
                auth=self.auth,
                timeout=self.timeout,
                verify=self._verify,
                # a redirected POST would be replayed as a GET by requests: never follow writes
                allow_redirects=method == "GET",
            )

    def _after(
        self,
        method: str,
        url: str,
        status: int | None,
        started: float,
        ids: _Ids,
        codes: tuple[str, ...],
        error: BaseException | None,
    ) -> None:
        duration_ms = (time.perf_counter() - started) * 1000.0
        path = _redacted_path(url)
        if error is None:
            log.debug("%s %s -> %s in %.1f ms", method, path, status, duration_ms)
        else:
            log.info(
                "%s %s -> %s in %.1f ms (%s)",
                method,
                path,
                status if status is not None else "no answer",
                duration_ms,
                type(error).__name__,
            )
        if self.on_exchange is None:
            return
        described = None
        if error is not None:
            # our errors' str() is log-safe by contract; anything else is named by type only
            described = (
                f"{type(error).__name__}: {error}"
                if isinstance(error, ConnectorError)
                else type(error).__name__
            )
        exchange = Exchange(
            method=method,
            path=path,
            status=status,
            duration_ms=round(duration_ms, 3),
            resource_type=ids[0],
            resource_id=ids[1],
            version_id=ids[2],
            outcome_codes=codes,
            error=described,
        )
        try:
            self.on_exchange(exchange)
        except Exception:
            log.exception("on_exchange callback failed for %s %s", method, path)

    def _expect_resource(
        self, resp: requests.Response, method: str, url: str, rtype: str
    ) -> dict[str, Any]:
        body = _json_body(resp)
        if isinstance(body, dict) and body.get("resourceType") == rtype:
            return body
        raise EhrRejected(
            f"EHR answered {method} {_redacted_path(url)} with {resp.status_code} "
            f"but no {rtype} in the body",
            status=resp.status_code,
            method=method,
            url=redact_url(url),
        )

    def _write_result(
        self,
        resp: requests.Response,
        method: str,
        url: str,
        rtype: str,
        known_id: str | None,
    ) -> WriteResult:
        body = _json_body(resp)
        resource = body if isinstance(body, dict) and body.get("resourceType") == rtype else None
        location = resp.headers.get("Location") or resp.headers.get("Content-Location")
        loc_type, loc_id, loc_version = parse_location(location)
        if loc_type not in (None, rtype):
            loc_id = loc_version = None
        rid = str(resource["id"]) if resource and resource.get("id") else loc_id or known_id
        version = None
        if resource:
            version = (resource.get("meta") or {}).get("versionId")
        version = version or loc_version or parse_etag(resp.headers.get("ETag"))
        if not rid:
            raise EhrOutcomeUnknown(
                f"EHR answered {method} {_redacted_path(url)} with {resp.status_code} "
                "but named no resource id; look it up by identifier",
                method=method,
                url=redact_url(url),
            )
        return WriteResult(
            resource_type=rtype,
            id=rid,
            version_id=str(version) if version is not None else None,
            status=resp.status_code,
            created=resp.status_code == 201,
            location=location,
            resource=resource,
        )

    def _next_link(self, bundle: dict[str, Any]) -> str | None:
        for link in bundle.get("link") or []:
            if isinstance(link, dict) and link.get("relation") == "next" and link.get("url"):
                return self._same_origin(str(link["url"]))
        return None

    def _same_origin(self, link: str) -> str:
        """Keep paging on our own origin: credentials must never follow a link elsewhere."""
        absolute = urljoin(self.base_url + "/", link)
        parts, base = urlsplit(absolute), urlsplit(self.base_url)
        if (parts.scheme, parts.netloc) != (base.scheme, base.netloc):
            log.warning("EHR paging link points at another origin; following it on ours")
            absolute = urlunsplit((base.scheme, base.netloc, parts.path, parts.query, ""))
        return absolute


def _check_type(resource_type: str) -> None:
    if not isinstance(resource_type, str) or not _TYPE_RE.match(resource_type):
        raise ValueError(f"not a FHIR resource type: {resource_type!r}")


def _check_id(resource_id: str) -> None:
    if not isinstance(resource_id, str) or not _ID_RE.match(resource_id):
        raise ValueError("not a FHIR resource id (1-64 of A-Z a-z 0-9 - .)")


def _resource_type(resource: dict[str, Any]) -> str:
    if not isinstance(resource, dict):
        raise ValueError("expected a FHIR resource as a dict")
    rtype = resource.get("resourceType")
    if not isinstance(rtype, str):
        raise ValueError("resource has no resourceType")
    _check_type(rtype)
    return rtype


def entry_results(response_bundle: dict[str, Any]) -> list[EntryResult]:
    """Per-entry results of a transaction-response or batch-response Bundle, in entry order."""
    results: list[EntryResult] = []
    for entry in response_bundle.get("entry") or []:
        if not isinstance(entry, dict):
            continue
        response = entry.get("response") or {}
        match = _STATUS_RE.match(str(response.get("status") or ""))
        status = int(match.group(1)) if match else 0
        location = response.get("location")
        loc_type, loc_id, loc_version = parse_location(location)
        resource = entry.get("resource") if isinstance(entry.get("resource"), dict) else None
        outcome = Outcome.from_json(response.get("outcome"))
        if resource is not None and resource.get("resourceType") == "OperationOutcome":
            outcome = outcome or Outcome.from_json(resource)
            resource = None
        rtype, rid, version = loc_type, loc_id, loc_version
        if resource is not None:
            rtype = resource.get("resourceType") or rtype
            rid = resource.get("id") or rid
            version = (resource.get("meta") or {}).get("versionId") or version
        version = version or parse_etag(response.get("etag"))
        results.append(
            EntryResult(
                status=status,
                location=location,
                resource_type=rtype,
                id=str(rid) if rid is not None else None,
                version_id=str(version) if version is not None else None,
                outcome=outcome,
                resource=resource,
            )
        )
    return results
