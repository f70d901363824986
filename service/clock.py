"""Time helpers shared by every domain: one notion of "now" and one way to print it."""

from __future__ import annotations

from datetime import UTC, datetime


def utcnow() -> datetime:
    """Naive UTC now: stored the same way on SQLite and PostgreSQL."""
    return datetime.now(UTC).replace(tzinfo=None)


def iso(value: datetime | None) -> str | None:
    """A stored (naive UTC) time as ISO 8601 with the `Z` that says it is UTC."""
    return None if value is None else value.isoformat() + "Z"


def parse_iso(text: str) -> datetime:
    """An ISO 8601 date/time (`Z` or an offset allowed) as naive UTC; ValueError otherwise."""
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC).replace(tzinfo=None)
    return moment
