"""Jobs waiting to be published (the outbox) and the record of slow jobs."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from service.clock import iso, utcnow
from service.db_types import BigId
from service.extensions import db


class OutboxJob(db.Model):
    """A job created inside a domain transaction, published to its queue after the commit.

    It stays here, `pending`, while its queue is at its depth bound or the broker is
    down; the relay publishes pending jobs oldest first once there is room.
    """

    __tablename__ = "outbox_jobs"
    __table_args__ = (Index("ix_outbox_jobs_status_available_at", "status", "available_at"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    task_name: Mapped[str] = mapped_column(String(128))
    queue: Mapped[str] = mapped_column(String(32))
    args: Mapped[str] = mapped_column(Text, default="[]")  # JSON list of plain values
    status: Mapped[str] = mapped_column(String(16), default="pending")  # pending | published
    retries: Mapped[int] = mapped_column(default=0)  # kept across a rate-limit wait
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    available_at: Mapped[datetime] = mapped_column(default=utcnow)
    published_at: Mapped[datetime | None]


class SlowJob(db.Model):
    __tablename__ = "slow_jobs"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    task_name: Mapped[str] = mapped_column(String(128), index=True)
    task_id: Mapped[str] = mapped_column(String(64))
    queue: Mapped[str | None] = mapped_column(String(32))
    runtime_seconds: Mapped[float]
    threshold_seconds: Mapped[float]
    worker: Mapped[str | None] = mapped_column(String(255))
    started_at: Mapped[datetime]
    args_summary: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)

    def to_dict(self) -> dict:
        return {
            "id": self.id, "task_name": self.task_name, "task_id": self.task_id,
            "queue": self.queue, "runtime_seconds": round(self.runtime_seconds, 3),
            "threshold_seconds": self.threshold_seconds, "worker": self.worker,
            "started_at": iso(self.started_at), "args_summary": self.args_summary,
        }


class QueueSample(db.Model):
    """One queue's state at one minute: what the runbooks chart and the admin pages show.

    Beat records a sample per queue every minute; samples older than
    QUEUE_SAMPLE_RETENTION_DAYS are deleted by the same task.
    """

    __tablename__ = "queue_samples"
    __table_args__ = (Index("ix_queue_samples_queue_sampled_at", "queue", "sampled_at"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    queue: Mapped[str] = mapped_column(String(32))
    sampled_at: Mapped[datetime] = mapped_column(index=True)
    depth: Mapped[int]
    oldest_wait_seconds: Mapped[float | None]  # None when the queue was empty
    jobs_per_minute: Mapped[float]  # jobs finished in the last whole minute

    def to_dict(self) -> dict:
        return {"queue": self.queue, "sampled_at": iso(self.sampled_at), "depth": self.depth,
                "oldest_wait_seconds": self.oldest_wait_seconds,
                "jobs_per_minute": self.jobs_per_minute}
