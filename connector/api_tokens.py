"""API tokens: one per peer support tool (its records' source) or for ``/metrics``.

A token's text is shown once, when it is made; the store keeps its SHA-256 and a
short prefix for people to tell tokens apart. Making and revoking one appends an
audit event.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import insert, select, update

from connector.accounts import AccountError, _aware, _now
from connector.config import valid_source
from connector.schema import api_tokens

if TYPE_CHECKING:
    from connector.store import Store

TOKEN_PREFIX = "ps_"
TOKEN_KINDS = ("source", "metrics")
_TOKEN_RE = re.compile(r"ps_[A-Za-z0-9_-]{20,100}")


@dataclass(frozen=True, slots=True)
class Token:
    id: int
    kind: str
    source: str | None
    prefix: str
    created_at: datetime
    created_by: str
    revoked_at: datetime | None = None



def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def add_token(
    store: Store, *, source: str | None = None, metrics: bool = False, actor: str
) -> tuple[Token, str]:
    """Make a token for ``source`` (or for ``/metrics``); return it and its text, shown once."""
    if metrics == (source is not None):
        raise AccountError("a token is either for a source or for metrics")
    if source is not None and not valid_source(source):
        raise AccountError("the source must be 1-64 characters of A-Z a-z 0-9 . _ -")
    kind = "metrics" if metrics else "source"
    text = TOKEN_PREFIX + secrets.token_urlsafe(32)
    prefix = text[:10]
    now = _now()
    with store.begin() as conn:
        token_id = conn.execute(
            insert(api_tokens).returning(api_tokens.c.id),
            {
                "token_hash": _token_hash(text),
                "prefix": prefix,
                "kind": kind,
                "source": source,
                "created_at": now,
                "created_by": actor,
            },
        ).scalar_one()
        store.audit(conn, actor=actor, action="token.created", source=source,
                    detail={"token_id": int(token_id), "kind": kind, "prefix": prefix}, at=now)
    return Token(int(token_id), kind, source, prefix, now, actor), text


def check_token(store: Store, text: str) -> Token | None:
    """The live token with this text, or None."""
    if not _TOKEN_RE.fullmatch(text):
        return None
    digest = _token_hash(text)
    with store.engine.connect() as conn:
        row = conn.execute(
            select(api_tokens).where(api_tokens.c.token_hash == digest)
        ).first()
    if row is None or row.revoked_at is not None:
        return None
    if not hmac.compare_digest(row.token_hash, digest):
        return None
    return _token(row)


def _token(row: Any) -> Token:
    return Token(
        id=int(row.id),
        kind=row.kind,
        source=row.source,
        prefix=row.prefix,
        created_at=_aware(row.created_at) or row.created_at,
        created_by=row.created_by,
        revoked_at=_aware(row.revoked_at),
    )


def list_tokens(store: Store) -> list[Token]:
    with store.engine.connect() as conn:
        return [_token(row) for row in conn.execute(select(api_tokens).order_by(api_tokens.c.id))]


def revoke_token(store: Store, token_id: int, *, actor: str) -> bool:
    now = _now()
    with store.begin() as conn:
        changed = conn.execute(
            update(api_tokens)
            .where(api_tokens.c.id == token_id, api_tokens.c.revoked_at.is_(None))
            .values(revoked_at=now)
        ).rowcount
        if changed:
            store.audit(conn, actor=actor, action="token.revoked",
                        detail={"token_id": token_id}, at=now)
    return bool(changed)
