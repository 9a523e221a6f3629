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
the body is not JSON, 413 when it holds more than API_MAX_RECORDS records.

``GET /api/v1/encounters/<id>`` answers the record's sync state (its newest
version) and every version's, or 404.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, current_app, g, jsonify, request

from connector.intake import Accepted, parse_payload
from connector.reports import record_states
from webapp import get_store
from webapp.access import bearer

bp = Blueprint("api", __name__, url_prefix="/api/v1")


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
    body = request.get_json(silent=True, force=False)
    if body is None:
        return _error(400, "bad_request", "send the record(s) as JSON "
                      "(Content-Type: application/json): one object or a list of objects")
    if isinstance(body, list) and len(body) > current_app.config["API_MAX_RECORDS"]:
        return _error(413, "too_many_records",
                      f"at most {current_app.config['API_MAX_RECORDS']} records per request")
    results: list[dict[str, Any]] = []
    good = []
    for result in parse_payload(body, source=source):
        if isinstance(result, Accepted):
            good.append(result.record)
            results.append({"position": result.position, "id": result.record.id,
                            "status": "accepted"})
        else:
            error = result.error
            entry: dict[str, Any] = {"position": result.position, "status": "rejected",
                                     "errors": [{"path": e.path, "message": e.message}
                                                for e in error.errors]}
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
    payload = {"source": source, "accepted": accepted_n, "rejected": len(results) - accepted_n,
               "results": results}
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
