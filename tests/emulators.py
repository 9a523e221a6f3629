"""EHR emulators: a loopback reverse proxy in front of sekmet that enforces one EHR's write rules.

sekmet accepts nearly everything (every interaction, conditional create and
update, bundles, any search parameter). A real EHR does not, so the connector
is also tested through an :class:`EhrEmulator` that lets through only what one
rule set allows and reshapes bodies the way that EHR is documented to:

- ``us-core-notes``: US Core 9 "Writing Clinical Notes": DocumentReference
  create (conditional create honoured) and update, reads and searches on the
  resources a note refers to, nothing else;
- ``epic``: Epic's published R4 CapabilityStatement (May 2026 sandbox) and
  what integrators report: If-None-Exist ignored (the create happens again),
  no conditional update, no bundles; a note needs a literal, existing
  ``context.encounter``, keeps only its first ``content`` (``text/plain``),
  loses its ``identifier`` and ``meta.security``; date searches take dates only;
- ``oracle-health``: Oracle Health Millennium R4's DocumentReference
  create/update documentation: a short list of kept fields, exactly one
  content with a ``;charset=`` content type, status rules, full dateTimes,
  no ``identifier`` search; Provenance with one target;
- ``no-conditional``: everything sekmet does except any conditional request;
- ``generic``: sekmet as it is (a full FHIR server), for lost answers only.

What is allowed (interactions, conditional create/update/delete/read, search
parameters, transaction/batch) is derived, by one code path, from the rule
set's CapabilityStatement, served at ``GET [base]/metadata`` (files in
``tests/data/capabilities/``; ``no-conditional`` takes sekmet's own and turns
every conditional flag off). The per-vendor body and search rules sit on top.

A refused request is never forwarded: it is answered with an OperationOutcome
(405 interaction not allowed, 400 bad search parameter or body, 422 business
rule, 412 for ``no-conditional``'s conditional requests) and listed in
``refused``. With ``drop_rate`` some applied writes get no answer at all (the
connection is reset, as ``tests/faultproxy.py``'s ``reset_after``).

The seeding helpers at the bottom write straight to sekmet (what an agency's
EHR already holds): Practitioners for staff, Encounters for sessions.
"""

from __future__ import annotations

import copy
import http.client
import json
import random
import re
import threading
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import parse_qsl, urlsplit

import requests

from tests.loopback_proxy import HOP, LoopbackServer, ProxyHandler

RULES = ("us-core-notes", "epic", "oracle-health", "no-conditional", "generic")
CAPABILITIES = Path(__file__).resolve().parent / "data" / "capabilities"
CAPABILITY_FILES = {
    "us-core-notes": "us-core-notes-emulator.json",
    "epic": "epic-r4-sandbox-2026-05.json",
    "oracle-health": "oracle-health-emulator.json",
}
WRITE_METHODS = frozenset({"POST", "PUT", "PATCH"})
NPI_SYSTEM = "http://hl7.org/fhir/sid/us-npi"
# Always accepted on a search: page size, format, and the paging offset sekmet's next links carry.
ALWAYS_PARAMS = frozenset({"_count", "_format", "_offset"})
_TYPE = re.compile(r"^[A-Z][A-Za-z]+$")
_LOCATION = re.compile(r"/([A-Z][A-Za-z]+)/([A-Za-z0-9\-.]{1,64})(?:/_history/[^/]+)?/?$")
_CONDITIONAL_READ = ("if-none-match", "if-modified-since")
_BUNDLE_HEADERS = (("ifNoneExist", "if-none-exist"), ("ifNoneMatch", "if-none-match"),
                   ("ifModifiedSince", "if-modified-since"), ("ifMatch", "if-match"))


class Refusal(NamedTuple):
    method: str
    path: str  # without the query
    status: int
    reason: str


class Created(NamedTuple):
    resource_type: str
    id: str
    body: dict[str, Any]  # as the upstream stored it (after the rule set's filtering)


class _Refuse(Exception):
    def __init__(self, status: int, code: str, reason: str) -> None:
        super().__init__(reason)
        self.status, self.code, self.reason = status, code, reason


