"""The record of every ERP stock sync run, and the durable pause flag.

- `erp_sync_runs`: one row per sync (a beat run, `flask erp sync`, the admin API, a
  runbook), kept across its retries: started, finished, status, what it fetched and
  applied, the SKUs the ERP knows and we do not, and the high-water mark the next
  incremental sync starts from.
- `erp_sync_state`: a single row (id 1) holding the pause flag, so a pause survives
  restarts and is seen by every worker and beat.
"""

from __future__ import annotations

import json
from datetime import datetime

from sqlalchemy import Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from service.clock import iso, utcnow
from service.db_types import BigId
from service.extensions import db


class RunStatus:
    RUNNING = "running"  # fetching or applying, or waiting for its next retry
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"  # paused, or another sync was running

    ALL = (RUNNING, SUCCEEDED, FAILED, SKIPPED)
    FINISHED = (SUCCEEDED, FAILED, SKIPPED)


class Trigger:
    BEAT = "beat"
    CLI = "cli"
    API = "api"
    RUNBOOK = "runbook"

    ALL = (BEAT, CLI, API, RUNBOOK)


# At most this many unknown SKUs are listed on a run (all of them are counted).
UNKNOWN_SKUS_LISTED = 50


class ErpSyncRun(db.Model):
    __tablename__ = "erp_sync_runs"
    __table_args__ = (Index("ix_erp_sync_runs_status_started_at", "status", "started_at"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    started_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    finished_at: Mapped[datetime | None]
    status: Mapped[str] = mapped_column(String(16), default=RunStatus.RUNNING)
    trigger: Mapped[str] = mapped_column(String(16))
    actor: Mapped[str] = mapped_column(String(255))
    # The Celery task id: its retries continue this row instead of starting another.
    task_id: Mapped[str | None] = mapped_column(String(64), index=True)
    attempts: Mapped[int] = mapped_column(default=1)
    since: Mapped[datetime | None]  # what was asked of the ERP (None: everything)
    high_water_mark: Mapped[datetime | None]  # the newest updated_at fetched
    fetched: Mapped[int] = mapped_column(default=0)
    applied: Mapped[int] = mapped_column(default=0)
    unchanged: Mapped[int] = mapped_column(default=0)
    rejected: Mapped[int] = mapped_column(default=0)  # a quantity the stock rules refused
    unknown_skus: Mapped[int] = mapped_column(default=0)
    unknown_sku_list: Mapped[str] = mapped_column(Text, default="[]")  # JSON, capped
    pages: Mapped[int] = mapped_column(default=0)
    error: Mapped[str | None] = mapped_column(String(500))  # sanitised: no token, no body

    @property
    def unknown_sku_sample(self) -> list[str]:
        return json.loads(self.unknown_sku_list or "[]")

    def note_unknown(self, skus: list[str]) -> None:
        listed = self.unknown_sku_sample
        for sku in skus:
            if len(listed) >= UNKNOWN_SKUS_LISTED:
                break
            if sku not in listed:
                listed.append(sku)
        self.unknown_sku_list = json.dumps(listed)
        self.unknown_skus += len(skus)

    @property
    def duration_seconds(self) -> float | None:
        if self.finished_at is None:
            return None
        return round((self.finished_at - self.started_at).total_seconds(), 3)

    def to_dict(self) -> dict:
        return {
            "id": self.id, "status": self.status, "trigger": self.trigger, "actor": self.actor,
            "started_at": iso(self.started_at), "finished_at": iso(self.finished_at),
            "duration_seconds": self.duration_seconds, "attempts": self.attempts,
            "since": iso(self.since), "high_water_mark": iso(self.high_water_mark),
            "fetched": self.fetched, "applied": self.applied, "unchanged": self.unchanged,
            "rejected": self.rejected, "unknown_skus": self.unknown_skus,
            "unknown_sku_list": self.unknown_sku_sample, "pages": self.pages,
            "error": self.error,
        }


class ErpSyncState(db.Model):
    """The pause flag (a single row, id 1, made on first use)."""

    __tablename__ = "erp_sync_state"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    paused: Mapped[bool] = mapped_column(default=False)
    paused_at: Mapped[datetime | None]
    paused_by: Mapped[str | None] = mapped_column(String(255))
    reason: Mapped[str | None] = mapped_column(String(500))
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)

    def to_dict(self) -> dict:
        return {"paused": self.paused, "paused_at": iso(self.paused_at),
                "paused_by": self.paused_by, "reason": self.reason,
                "updated_at": iso(self.updated_at)}
