"""What every read-only report shares (connector.reports, .record_listing, .dashboard_figures):
rows as plain dicts with timezone-aware UTC times, and safe LIKE patterns."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

TIME_COLUMNS = ("updated_at", "synced_at", "created_at", "start_at", "received_at", "at",
                "next_attempt_at", "first_start", "last_start", "oldest", "updated")


def aware(value: datetime | None) -> datetime | None:
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


def row_dict(mapping: Any) -> dict[str, Any]:
    out = dict(mapping)
    for key in TIME_COLUMNS:
        if isinstance(out.get(key), datetime):
            out[key] = aware(out[key])
    return out


def utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def like_pattern(text: str) -> str:
    """``%text%`` with LIKE's wildcards in ``text`` escaped (escape character ``\\``)."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"
