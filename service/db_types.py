"""Column helpers shared by every domain's models."""

from datetime import UTC, datetime

from sqlalchemy import BigInteger, Integer

# SQLite only auto-increments an INTEGER PRIMARY KEY; PostgreSQL gets a 64-bit key.
BigId = BigInteger().with_variant(Integer(), "sqlite")


def iso_z(value: datetime | None) -> str | None:
    """A stored naive-UTC time as ISO 8601 with a Z, or None."""
    return None if value is None else value.isoformat() + "Z"


def utcnow() -> datetime:
    """Naive UTC now: stored the same way on SQLite and PostgreSQL."""
    return datetime.now(UTC).replace(tzinfo=None)
