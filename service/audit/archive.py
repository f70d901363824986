"""Archiving old months of the audit trail (PostgreSQL, where it is partitioned).

For each month before the one asked, oldest first: check the month's stretch of the
chain against the archives before it, write it to a gzip-compressed JSON Lines file
(a header line, then one row per line with its hashes), fsync and rename it into place,
read the file back and verify it, and only then, in one transaction, register it in
`audit_archives`, record the archive in the audit trail itself, and detach and drop the
partition. A failure at any step leaves the partition in place.
"""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import text

from service.audit import partitions
from service.audit import services as audit
from service.audit.actor import Actor
from service.audit.chain import GENESIS_HASH, canonical_json, format_time
from service.audit.exceptions import ArchiveError, PartitionError
from service.audit.models import AuditArchive
from service.audit.partitions import Month
from service.audit.verify import (
    ARCHIVE_FORMAT,
    Progress,
    file_sha256,
    verify_archive,
    walk,
)
from service.clock import utcnow
from service.extensions import db


@dataclass(frozen=True)
class Archived:
    month: str
    path: str
    rows: int
    last_hash: str | None

    def as_dict(self) -> dict:
        return {"month": self.month, "path": self.path, "rows": self.rows,
                "last_hash": self.last_hash}


def months_to_archive(before: Month) -> list[Month]:
    if not partitions.partitioned():
        raise PartitionError("archiving needs PostgreSQL: the embedded SQLite audit trail is "
                             "not partitioned and keeps every row")
    current = Month.of(utcnow())
    if current < before:
        raise PartitionError(f"cannot archive {before} or later: the current month is {current}")
    return [month for month in partitions.existing() if month < before]


def archive_month(month: Month, *, directory: str, actor: Actor,
                  progress: Progress | None = None) -> Archived:
    """Archive one month's partition; see the module docstring for the order of steps."""
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"audit_logs-{month}.jsonl.gz"
    if final.exists():
        raise ArchiveError(f"{final} already exists; move it away before archiving {month} again")
    expected_id, expected_prev = _anchor()
    # Two passes over the partition (check, then write): a past month no longer changes,
    # and neither pass holds the month in memory.
    report = walk(_partition_rows(month), expected_id=expected_id,
                  expected_prev=expected_prev, progress=progress)
    if not report.ok:
        raise ArchiveError(f"{month} fails verification, so it is kept: {report.problem.message}"
                           " (archive older months first, or investigate)")
    header = {"format": ARCHIVE_FORMAT, "month": str(month), "row_count": report.checked,
              "first_id": report.first_id, "last_id": report.last_id,
              "first_prev_hash": expected_prev if report.checked else None,
              "last_hash": report.last_hash, "written_at": format_time(utcnow())}
    _write(final, header, _partition_rows(month))
    check = verify_archive(str(final))
    if not check.ok or check.checked != report.checked:
        final.unlink(missing_ok=True)
        raise ArchiveError(f"the archive of {month} did not verify after writing: "
                           f"{check.problem.message if check.problem else 'row count differs'}")
    digest = file_sha256(str(final))
    try:
        _register_and_drop(month, header, str(final), digest, actor)
    except Exception:
        db.session.rollback()
        raise
    return Archived(str(month), str(final), report.checked, report.last_hash)


def _anchor() -> tuple[int, str]:
    last = db.session.execute(text(
        "SELECT last_id, last_hash FROM audit_archives WHERE last_id IS NOT NULL"
        " ORDER BY last_id DESC LIMIT 1")).first()
    return (last.last_id + 1, last.last_hash) if last else (1, GENESIS_HASH)


def _partition_rows(month: Month) -> Iterator[dict]:
    result = db.session.execute(
        text(f"SELECT * FROM {month.table} ORDER BY id, created_at")
        .execution_options(stream_results=True, yield_per=5000))
    for row in result.mappings():
        yield dict(row)


def _write(path: Path, header: dict, rows: Iterable[dict]) -> None:
    partial = path.with_name(path.name + ".partial")
    with open(partial, "wb") as raw:
        with gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as handle:
            handle.write((canonical_json(header) + "\n").encode())
            for row in rows:
                line = {**row, "created_at": format_time(row["created_at"]),
                        "metadata": json.loads(row["metadata"])}
                handle.write((canonical_json(line) + "\n").encode())
        raw.flush()
        os.fsync(raw.fileno())
    os.replace(partial, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def _register_and_drop(month: Month, header: dict, path: str, digest: str, actor: Actor) -> None:
    archive = AuditArchive(month=str(month), path=path, file_sha256=digest,
                           row_count=header["row_count"], first_id=header["first_id"],
                           last_id=header["last_id"], first_prev_hash=header["first_prev_hash"],
                           last_hash=header["last_hash"])
    db.session.add(archive)
    db.session.flush()
    audit.record(action="audit.archive", entity_type="audit_partition", entity_id=str(month),
                 actor=actor, before={"partition": month.table, "rows": header["row_count"]},
                 after={"partition": None, "archive": path, "file_sha256": digest},
                 details={"first_id": header["first_id"], "last_id": header["last_id"],
                          "last_hash": header["last_hash"]})
    db.session.execute(text(f"ALTER TABLE audit_logs DETACH PARTITION {month.table}"))
    db.session.execute(text(f"DROP TABLE {month.table}"))
    db.session.commit()
