"""Walking the chain: the live table (optionally from a date) or an archive file.

A row is checked against the one before it: its id is the next position (a gap means
rows are missing, a repeated id means a row was inserted), its hash matches its content
(else it was altered), and its `prev_hash` is the previous row's hash (else a row was
inserted, replaced or removed just before it). The first break is reported. The live
chain must also reach the row the chain-head witness records, unchanged (see `head`):
rows removed from its end are reported missing too.
"""

from __future__ import annotations

import gzip
import hashlib
import itertools
import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from datetime import datetime

from sqlalchemy import func, select

from service.audit import head
from service.audit.chain import GENESIS_HASH, HASHED_FIELDS, row_hash
from service.audit.models import AuditArchive, AuditLog
from service.extensions import db

ARCHIVE_FORMAT = "racine-audit-archive/1"
_COLUMNS = [AuditLog.__table__.c[name] for name in (*HASHED_FIELDS, "hash")]
Progress = Callable[[int], None]


@dataclass(frozen=True)
class Break:
    kind: str  # altered | missing | inserted | broken_link
    row_id: int
    message: str


@dataclass
class Report:
    ok: bool
    checked: int
    first_id: int | None
    last_id: int | None
    last_hash: str | None
    problem: Break | None = None

    def as_dict(self) -> dict:
        data = asdict(self)
        data["problem"] = asdict(self.problem) if self.problem else None
        return data


def walk(rows: Iterable[dict], *, expected_id: int, expected_prev: str,
         progress: Progress | None = None, every: int = 10000) -> Report:
    """Check rows given in (id, created_at) order, starting at `expected_id`, linked to
    `expected_prev`."""
    checked = 0
    first_id = last_id = None
    last_hash = None
    for row_id, group in itertools.groupby(rows, key=lambda r: r["id"]):
        group = list(group)
        checked += len(group)
        if progress and checked // every != (checked - len(group)) // every:
            progress(checked)
        first_id = row_id if first_id is None else first_id
        problem = _check(row_id, group, expected_id, expected_prev)
        if problem is not None:
            return Report(False, checked, first_id, last_id, last_hash, problem)
        last_id, last_hash = row_id, group[0]["hash"]
        expected_id, expected_prev = row_id + 1, last_hash
    return Report(True, checked, first_id, last_id, last_hash)


def _check(row_id: int, group: list[dict], expected_id: int, expected_prev: str) -> Break | None:
    if row_id > expected_id:
        missing = f"{expected_id}" if row_id - expected_id == 1 else f"{expected_id}..{row_id - 1}"
        return Break("missing", expected_id, f"row(s) {missing} missing before row {row_id}")
    if row_id < expected_id or len(group) > 1:
        return Break("inserted", row_id,
                     f"row {row_id} appears {len(group) + (row_id < expected_id)} times: "
                     "a row was inserted outside the audit writer")
    row = group[0]
    if row_hash(row) != row["hash"]:
        return Break("altered", row_id, f"row {row_id}: content does not match its hash "
                     "(the row was altered)")
    if row["prev_hash"] != expected_prev:
        return Break("broken_link", row_id,
                     f"row {row_id} does not link to the row before it (a row was inserted, "
                     "replaced or removed there)")
    return None


# ---- the live table ------------------------------------------------------------------

def _archived_anchor() -> tuple[int, str]:
    """(next id, prev hash) where the live chain must start after the archived months."""
    last = db.session.execute(
        select(AuditArchive.last_id, AuditArchive.last_hash)
        .where(AuditArchive.last_id.is_not(None))
        .order_by(AuditArchive.last_id.desc()).limit(1)).first()
    return (last.last_id + 1, last.last_hash) if last else (1, GENESIS_HASH)


def _archive_recorded(last_id: int, last_hash: str) -> bool:
    """Whether the live chain holds the `audit.archive` row of the archive ending at
    `last_id` with `last_hash`. The archiver writes that row (hash-linked like any other)
    after the months it archives, so the newest archive's row is always live; an entry
    added to the register by hand has none."""
    metas = db.session.scalars(select(AuditLog.meta).where(AuditLog.action == "audit.archive"))
    for meta in metas:
        details = json.loads(meta or "{}")
        if details.get("last_id") == last_id and details.get("last_hash") == last_hash:
            return True
    return False


def _anchor_before(first_id: int) -> tuple[str | None, str]:
    """The hash the row `first_id` must link to, and where it came from."""
    row = db.session.execute(
        select(AuditLog.hash).where(AuditLog.id == first_id - 1)).first()
    if row is not None:
        return row.hash, f"row {first_id - 1}"
    archived = db.session.execute(
        select(AuditArchive.last_hash).where(AuditArchive.last_id == first_id - 1)).first()
    if archived is not None:
        return archived.last_hash, "the archive ending at it"
    if first_id == 1:
        return GENESIS_HASH, "the start of the chain"
    return None, f"row {first_id - 1}"


def count_rows(since: datetime | None = None) -> int:
    query = select(func.count()).select_from(AuditLog)
    if since is not None:
        query = query.where(AuditLog.created_at >= since)
    return db.session.scalar(query)


def stream_rows(since: datetime | None = None, *, batch: int = 5000) -> Iterator[dict]:
    query = select(*_COLUMNS).order_by(AuditLog.id, AuditLog.created_at)
    if since is not None:
        query = query.where(AuditLog.created_at >= since)
    result = db.session.execute(query.execution_options(stream_results=True, yield_per=batch))
    names = [column.name for column in _COLUMNS]
    for row in result:
        yield dict(zip(names, row, strict=True))


