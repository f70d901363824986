"""Signals: symptoms raised by any domain, for the escalation policy to turn into incidents."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from service.clock import iso, utcnow
from service.db_types import BigId
from service.extensions import db


class AlertSignal(db.Model):
    __tablename__ = "alert_signals"
    __table_args__ = (Index("ix_alert_signals_consumed_at_created_at", "consumed_at", "created_at"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    severity: Mapped[str] = mapped_column(String(4))  # P0 .. P3
    kind: Mapped[str] = mapped_column(String(64), index=True)  # e.g. slow_job, webhook_failure
    source: Mapped[str] = mapped_column(String(255))  # what raised it: a task name, an event
    details: Mapped[str] = mapped_column(Text, default="{}")  # JSON, no personal data
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    consumed_at: Mapped[datetime | None]

    def to_dict(self) -> dict:
        return {"id": self.id, "severity": self.severity, "kind": self.kind,
                "source": self.source, "details": self.details,
                "created_at": iso(self.created_at)}
