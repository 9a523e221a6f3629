"""The JSON API for peer support tools: send encounter records, ask for their sync state.

``Authorization: Bearer <token>`` with a token from ``peersync token add
SOURCE``; the token's source is the records' source.

``POST /api/v1/encounters`` takes one record (a JSON object) or a list of
them, checks each against the intake contract and queues the good ones; a bad
record never stops the good ones. The answer lists a result per record, in
order::

    {"source": "peer-tool", "accepted": 1, "rejected": 1,
     "results": [
       {"position": 1, "id": "ps-1", "status": "accepted", "state": "pending", "job_id": 7},
       {"position": 2, "id": "ps-2", "status": "rejected",
        "errors": [{"path": "end", "message": "must not be before start"}]}]}

Status 202 when at least one record was accepted, 422 when none was; 400 when
the body is not JSON or is nested deeper than API_MAX_DEPTH, 413 when it is
larger than MAX_CONTENT_LENGTH bytes or holds more than API_MAX_RECORDS records.

The answer stays small whatever the body holds: a rejected record lists at most
API_MAX_ERRORS_PER_RECORD errors (``"more_errors": n`` counts the rest), and
only the first API_MAX_ERROR_RECORDS rejected records list any (the later ones
carry ``"errors": []`` and ``"more_errors"``; the answer then says
``"errors_truncated": true``).

``GET /api/v1/encounters/<id>`` answers the record's sync state (its newest
version) and every version's, or 404.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, current_app, g, jsonify, request

from connector.intake import Accepted, loads, parse_payload
from connector.reports import record_states
from webapp import get_store
from webapp.access import bearer

bp = Blueprint("api", __name__, url_prefix="/api/v1")

# Defaults of the app config keys that bound a request and its answer.
LIMITS = {
    "API_MAX_DEPTH": 64,  # far deeper than the contract, far short of Python's recursion limit
    "API_MAX_ERRORS_PER_RECORD": 20,
    "API_MAX_ERROR_RECORDS": 100,
}


def _limit(name: str) -> int:
    return int(current_app.config.get(name, LIMITS[name]))


class _BadBody(Exception):
    """The body is not JSON the API can take; the message says why (never a value)."""


def _read_body() -> Any:
    """The request body decoded as JSON, or :class:`_BadBody`.

    ``request.get_data`` raises 413 beyond MAX_CONTENT_LENGTH. A body nested
    past the decoder's recursion limit raises RecursionError inside ``json``:
    that is a bad request (400), not a server error.
    """
    if not request.is_json:
        raise _BadBody("send the record(s) as JSON (Content-Type: application/json): "
                       "one object or a list of objects")
    data = request.get_data(cache=False)
    try:
        body = loads(data)  # intake's decoder: a duplicated key rejects its record
    except RecursionError:
        raise _BadBody("the JSON is nested too deeply") from None
    except ValueError:  # JSONDecodeError and UnicodeDecodeError
        raise _BadBody("the body is not valid JSON") from None
    if _too_deep(body, _limit("API_MAX_DEPTH")):
        raise _BadBody(f"the JSON is nested deeper than {_limit('API_MAX_DEPTH')} levels")
    return body


def _too_deep(value: Any, limit: int) -> bool:
    """True when ``value`` nests lists/objects more than ``limit`` levels (no recursion)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children
                     if isinstance(child, dict | list))
    return False


def _error(status: int, error: str, message: str) -> Any:
    response = jsonify(error=error, message=message)
    response.status_code = status
    return response


def _version(job: dict[str, Any]) -> dict[str, Any]:
    return {
        "job_id": job["id"],
        "state": job["state"],
        "reason": job["reason"],
        "attempts": job["attempts"],
        "note_version": job["note_version"],
        "received_at": job["created_at"].isoformat() if job["created_at"] else None,
        "synced_at": job["synced_at"].isoformat() if job["synced_at"] else None,
    }


@bp.post("/encounters")
@bearer("source")
def post_encounters() -> Any:
    source: str = g.token.source
    try:
        body = _read_body()
    except _BadBody as exc:
        return _error(400, "bad_request", str(exc))
    if isinstance(body, list) and len(body) > current_app.config["API_MAX_RECORDS"]:
        return _error(413, "too_many_records",
                      f"at most {current_app.config['API_MAX_RECORDS']} records per request")
    per_record = _limit("API_MAX_ERRORS_PER_RECORD")
    error_records = _limit("API_MAX_ERROR_RECORDS")
    results: list[dict[str, Any]] = []
    good = []
    echoed = 0  # rejected records whose errors the answer lists
    truncated = False
    for result in parse_payload(body, source=source):
        if isinstance(result, Accepted):
            good.append(result.record)
            results.append({"position": result.position, "id": result.record.id,
                            "status": "accepted"})
            continue
        error = result.error
        shown = error.errors[:per_record] if echoed < error_records else []
        echoed += 1
        entry: dict[str, Any] = {"position": result.position, "status": "rejected",
                                 "errors": [{"path": e.path, "message": e.message}
                                            for e in shown]}
        if len(error.errors) > len(shown):
            entry["more_errors"] = len(error.errors) - len(shown)
            truncated = True
        if error.record_id:
            entry["id"] = error.record_id
        results.append(entry)
    store = get_store()
    if good:
        store.add_records(good, actor=f"api:{source}")
        states = record_states(store, source, [r.id for r in good])
        by_content: dict[tuple[str, str], dict[str, Any]] = {}
        for record_id, jobs in states.items():
            for job in jobs:
                by_content[(record_id, job["content_hash"])] = job
        hashes = {id(r): r.content_hash for r in good}
        accepted = iter(good)
        for entry in results:
            if entry["status"] != "accepted":
                continue
            record = next(accepted)
            found = by_content.get((record.id, hashes[id(record)]))
            if found is not None:
                entry["job_id"] = found["id"]
                entry["state"] = found["state"]
    accepted_n = len(good)
    payload: dict[str, Any] = {"source": source, "accepted": accepted_n,
                               "rejected": len(results) - accepted_n, "results": results}
    if truncated:
        payload["errors_truncated"] = True
    response = jsonify(payload)
    response.status_code = 202 if accepted_n else 422
    return response


@bp.get("/encounters/<record_id>")
@bearer("source")
def get_encounter(record_id: str) -> Any:
    source: str = g.token.source
    jobs = record_states(get_store(), source, [record_id]).get(record_id)
    if not jobs:
        return _error(404, "not_found", f"no record {record_id!r} from source {source!r}")
    latest = jobs[-1]
    return jsonify({"source": source, "id": record_id, "state": latest["state"],
                    "reason": latest["reason"], "versions": [_version(j) for j in jobs]})
