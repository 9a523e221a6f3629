"""The document form's store: drafts, a specialist's caseload and notes, retractions.

Drafts hold the form's fields (PHI, like a record's payload: never logged). The
documentation time of a draft is the sum of the intervals its form was open,
each from a start the server signed to the save, capped; an interval never
overlaps one counted already (a double click, two tabs), so no second is
counted twice.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, insert, or_, select, update

from connector.audit_chain import append as append_audit
from connector.schema import audit_events, drafts, jobs, links
from connector.schema import record_versions as rv
from connector.store.base import _aware, _utc, utcnow

RETRACTED = "record.retracted"  # the audit action of a retraction; detail: {"reason": code}


def counted_seconds(started: datetime, now: datetime, counted_until: datetime | None,
                    cap_s: float) -> float:
    """The seconds of one interval [started, now] still to count: after ``counted_until``
    (what a save counted already), at most ``cap_s``, never negative."""
    if counted_until is not None and counted_until > started:
        started = counted_until
    return max(0.0, min((now - started).total_seconds(), cap_s))


def _draft(row: Any) -> dict[str, Any]:
    out = dict(row._mapping)
    for key in ("counted_until", "created_at", "updated_at"):
        out[key] = _aware(out[key])
    return out


def _participant(payload: str) -> dict[str, Any]:
    data = json.loads(payload)
    participant: dict[str, Any] = data.get("participant") or {}
    return participant


class DraftsMixin:
    engine: Any
    audit_key: Any

    # -- drafts -----------------------------------------------------------

    def save_draft(self, *, user_id: int, fields: dict[str, str], started: datetime,
                   cap_s: float, mode: str = "new", record_id: str | None = None,
                   nonce: str = "", draft_id: int | None = None,
                   now: datetime | None = None) -> dict[str, Any] | None:
        """Create or update a user's draft, counting the interval from ``started``.

        None when ``draft_id`` is not this user's draft (deleted, submitted, someone
        else's).
        """
        now = _utc(now or utcnow())
        started = _utc(started)
        with self.begin(audited=False) as conn:  # type: ignore[attr-defined]
            if draft_id is None and nonce:  # this form's draft, saved already (a double click)
                draft_id = conn.execute(select(drafts.c.id).where(
                    drafts.c.user_id == user_id, drafts.c.nonce == nonce)).scalar()
            if draft_id is None:
                seconds = counted_seconds(started, now, None, cap_s)
                new_id = conn.execute(insert(drafts).returning(drafts.c.id).values(
                    user_id=user_id, mode=mode, record_id=record_id, nonce=nonce,
                    fields=fields, documentation_s=seconds, counted_until=now,
                    created_at=now, updated_at=now)).scalar_one()
                return {"id": new_id, "documentation_s": seconds}
            query = select(drafts).where(drafts.c.id == draft_id, drafts.c.user_id == user_id)
            if conn.dialect.name == "postgresql":
                query = query.with_for_update()
            row = conn.execute(query).first()
            if row is None:
                return None
            held = _draft(row)
            seconds = held["documentation_s"] + counted_seconds(
                started, now, held["counted_until"], cap_s)
            conn.execute(update(drafts).where(drafts.c.id == draft_id).values(
                fields=fields, documentation_s=seconds,
                counted_until=max(now, held["counted_until"] or now), updated_at=now))
            return {"id": draft_id, "documentation_s": seconds}

    def get_draft(self, user_id: int, draft_id: int) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(drafts).where(
                drafts.c.id == draft_id, drafts.c.user_id == user_id)).first()
        return _draft(row) if row else None

    def drafts_of(self, user_id: int, limit: int = 50) -> list[dict[str, Any]]:
        """A user's drafts, the last saved first."""
        with self.engine.connect() as conn:
            rows = conn.execute(select(drafts).where(drafts.c.user_id == user_id)
                                .order_by(drafts.c.updated_at.desc(), drafts.c.id.desc())
                                .limit(limit)).all()
        return [_draft(r) for r in rows]

    def delete_draft(self, user_id: int, draft_id: int) -> bool:
        with self.begin(audited=False) as conn:  # type: ignore[attr-defined]
            return bool(conn.execute(delete(drafts).where(
                drafts.c.id == draft_id, drafts.c.user_id == user_id)).rowcount)

    # -- a specialist's participants and notes -----------------------------

    def caseload(self, specialist_id: str, text: str = "", limit: int = 20
                 ) -> list[dict[str, Any]]:
        """A specialist's participants, the latest seen first: each one's id and the details
        of its latest record version of this specialist (any source), whether an admin
        linked it to an EHR Patient; ``text`` matches the id or a name (case-insensitive).

        The latest version per participant comes from the (specialist_id, participant_id,
        id) index; only the candidates' payloads are read.
        """
        words = text.lower().split()[:5]
        latest = (select(rv.c.participant_id, func.max(rv.c.id).label("id"))
                  .where(rv.c.specialist_id == specialist_id)
                  .group_by(rv.c.participant_id))
        if not words:  # the latest participants: only theirs are read
            latest = latest.order_by(func.max(rv.c.id).desc()).limit(limit)
        last = latest.subquery()
        query = (select(rv.c.id, rv.c.source, rv.c.participant_id, rv.c.payload)
                 .join(last, last.c.id == rv.c.id).order_by(rv.c.id.desc()))
        for word in words:  # each word in the id or the payload (then checked in the names)
            pattern = "%" + word.replace("\\", "\\\\").replace("%", "\\%").replace(
                "_", "\\_") + "%"
            query = query.where(or_(func.lower(rv.c.participant_id).like(pattern, escape="\\"),
                                    func.lower(rv.c.payload).like(pattern, escape="\\")))
        out: list[dict[str, Any]] = []
        with self.engine.connect() as conn:
            for row in conn.execute(query.limit(limit * 10)):
                p = _participant(row.payload)
                entry = {"id": row.participant_id, "source": row.source,
                         "mrn": p.get("mrn") or "", "given": p.get("given") or "",
                         "family": p.get("family") or "",
                         "birth_date": p.get("birth_date") or ""}
                known = " ".join((entry["id"], entry["given"], entry["family"])).lower()
                if not all(word in known for word in words):
                    continue  # the text was in the note, not the participant
                out.append(entry)
                if len(out) >= limit:
                    break
            keys = [f"{e['source']}|{e['id']}" for e in out]
            linked = set(conn.execute(select(links.c.key).where(
                links.c.kind == "patient", links.c.key.in_(keys))).scalars()) if keys else set()
        for entry in out:
            entry["linked"] = f"{entry['source']}|{entry['id']}" in linked
        return out

    def participant_of(self, specialist_id: str, participant_id: str) -> dict[str, Any] | None:
        """This specialist's latest details of one participant, or None (not in its caseload)."""
        with self.engine.connect() as conn:
            row = conn.execute(select(rv.c.payload).where(
                rv.c.specialist_id == specialist_id, rv.c.participant_id == participant_id)
                .order_by(rv.c.id.desc()).limit(1)).first()
        return _participant(row.payload) if row else None

    def recent_notes(self, specialist_id: str, limit: int = 10) -> list[dict[str, Any]]:
        """A specialist's latest record versions with their participant and sync state."""
        query = (select(jobs.c.id, jobs.c.source, jobs.c.record_id, jobs.c.state,
                        jobs.c.reason, rv.c.participant_id, rv.c.start_at, rv.c.note_version,
                        rv.c.status, rv.c.payload)
                 .join(rv, rv.c.id == jobs.c.record_version_id)
                 .where(rv.c.specialist_id == specialist_id)
                 .order_by(rv.c.id.desc()).limit(limit))
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        out = []
        for row in rows:
            entry = dict(row._mapping)
            p = _participant(entry.pop("payload"))
            entry["participant_name"] = " ".join(
                x for x in (p.get("given"), p.get("family")) if x)
            entry["start_at"] = _aware(entry["start_at"])
            out.append(entry)
        return out

    def latest_version(self, source: str, record_id: str) -> dict[str, Any] | None:
        """A record's latest version with its job (state, reason), or None."""
        query = (select(jobs.c.id.label("job_id"), jobs.c.state, jobs.c.reason,
                        rv.c.id.label("record_version_id"), rv.c.specialist_id,
                        rv.c.note_version, rv.c.status, rv.c.payload)
                 .join(rv, rv.c.id == jobs.c.record_version_id)
                 .where(jobs.c.source == source, jobs.c.record_id == record_id)
                 .order_by(jobs.c.id.desc()).limit(1))
        with self.engine.connect() as conn:
            row = conn.execute(query).first()
        return dict(row._mapping) if row else None

    # -- retractions -------------------------------------------------------

    def note_retraction(self, *, actor: str, source: str, record_id: str,
                        record_version_id: int, job_id: int, reason: str) -> None:
        """The audit event of a retraction: its reason is a code (no free text, no PHI)."""
        with self.begin() as conn:  # type: ignore[attr-defined]
            append_audit(conn, [{
                "at": utcnow(), "actor": actor, "action": RETRACTED, "source": source,
                "record_id": record_id, "record_version_id": record_version_id,
                "job_id": job_id, "state_from": None, "state_to": None,
                "detail": {"reason": reason}}], self.audit_key)

    def retractions(self, source: str, record_id: str) -> list[dict[str, Any]]:
        """A record's retraction events (actor, time, reason code), oldest first."""
        with self.engine.connect() as conn:
            rows = conn.execute(select(audit_events.c.at, audit_events.c.actor,
                                       audit_events.c.job_id, audit_events.c.detail)
                                .where(audit_events.c.source == source,
                                       audit_events.c.record_id == record_id,
                                       audit_events.c.action == RETRACTED)
                                .order_by(audit_events.c.seq)).all()
        return [{"at": _aware(r.at), "actor": r.actor, "job_id": r.job_id,
                 "reason": (r.detail or {}).get("reason", "")} for r in rows]
