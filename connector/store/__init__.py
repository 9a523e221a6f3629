"""The durable store: record versions, the outbox, the write ledger, links, audit.

One :class:`Store` wraps one SQLAlchemy engine (SQLite file by default,
PostgreSQL for several workers on several hosts). Every state change goes
through a method here and appends an audit event in the same transaction.
The CLI and the web app call these methods; neither writes SQL of its own.
"""

from __future__ import annotations

from connector.store.base import (
    MIGRATIONS,
    AddSummary,
    Job,
    LedgerEntry,
    Refused,
    StoreError,
    utcnow,
)
from connector.store.drafts import DraftsMixin
from connector.store.ledger import LedgerMixin
from connector.store.outbox import OutboxMixin
from connector.store.review import ReviewMixin
from connector.store.versions import VersionsMixin

__all__ = [
    "MIGRATIONS",
    "AddSummary",
    "Job",
    "LedgerEntry",
    "Refused",
    "Store",
    "StoreError",
    "utcnow",
]


class Store(VersionsMixin, OutboxMixin, LedgerMixin, DraftsMixin, ReviewMixin):
    """All reads and writes of PeerSync's database (see the modules of this package)."""