def _outcome(code: str, diagnostics: str) -> bytes:
    return json.dumps({"resourceType": "OperationOutcome", "issue": [
        {"severity": "error", "code": code, "diagnostics": diagnostics}]}).encode()


def _get(value: Any, *path: str | int) -> Any:
    """``value[p0][p1]...``, or None when any step is missing or of the wrong shape."""
    for step in path:
        if isinstance(step, int):
            value = value[step] if isinstance(value, list) and len(value) > step else None
        else:
            value = value.get(step) if isinstance(value, dict) else None
    return value


def _base(name: str) -> str:
    """A search parameter's base name: ``identifier:exact`` and ``subject.name`` count as such."""
    return re.split(r"[:.]", name, maxsplit=1)[0]


# -- the rule sets on top of the CapabilityStatement --------------------------

class _Rules:
    if_none_exist = "refuse"  # or "ignore": strip the header, the create happens again
    conditional_status: int | None = None  # status for refused conditional requests (else 405/400)

    def search(self, rtype: str, params: list[tuple[str, str]]) -> None:
        return None

    def write(self, emu: EhrEmulator, interaction: str, rtype: str,
              body: dict[str, Any]) -> dict[str, Any] | None:
        return None  # None: the body is forwarded as sent


class _NoConditional(_Rules):
    conditional_status = 412


_DATE_ONLY = re.compile(r"^(eq|ne|gt|lt|ge|le|sa|eb|ap)?\d{4}-\d{2}-\d{2}$")
_EPIC_TEXT = re.compile(r"^text/plain(\s*;\s*charset=[^;]+)?$", re.IGNORECASE)
_ENCOUNTER_REF = re.compile(r"^Encounter/[A-Za-z0-9\-.]{1,64}$")


class _Epic(_Rules):
    if_none_exist = "ignore"

    def search(self, rtype: str, params: list[tuple[str, str]]) -> None:
        for name, value in params:
            if _base(name) in ("date", "period"):
                for part in value.split(","):
                    if not _DATE_ONLY.match(part):
                        raise _Refuse(400, "invalid", f"epic: {name}={part!r}: a search date "
                                      "must be a date only (YYYY-MM-DD, optional prefix)")

    def write(self, emu: EhrEmulator, interaction: str, rtype: str,
              body: dict[str, Any]) -> dict[str, Any] | None:
        if rtype != "DocumentReference":
            return None
        ref = _get(body, "context", "encounter", 0, "reference")
        if not (isinstance(ref, str) and _ENCOUNTER_REF.match(ref) and emu.upstream_exists(ref)):
            raise _Refuse(422, "business-rule", "epic: Valid encounter required "
                          "(context.encounter[0].reference must be an existing Encounter/<id>)")
        kept = copy.deepcopy(body)
        kept["content"] = (kept.get("content") or [])[:1]
        content_type = _get(kept, "content", 0, "attachment", "contentType")
        if not (isinstance(content_type, str) and _EPIC_TEXT.match(content_type)):
            raise _Refuse(400, "invalid", f"epic: content[0].attachment.contentType "
                          f"{content_type!r} is not text/plain")
        kept.pop("identifier", None)
        if isinstance(kept.get("meta"), dict):
            kept["meta"].pop("security", None)
            if not kept["meta"]:
                del kept["meta"]
        return kept


_ORACLE_KEEP = ("resourceType", "id", "status", "docStatus", "type", "category", "subject",
                "author", "authenticator", "content", "context")
_ORACLE_ATTACHMENT = ("contentType", "data", "title", "creation")
_ORACLE_CHARSET = re.compile(r"^[a-z]+/[a-z0-9.+-]+;charset=[A-Za-z0-9_-]+$")
_ORACLE_UPDATE_TYPES = frozenset({"application/pdf", "text/plain", "text/richtext", "text/rtf",
                                  "text/html", "application/xml", "application/xhtml+xml"})


