"""Monthly partitions of `audit_logs` on PostgreSQL.

Partitions are created ahead (the beat task `audit.create_partitions`, daily, keeps
AUDIT_PARTITIONS_AHEAD months ready) so a write never finds its month missing; if one
ever does, the insert fails and the change it records is rolled back with it. There is
no default partition on purpose: a row in it would block the creation of its month's
partition, and an append-only table could never move it out.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime

from sqlalchemy import text

from service.audit.exceptions import PartitionError
from service.clock import utcnow
from service.extensions import db

PARENT = "audit_logs"
_NAME = re.compile(r"^audit_logs_y(\d{4})m(\d{2})$")
# Serialises partition DDL between beat runs and `flask audit partitions`.
_DDL_LOCK_KEY = 0x5241434950415254


@dataclass(frozen=True)
class Month:
    year: int
    month: int

    @classmethod
    def parse(cls, value: str) -> Month:
        match = re.fullmatch(r"(\d{4})-(\d{2})", value.strip())
        if not match or not 1 <= int(match.group(2)) <= 12:
            raise ValueError(f"{value!r} is not a month like 2026-01")
        return cls(int(match.group(1)), int(match.group(2)))

    @classmethod
    def of(cls, moment: date | datetime) -> Month:
        return cls(moment.year, moment.month)

    def plus(self, months: int) -> Month:
        index = self.year * 12 + self.month - 1 + months
        return Month(index // 12, index % 12 + 1)

    @property
    def start(self) -> datetime:
        return datetime(self.year, self.month, 1)

    @property
    def end(self) -> datetime:
        return self.plus(1).start

    @property
    def table(self) -> str:
        return f"{PARENT}_y{self.year:04d}m{self.month:02d}"

    def __str__(self) -> str:
        return f"{self.year:04d}-{self.month:02d}"

    def __lt__(self, other: Month) -> bool:
        return (self.year, self.month) < (other.year, other.month)


def is_partition_name(name: str) -> bool:
    """Whether a table name is one of the audit partitions (schema comparisons skip them)."""
    return bool(_NAME.match(name))


def partitioned() -> bool:
    return db.session.get_bind().dialect.name == "postgresql"


def existing() -> list[Month]:
    """The months that have a partition, oldest first (PostgreSQL only)."""
    if not partitioned():
        return []
    names = db.session.execute(text(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
        " WHERE i.inhparent = CAST(:parent AS regclass)"), {"parent": PARENT}).scalars()
    months = []
    for name in names:
        match = _NAME.match(name)
        if match:
            months.append(Month(int(match.group(1)), int(match.group(2))))
    return sorted(months, key=lambda m: (m.year, m.month))


def create_partition_sql(month: Month) -> list[str]:
    """The statements that create one month's partition, with its TRUNCATE guard
    (row triggers come from the parent; statement triggers do not)."""
    return [
        f"CREATE TABLE IF NOT EXISTS {month.table} PARTITION OF {PARENT}"
        f" FOR VALUES FROM ('{month.start.isoformat()}') TO ('{month.end.isoformat()}')",
        f"CREATE OR REPLACE TRIGGER audit_logs_no_truncate BEFORE TRUNCATE ON {month.table}"
        " FOR EACH STATEMENT EXECUTE FUNCTION audit_logs_refuse_change()",
    ]


def ensure_partitions(*, months_ahead: int, now: datetime | None = None) -> list[str]:
    """Create the partitions of this month and the next `months_ahead`; the caller commits
    (the beat task's base task, the CLI command).

    Returns the names created. Nothing to do on SQLite, which is not partitioned.
    """
    if not partitioned():
        return []
    if months_ahead < 0:
        raise PartitionError("months_ahead must not be negative")
    first = Month.of(now or utcnow())
    db.session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _DDL_LOCK_KEY})
    have = set(existing())
    created = []
    for offset in range(months_ahead + 1):
        month = first.plus(offset)
        if month in have:
            continue
        for statement in create_partition_sql(month):
            db.session.execute(text(statement))
        created.append(month.table)
    return created
