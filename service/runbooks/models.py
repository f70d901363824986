"""Runbook runs: one row per `flask runbook run`, whatever became of it."""

from __future__ import annotations

import json
from datetime import datetime

from sqlalchemy import Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from service.clock import iso, utcnow
from service.db_types import BigId
from service.extensions import db


class RunStatus:
    RUNNING = "running"
    OK = "ok"  # nothing wrong found, or what was wrong was fixed
    PROBLEM = "problem"  # the diagnosis found a problem the run did not fix
    FAILED = "failed"  # a cell raised, or the kernel died: see `error` and the output notebook

    ALL = (RUNNING, OK, PROBLEM, FAILED)


class RunbookRun(db.Model):
    __tablename__ = "runbook_runs"
    __table_args__ = (Index("ix_runbook_runs_runbook_started_at", "runbook", "started_at"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    runbook: Mapped[str] = mapped_column(String(64))
    execute: Mapped[bool] = mapped_column(default=False)  # False: a dry run
    status: Mapped[str] = mapped_column(String(16), default=RunStatus.RUNNING)
    actor: Mapped[str] = mapped_column(String(255))
    parameters: Mapped[str] = mapped_column(Text, default="{}")  # JSON
    summary: Mapped[str | None] = mapped_column(Text)  # JSON, the notebook's last cell
    output_path: Mapped[str | None] = mapped_column(String(1024))
    html_path: Mapped[str | None] = mapped_column(String(1024))
    error: Mapped[str | None] = mapped_column(String(1000))
    started_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    finished_at: Mapped[datetime | None]

    def to_dict(self) -> dict:
        return {
            "id": self.id, "runbook": self.runbook, "execute": self.execute,
            "status": self.status, "actor": self.actor,
            "parameters": json.loads(self.parameters or "{}"),
            "summary": json.loads(self.summary) if self.summary else None,
            "output_path": self.output_path, "html_path": self.html_path, "error": self.error,
            "started_at": iso(self.started_at), "finished_at": iso(self.finished_at),
        }