class _Oracle(_Rules):
    def search(self, rtype: str, params: list[tuple[str, str]]) -> None:
        names = {_base(name) for name, _ in params}
        if rtype == "DocumentReference" and not names & {"patient", "subject", "_id"}:
            raise _Refuse(400, "required", "oracle-health: a DocumentReference search needs "
                          "patient, subject or _id")

    def write(self, emu: EhrEmulator, interaction: str, rtype: str,
              body: dict[str, Any]) -> dict[str, Any] | None:
        if rtype == "Provenance":
            target = body.get("target")
            if not (isinstance(target, list) and len(target) == 1):
                raise _Refuse(422, "business-rule", "oracle-health: a Provenance needs exactly "
                              "one target")
            return None
        if rtype != "DocumentReference":
            return None
        create = interaction == "create"
        content = body.get("content")
        if not content:
            raise _Refuse(422, "required", "oracle-health: content is required")
        if not isinstance(content, list) or len(content) != 1:
            raise _Refuse(422, "business-rule", "oracle-health: content must hold exactly one "
                          "entry")
        kept = {k: copy.deepcopy(body[k]) for k in _ORACLE_KEEP if k in body}
        if create:
            kept.pop("id", None)
        attachment = _get(content, 0, "attachment") or {}
        kept["content"] = [{"attachment": {k: attachment[k] for k in _ORACLE_ATTACHMENT
                                           if k in attachment}}]
        content_type = attachment.get("contentType")
        if not (isinstance(content_type, str) and _ORACLE_CHARSET.match(content_type)):
            raise _Refuse(400, "invalid", f"oracle-health: contentType {content_type!r} must "
                          "carry a charset without a space, e.g. text/plain;charset=utf-8")
        statuses = ({"current"}, {"final", "amended"}) if create else (
            {"current", "superseded", "entered-in-error"}, {"final", "amended", "entered-in-error"})
        if kept.get("status") not in statuses[0] or kept.get("docStatus") not in statuses[1]:
            raise _Refuse(422, "business-rule", f"oracle-health: {interaction} needs status in "
                          f"{sorted(statuses[0])} and docStatus in {sorted(statuses[1])}")
        if not create and content_type.split(";")[0] not in _ORACLE_UPDATE_TYPES:
            raise _Refuse(400, "invalid", f"oracle-health: contentType {content_type!r} is not "
                          "accepted on update")
        if create and not _get(kept, "context", "period", "end"):
            raise _Refuse(422, "required", "oracle-health: context.period.end is required")
        for where in (("context", "period", "start"), ("context", "period", "end"),
                      ("content", 0, "attachment", "creation")):
            value = _get(kept, *where)
            if value is not None and "T" not in str(value):
                raise _Refuse(400, "invalid", f"oracle-health: {'.'.join(map(str, where))} "
                              f"{value!r} needs a time")
        return kept


_RULE_CLASSES: dict[str, type[_Rules]] = {
    "us-core-notes": _Rules, "epic": _Epic, "oracle-health": _Oracle,
    "no-conditional": _NoConditional, "generic": _Rules,
}


def _classify(method: str, segs: list[str]) -> tuple[str, str | None]:
    """(interaction code, resource type) for a request path below the base."""
    method = "GET" if method == "HEAD" else method
    n = len(segs)
    if n == 0:
        return {"GET": "search-system", "POST": "bundle"}.get(method, "unknown"), None
    if n == 1 and segs[0] == "_history" and method == "GET":
        return "history-system", None
    if n == 1 and segs[0].startswith("$"):
        return "operation", None
    if not _TYPE.match(segs[0]):
        return "unknown", None
    rtype = segs[0]
    if n == 1:
        return {"POST": "create", "GET": "search-type", "PUT": "update", "PATCH": "patch",
                "DELETE": "delete"}.get(method, "unknown"), rtype
    if segs[-1].startswith("$") and n <= 3:
        return "operation", rtype
    if n == 2 and segs[1] == "_search" and method == "POST":
        return "search-type", rtype
    if n == 2 and segs[1] == "_history":
        return ("history-type" if method == "GET" else "unknown"), rtype
    if n == 2:
        return {"GET": "read", "PUT": "update", "PATCH": "patch",
                "DELETE": "delete"}.get(method, "unknown"), rtype
    if segs[2] == "_history" and method == "GET" and n in (3, 4):
        return ("history-instance" if n == 3 else "vread"), rtype
    return "unknown", rtype