def verify_chain(*, since: datetime | None = None, progress: Progress | None = None) -> Report:
    """Verify the live table from its start (linked to the archives), or from `since`,
    and its end against the chain-head witness."""
    # The witness first: rows written after this read may show in the walk (they follow
    # the witnessed row), but every row up to it is already committed and must be there.
    witness = head.read()
    rows = stream_rows(since)
    if since is None:
        expected_id, expected_prev = _archived_anchor()
        if expected_id > 1 and not _archive_recorded(expected_id - 1, expected_prev):
            return Report(False, 0, None, None, None, Break(
                "missing", expected_id - 1,
                f"the archive register's entry ending at row {expected_id - 1} is not "
                "recorded in the chain (no audit.archive row names it): the rows up to it "
                "were removed outside the archiver"))
        report = walk(rows, expected_id=expected_id, expected_prev=expected_prev,
                      progress=progress)
        return _check_head(report, witness, end_id=expected_id - 1)
    first = next(rows, None)
    if first is None:
        return _check_head(Report(True, 0, None, None, None), witness, end_id=_live_end())
    anchor, where = _anchor_before(first["id"])
    if anchor is None:
        return Report(False, 0, first["id"], None, None, Break(
            "missing", first["id"] - 1, f"{where}, which row {first['id']} links to, is missing"))
    report = walk(itertools.chain([first], rows), expected_id=first["id"], expected_prev=anchor,
                  progress=progress)
    return _check_head(report, witness, end_id=first["id"] - 1)


def _live_end() -> int:
    """The id of the chain's last row: the newest live row, else the archives' end."""
    newest = db.session.scalar(select(func.max(AuditLog.id)))
    return newest if newest is not None else _archived_anchor()[0] - 1


def _check_head(report: Report, witness: head.Head | None, *, end_id: int) -> Report:
    """A chain that verified must reach the witnessed row, hold it unchanged, and end
    there or at a row the writer has witnessed since.

    `end_id` is where the chain ends when the walk saw no row. `witness` was read before
    the walk; it is read again after it, since rows may have been written meanwhile: the
    writer moves the witness in each row's own transaction, so any row the walk saw and
    the witness read now does not cover was added outside the writer.
    """
    if not report.ok or witness is None:
        return report
    now = head.read()
    if report.last_id is not None and now is not None and report.last_id > now.id:
        extra = f"{now.id + 1}" if report.last_id == now.id + 1 else f"{now.id + 1}..{report.last_id}"
        report.ok = False
        report.problem = Break("inserted", now.id + 1,
                               f"row(s) {extra} follow row {now.id}, the last one the "
                               "chain-head witness records: added outside the audit writer")
        return report
    end = report.last_id if report.last_id is not None else end_id
    if end < witness.id:
        missing = f"{end + 1}" if witness.id == end + 1 else f"{end + 1}..{witness.id}"
        report.ok = False
        report.problem = Break("missing", end + 1,
                               f"row(s) {missing} missing at the end of the chain: the "
                               f"chain-head witness records row {witness.id} as written")
        return report
    if _hash_of(witness.id) not in (witness.hash, None):
        report.ok = False
        report.problem = Break("altered", witness.id,
                               f"row {witness.id} is not the row the chain-head witness "
                               "records (the end of the chain was rewritten)")
    return report


def _hash_of(row_id: int) -> str | None:
    """The hash of row `row_id` (live, or the end of an archive), None if not found."""
    if row_id == 0:
        return GENESIS_HASH
    found = db.session.scalar(select(AuditLog.hash).where(AuditLog.id == row_id).limit(1))
    return found or db.session.scalar(
        select(AuditArchive.last_hash).where(AuditArchive.last_id == row_id))


# ---- archive files -------------------------------------------------------------------

def read_archive(path: str) -> tuple[dict, Iterator[dict]]:
    """The header of an archive file and an iterator over its rows."""
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        header = json.loads(handle.readline() or "null")
    if not isinstance(header, dict) or header.get("format") != ARCHIVE_FORMAT:
        raise ValueError(f"{path} is not an audit archive ({ARCHIVE_FORMAT})")

    def rows() -> Iterator[dict]:
        with gzip.open(path, "rt", encoding="utf-8") as handle:
            handle.readline()
            for line in handle:
                if line.strip():
                    yield json.loads(line)
    return header, rows()


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_archive(path: str, *, progress: Progress | None = None) -> Report:
    """Verify an archive on its own: every row's hash and link, and the header's counts
    and end hashes. When the archive is in `audit_archives`, the file's SHA-256 and end
    hashes must match that register too."""
    try:
        header, rows = read_archive(path)
    except (OSError, ValueError, EOFError) as exc:
        return Report(False, 0, None, None, None, Break("unreadable", 0, str(exc)))
    try:
        report = walk(rows, expected_id=header["first_id"] or 1,
                      expected_prev=header["first_prev_hash"] or GENESIS_HASH, progress=progress)
    except (OSError, ValueError, EOFError, KeyError) as exc:
        return Report(False, 0, None, None, None, Break("unreadable", 0, f"{path}: {exc}"))
    if not report.ok:
        return report
    expected = (header["row_count"], header["last_id"], header["last_hash"])
    if (report.checked, report.last_id, report.last_hash) != expected:
        report.ok = False
        report.problem = Break("missing", report.last_id or 0,
                               f"the file holds {report.checked} rows up to {report.last_id}; "
                               f"its header says {expected[0]} up to {expected[1]}")
        return report
    registered = db.session.scalar(select(AuditArchive).where(
        AuditArchive.month == header["month"]))
    if registered is not None and (registered.file_sha256, registered.last_hash) != (
            file_sha256(path), header["last_hash"]):
        report.ok = False
        report.problem = Break("altered", report.last_id or 0,
                               f"the file differs from the archive registered for {header['month']}")
    return report
