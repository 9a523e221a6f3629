"""The store's value types, its error, and UTC helpers."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from connector.errors import ConnectorError

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"


class StoreError(ConnectorError):
    """The database refused or could not be reached. Retry is safe (nothing half-written)."""

    retry_safe = True


def utcnow() -> datetime:
    return datetime.now(UTC)


def _utc(value: datetime) -> datetime:
    """A time to write or compare, in UTC (naive: taken as UTC already).

    SQLite keeps a datetime's wall-clock digits and drops its offset, so a
    time in any other zone would be compared hours off.
    """
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def _aware(value: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; everything we write is UTC."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class Job:
    id: int
    record_version_id: int
    source: str
    record_id: str
    state: str
    attempts: int
    claimed_from: str | None = None
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class Refused:
    """A record the database would not store (named by id and contract path, never value)."""

    source: str
    record_id: str
    field: str  # the contract path found to be at fault, "" when none could be told
    reason: str  # the database error's class name

    def __str__(self) -> str:
        where = f"{self.field}: " if self.field else ""
        return f"{self.source}: record (id={self.record_id}): {where}refused by the database " \
            f"({self.reason}); not stored"


@dataclass(frozen=True, slots=True)
class AddSummary:
    new_versions: int = 0
    unchanged: int = 0
    refused: tuple[Refused, ...] = ()

    def __add__(self, other: AddSummary) -> AddSummary:
        return AddSummary(
            self.new_versions + other.new_versions,
            self.unchanged + other.unchanged,
            self.refused + other.refused,
        )


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    resource_type: str
    identifier_system: str
    identifier_value: str
    ehr_id: str | None
    ehr_version: str | None
    action: str
    state: str
    record_version_id: int | None