# -- the emulator ----------------------------------------------------------------

class EhrEmulator:
    """A reverse proxy on 127.0.0.1 in front of sekmet enforcing one of :data:`RULES`."""

    def __init__(self, upstream_base_url: str, rules: str, *, drop_rate: float = 0.0,
                 seed: int = 0, max_drops: int | None = None) -> None:
        if rules not in RULES:
            raise ValueError(f"unknown rule set {rules!r}: one of {RULES}")
        parts = urlsplit(upstream_base_url)
        if parts.hostname not in ("127.0.0.1", "localhost") or not parts.port:
            raise ValueError("upstream must be http://127.0.0.1:<port>/<path>")
        self.upstream_base_url = upstream_base_url.rstrip("/")
        self.upstream_host, self.upstream_port = parts.hostname, parts.port
        self.upstream_origin = f"{parts.scheme}://{parts.netloc}"
        self.prefix = parts.path.rstrip("/")
        self.rules_name = rules
        self.rules = _RULE_CLASSES[rules]()
        self.drop_rate, self.max_drops = drop_rate, max_drops
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self.refused: list[Refusal] = []
        self.created: list[Created] = []
        self.dropped = 0
        self.capability: dict[str, Any] = {}
        self._resources: dict[str, dict[str, Any]] = {}
        self._system: set[str] = set()
        self._server: LoopbackServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ----------------------------------------------------------------

    def start(self) -> EhrEmulator:
        self.capability = self._load_capability()
        rest = self.capability["rest"][0]
        self._resources = {r["type"]: r for r in rest.get("resource", [])}
        self._system = {i["code"] for i in rest.get("interaction", [])}
        self._system |= {"$" + o["name"] for o in rest.get("operation", [])}
        self._server = LoopbackServer(self)
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.1},
                                        name=f"ehr-emulator-{self.rules_name}", daemon=True)
        self._thread.start()
        return self

    def _load_capability(self) -> dict[str, Any]:
        if self.rules_name in CAPABILITY_FILES:
            text = (CAPABILITIES / CAPABILITY_FILES[self.rules_name]).read_text("utf-8")
            capability: dict[str, Any] = json.loads(text)
            return capability
        resp = requests.get(f"{self.upstream_base_url}/metadata", timeout=10)
        resp.raise_for_status()
        capability = resp.json()
        if self.rules_name == "generic":
            return capability  # sekmet as it is: only the lost answers are ours
        for resource in capability["rest"][0].get("resource", []):
            resource.update(conditionalCreate=False, conditionalUpdate=False,
                            conditionalDelete="not-supported", conditionalRead="not-supported")
        return capability

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.server_address[1])

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return self.origin + self.prefix

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()  # joins the handler threads
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def __enter__(self) -> EhrEmulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- what the tests look at -----------------------------------------------------

    def stored(self, resource_type: str) -> list[dict[str, Any]]:
        """The upstream's current copy of every resource of this type created through us."""
        with self._lock:
            ids = list(dict.fromkeys(c.id for c in self.created
                                     if c.resource_type == resource_type))
        found = []
        for rid in ids:
            resp = requests.get(f"{self.upstream_base_url}/{resource_type}/{rid}", timeout=10)
            if resp.status_code == 200:
                found.append(resp.json())
        return found

    def upstream_exists(self, reference: str) -> bool:
        status, _, _ = self._forward("GET", f"{self.prefix}/{reference}", {}, b"")
        return status == 200

    # -- admission: one code path from the CapabilityStatement ---------------------------

    def _admit(self, method: str, segs: list[str], params: list[tuple[str, str]],
               headers: dict[str, str], resource: Any) -> tuple[str, str | None, Any]:
        """Refuse (raise _Refuse) or admit one request; returns (interaction, type, body).

        ``headers`` (lower-case names) may lose an ignored If-None-Exist; the body
        returned is the one to forward (None: unchanged).
        """
        interaction, rtype = _classify(method, segs)
        what = f"{method} {'/'.join(segs) or '[base]'}"
        if interaction == "unknown":
            raise _Refuse(405, "not-supported", f"{what} is not an interaction this server offers")
        res = self._resources.get(rtype) if rtype else None
        if interaction == "bundle":
            return interaction, None, self._admit_bundle(resource)
        if rtype is not None and res is None:
            raise _Refuse(405, "not-supported", f"{rtype} is not in the CapabilityStatement")
        if interaction == "operation":
            ops = {"$" + o["name"] for o in (res or {}).get("operation", [])} | self._system
            if segs[-1] not in ops:
                raise _Refuse(405, "not-supported", f"{segs[-1]} is not in the "
                              "CapabilityStatement")
        elif res is None:
            if interaction not in self._system:
                raise _Refuse(405, "not-supported", f"{interaction} is not in the "
                              "CapabilityStatement's rest.interaction")
        elif interaction not in {i["code"] for i in res.get("interaction", [])}:
            raise _Refuse(405, "not-supported", f"{interaction} on {rtype} is not in the "
                          "CapabilityStatement")
        conditional_status = self.rules.conditional_status
        if len(segs) == 1 and interaction in ("update", "patch", "delete"):
            if not params:
                raise _Refuse(400, "invalid", f"{what} needs an id or search criteria")
            assert res is not None
            ok = (res.get("conditionalDelete", "not-supported") != "not-supported"
                  if interaction == "delete" else res.get("conditionalUpdate") is True)
            if not ok:
                raise _Refuse(conditional_status or 405, "not-supported",
                              f"conditional {interaction} ({what}?...) is not supported by "
                              "the CapabilityStatement")
        if "if-none-exist" in headers:
            if interaction == "create" and res is not None and res.get("conditionalCreate"):
                pass
            elif self.rules.if_none_exist == "ignore":
                del headers["if-none-exist"]
            else:
                raise _Refuse(conditional_status or 400, "not-supported", "If-None-Exist "
                              f"(conditional create) on {what}: conditionalCreate is not true")
        for name in _CONDITIONAL_READ:
            if name in headers and (res or {}).get("conditionalRead",
                                                   "not-supported") == "not-supported":
                raise _Refuse(conditional_status or 400, "not-supported",
                              f"{name} on {what}: conditionalRead is not-supported")
        if interaction == "search-type":
            assert res is not None and rtype is not None
            self._check_search(rtype, res, params)
            self.rules.search(rtype, params)
        if interaction in ("create", "update"):
            assert rtype is not None
            if not isinstance(resource, dict) or resource.get("resourceType") != rtype:
                raise _Refuse(400, "invalid", f"{what}: the body must be a {rtype} resource")
            return interaction, rtype, self.rules.write(self, interaction, rtype, resource)
        return interaction, rtype, None

    def _check_search(self, rtype: str, res: dict[str, Any],
                      params: list[tuple[str, str]]) -> None:
        known = {p["name"] for p in res.get("searchParam", [])}
        includes = {"_include": res.get("searchInclude", []),
                    "_revinclude": res.get("searchRevInclude", [])}
        for name, value in params:
            base = _base(name)
            if base in ALWAYS_PARAMS or base in known:
                continue
            if base in includes and ("*" in includes[base] or value in includes[base]):
                continue
            raise _Refuse(400, "not-supported", f"search parameter {name!r} on {rtype} is not "
                          "in the CapabilityStatement")

    def _admit_bundle(self, bundle: Any) -> Any:
        if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
            raise _Refuse(400, "invalid", "POST [base] needs a Bundle")
        kind = bundle.get("type")
        if kind not in ("transaction", "batch"):
            raise _Refuse(400, "invalid", f"a POSTed Bundle must be a transaction or batch, "
                          f"not {kind!r}")
        if kind not in self._system:
            raise _Refuse(405, "not-supported", f"{kind} is not in the CapabilityStatement's "
                          "rest.interaction")
        changed = False
        entries = copy.deepcopy(bundle.get("entry") or [])
        for n, entry in enumerate(entries):
            request = _get(entry, "request") or {}
            method, url = str(request.get("method", "")).upper(), str(request.get("url", ""))
            headers = {h: str(request[f]) for f, h in _BUNDLE_HEADERS if request.get(f)}
            parts = urlsplit(url.replace(self.base_url + "/", "")
                             .replace(self.upstream_base_url + "/", ""))
            try:
                _, _, body = self._admit(method, [s for s in parts.path.split("/") if s],
                                         parse_qsl(parts.query, keep_blank_values=True),
                                         headers, entry.get("resource"))
            except _Refuse as refusal:
                raise _Refuse(refusal.status, refusal.code, f"Bundle entry {n} ({method} {url}): "
                              f"{refusal.reason}") from None
            if "ifNoneExist" in request and "if-none-exist" not in headers:
                del request["ifNoneExist"]
                changed = True
            if body is not None:
                entry["resource"] = body
                changed = True
        return {**bundle, "entry": entries} if changed else None

    # -- serving ------------------------------------------------------------------------

    def _refuse(self, handler: ProxyHandler, path: str, refusal: _Refuse) -> None:
        with self._lock:
            self.refused.append(Refusal(handler.command, path, refusal.status, refusal.reason))
        handler.answer(refusal.status, [("Content-Type", "application/fhir+json")],
                       _outcome(refusal.code, refusal.reason if refusal.reason.startswith(
                           self.rules_name) else f"{self.rules_name}: {refusal.reason}"))

    def _serve(self, handler: ProxyHandler) -> None:
        method, body = handler.command, handler.read_body()
        parts = urlsplit(handler.path)
        path = parts.path
        if path != self.prefix and not path.startswith(self.prefix + "/"):
            handler.answer(404, [("Content-Type", "application/fhir+json")],
                           _outcome("not-found", f"{path} is not below {self.prefix}"))
            return
        segs = [s for s in path[len(self.prefix):].split("/") if s]
        if segs == ["metadata"] and method in ("GET", "HEAD"):
            payload = json.dumps(self.capability).encode().replace(
                self.upstream_origin.encode(), self.origin.encode())
            handler.answer(200, [("Content-Type", "application/fhir+json")], payload)
            return
        headers = {k.lower(): v for k, v in handler.headers.items() if k.lower() not in HOP}
        params = parse_qsl(parts.query, keep_blank_values=True)
        resource: Any = None
        try:
            if segs[-1:] == ["_search"] and method == "POST":
                params += parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True)
            elif method in ("POST", "PUT") and (len(segs) <= 2 and segs[-1:] != ["_history"]):
                try:
                    resource = json.loads(body) if body else None
                except ValueError as exc:
                    raise _Refuse(400, "structure", f"the body is not JSON: {exc}") from None
            interaction, rtype, new_body = self._admit(method, segs, params, headers, resource)
        except _Refuse as refusal:
            self._refuse(handler, path, refusal)
            return
        if new_body is not None:
            body = json.dumps(new_body).encode()
        status, resp_headers, payload = self._forward(method, handler.path, headers, body)
        if status == 502 and not resp_headers:
            handler.answer(502, [("Content-Type", "application/fhir+json")], payload)
            return
        self._record_created(interaction, rtype, status, resp_headers, payload)
        payload = payload.replace(self.upstream_origin.encode(), self.origin.encode())
        resp_headers = [(k, v.replace(self.upstream_origin, self.origin))
                        for k, v in resp_headers]
        if (method in WRITE_METHODS and interaction != "search-type" and 200 <= status < 300
                and self._drop()):
            handler.reset()
        handler.answer(status, resp_headers, payload)

    def _drop(self) -> bool:
        with self._lock:
            if self.drop_rate <= 0 or (self.max_drops is not None
                                       and self.dropped >= self.max_drops):
                return False
            if self._rng.random() < self.drop_rate:
                self.dropped += 1
                return True
            return False

    def _record_created(self, interaction: str, rtype: str | None, status: int,
                        headers: list[tuple[str, str]], payload: bytes) -> None:
        try:
            doc = json.loads(payload) if payload else None
        except ValueError:
            doc = None
        found: list[tuple[str | None, Any]] = []  # (location, resource)
        if interaction in ("create", "update") and status == 201:
            location = next((v for k, v in headers if k.lower() == "location"), None)
            found.append((location, doc if isinstance(doc, dict) else None))
        elif interaction == "bundle" and status == 200 and isinstance(doc, dict):
            for entry in doc.get("entry") or []:
                if str(_get(entry, "response", "status") or "").startswith("201"):
                    found.append((_get(entry, "response", "location"), entry.get("resource")))
        for location, resource in found:
            match = _LOCATION.search(urlsplit(location or "").path)
            if not isinstance(resource, dict) or "id" not in resource:
                if match is None:
                    continue
                resp = requests.get(f"{self.upstream_base_url}/{match[1]}/{match[2]}", timeout=10)
                resource = resp.json() if resp.status_code == 200 else {}
            kind = resource.get("resourceType") or (match[1] if match else rtype)
            rid = resource.get("id") or (match[2] if match else "")
            with self._lock:
                self.created.append(Created(str(kind), str(rid), resource))

    def _forward(self, method: str, target: str, headers: dict[str, str],
                 body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
        conn = http.client.HTTPConnection(self.upstream_host, self.upstream_port, timeout=60)
        try:
            sent = dict(headers)
            sent["host"] = f"{self.upstream_host}:{self.upstream_port}"
            sent["connection"] = "close"
            if body or method in WRITE_METHODS:
                sent["content-length"] = str(len(body))
            conn.request(method, target, body=body or None, headers=sent)
            resp = conn.getresponse()
            return resp.status, list(resp.getheaders()), resp.read()
        except (OSError, http.client.HTTPException) as exc:
            return 502, [], _outcome("transient", f"upstream unreachable: {exc}")
        finally:
            conn.close()


# -- seeding what the agency's EHR already holds (straight to sekmet) ------------------

def _post(upstream_base_url: str, resource: dict[str, Any]) -> str:
    resp = requests.post(f"{upstream_base_url.rstrip('/')}/{resource['resourceType']}",
                         json=resource, timeout=10,
                         headers={"Content-Type": "application/fhir+json"})
    resp.raise_for_status()
    return str(resp.json()["id"])


def seed_practitioners(upstream_base_url: str, profile: Any,
                       staff: list[dict[str, str]]) -> dict[str, str]:
    """A Practitioner per staff member ({"id", "family", "given", "npi"?}): staff id -> id."""
    ids: dict[str, str] = {}
    for member in staff:
        identifier = [{"system": profile.staff_system, "value": member["id"]}]
        if member.get("npi"):
            identifier.append({"system": NPI_SYSTEM, "value": member["npi"]})
        name: dict[str, Any] = {"family": member["family"]}
        if member.get("given"):
            name["given"] = [member["given"]]
        ids[member["id"]] = _post(upstream_base_url, {
            "resourceType": "Practitioner", "active": True, "identifier": identifier,
            "name": [name]})
    return ids


def seed_encounters(upstream_base_url: str, sessions: list[tuple[str, str, str]]) -> list[str]:
    """A finished ambulatory Encounter per (patient id, start, end): their ids, in order."""
    return [_post(upstream_base_url, {
        "resourceType": "Encounter", "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB",
                  "display": "ambulatory"},
        "subject": {"reference": f"Patient/{patient}"},
        "period": {"start": start, "end": end},
    }) for patient, start, end in sessions]


def seed_organization(upstream_base_url: str, profile: Any, name: str = "Riverside") -> str:
    """The agency's Organization, with the profile's identifier: its id."""
    return _post(upstream_base_url, {
        "resourceType": "Organization", "name": name,
        "identifier": [{"system": profile.organization.system,
                        "value": profile.organization.value}]})
