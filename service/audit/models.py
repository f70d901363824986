"""The audit trail (`audit_logs`) and the register of archived months (`audit_archives`).

`audit_logs` is append-only: database triggers refuse UPDATE, DELETE (and TRUNCATE on
PostgreSQL), where it is partitioned by month on `created_at`; the primary key therefore
includes `created_at`. `id` is the chain position, assigned by the one writer
(`services.record`) under the chain lock: 1, 2, 3... with no gaps, so a missing row shows.
"""

from __future__ import annotations

import json
from datetime import datetime

from sqlalchemy import BigInteger, CheckConstraint, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from service.audit.chain import format_time
from service.clock import utcnow
from service.db_types import BigId
from service.extensions import db


class AuditLog(db.Model):
    __tablename__ = "audit_logs"
    __table_args__ = (
        Index("ix_audit_logs_entity_type_entity_id", "entity_type", "entity_id"),
        Index("ix_audit_logs_created_at", "created_at"),
        Index("ix_audit_logs_actor", "actor"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    created_at: Mapped[datetime] = mapped_column(primary_key=True, default=utcnow)
    action: Mapped[str] = mapped_column(String(64))
    entity_type: Mapped[str] = mapped_column(String(64))
    entity_id: Mapped[str] = mapped_column(String(64))
    user_id: Mapped[int | None] = mapped_column(BigInteger)
    actor: Mapped[str] = mapped_column(String(255))
    token_prefix: Mapped[str | None] = mapped_column(String(16))
    ip_address: Mapped[str | None] = mapped_column(String(45))
    user_agent: Mapped[str | None] = mapped_column(String(512))
    request_id: Mapped[str | None] = mapped_column(String(64))
    reason: Mapped[str | None] = mapped_column(Text)
    # JSON: {"before": ..., "after": ..., and any details}. "metadata" is the seed's name.
    meta: Mapped[str] = mapped_column("metadata", Text)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))

    def to_dict(self) -> dict:
        meta = json.loads(self.meta)
        return {
            "id": self.id, "created_at": format_time(self.created_at), "action": self.action,
            "entity_type": self.entity_type, "entity_id": self.entity_id,
            "user_id": self.user_id, "actor": self.actor, "token_prefix": self.token_prefix,
            "ip_address": self.ip_address, "user_agent": self.user_agent,
            "request_id": self.request_id, "reason": self.reason,
            "before": meta.get("before"), "after": meta.get("after"), "metadata": meta,
            "prev_hash": self.prev_hash, "hash": self.hash,
        }


class AuditArchive(db.Model):
    """One archived month: where its file is, and the chain hashes at both its ends.

    The live chain's first row links to the newest archive's `last_hash`, so a verify
    after archiving still proves nothing was lost in between. Append-only too.
    """

    __tablename__ = "audit_archives"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    month: Mapped[str] = mapped_column(String(7), unique=True)  # YYYY-MM
    path: Mapped[str] = mapped_column(String(1024))
    file_sha256: Mapped[str] = mapped_column(String(64))
    row_count: Mapped[int] = mapped_column(Integer)
    first_id: Mapped[int | None] = mapped_column(BigInteger)
    last_id: Mapped[int | None] = mapped_column(BigInteger)
    first_prev_hash: Mapped[str | None] = mapped_column(String(64))
    last_hash: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    def to_dict(self) -> dict:
        return {"month": self.month, "path": self.path, "file_sha256": self.file_sha256,
                "row_count": self.row_count, "first_id": self.first_id,
                "last_id": self.last_id, "first_prev_hash": self.first_prev_hash,
                "last_hash": self.last_hash, "created_at": format_time(self.created_at)}


class AuditChainHead(db.Model):
    """The chain-head witness: one row holding the id and hash of the newest row written.

    The writer moves it in the same transaction as each row (under the chain lock), and
    triggers let it only move forward: no DELETE, no UPDATE to an earlier id. A hash
    chain alone cannot show rows removed from its end (the next write would link to the
    new last row); `verify` compares the chain's end with this row instead.
    """

    __tablename__ = "audit_chain_head"
    __table_args__ = (CheckConstraint("id = 1", name="one_row"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False, default=1)
    last_id: Mapped[int] = mapped_column(BigInteger)
    last_hash: Mapped[str] = mapped_column(String(64))
    # created_at of that row, so the next row's time never falls before it; None when the
    # head is the end of an archive (whose rows' times the register does not keep).
    last_created_at: Mapped[datetime | None] = mapped_column()
