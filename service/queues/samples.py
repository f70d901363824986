"""Queue samples: each queue's depth, oldest wait and throughput, once a minute.

Beat records one row per queue every QUEUE_SAMPLE_INTERVAL_SECONDS (a minute by
default) and deletes the rows older than QUEUE_SAMPLE_RETENTION_DAYS in the same run, so
the table stays small (a few thousand rows per queue). The queue-overload runbook charts
them; `samples` reads them back.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta

from flask import current_app
from sqlalchemy import delete, select

from service.celery_app import queues
from service.clock import utcnow
from service.extensions import db
from service.queues.depth import depths, oldest_wait_seconds
from service.queues.hooks import DONE_KEY
from service.queues.models import QueueSample


@dataclass
class SampleRun:
    sampled_at: str
    recorded: int  # rows added (0 when this minute was already sampled)
    deleted: int  # rows past the retention

    def as_dict(self) -> dict:
        return asdict(self)


def record_samples(*, now: datetime | None = None) -> SampleRun:
    """Add one sample per declared queue for the current minute, and delete old ones;
    the caller commits. A second call within the same minute adds nothing."""
    app = current_app
    client = app.extensions["redis"]
    now = now or utcnow()
    minute = now.replace(second=0, microsecond=0)
    names = list(queues(app))
    already = set(db.session.scalars(select(QueueSample.queue).where(
        QueueSample.sampled_at == minute)))
    wanted = [name for name in names if name not in already]
    recorded = 0
    if wanted:
        wall = time.time()
        # Throughput of the last whole minute: the current one is still counting.
        last_minute = int(wall // 60) - 1
        pipe = client.pipeline(transaction=False)
        for name in wanted:
            pipe.get(DONE_KEY.format(queue=name, minute=last_minute))
        done = pipe.execute()
        queue_depths = depths(client, wanted)
        for name, finished in zip(wanted, done, strict=True):
            wait = oldest_wait_seconds(client, name, now=wall)
            db.session.add(QueueSample(
                queue=name, sampled_at=minute, depth=queue_depths[name],
                oldest_wait_seconds=None if wait is None else round(wait, 1),
                jobs_per_minute=float(int(finished or 0))))
            recorded += 1
    cutoff = now - timedelta(days=app.config["QUEUE_SAMPLE_RETENTION_DAYS"])
    deleted = db.session.execute(delete(QueueSample).where(QueueSample.sampled_at < cutoff)
                                 .execution_options(synchronize_session=False)).rowcount
    return SampleRun(sampled_at=minute.isoformat() + "Z", recorded=recorded,
                     deleted=max(deleted or 0, 0))


def samples(*, since: datetime, until: datetime | None = None,
            queue: str | None = None) -> list[dict]:
    """Samples in the window, oldest first (one queue, or every queue)."""
    query = select(QueueSample).where(QueueSample.sampled_at >= since)
    if until is not None:
        query = query.where(QueueSample.sampled_at <= until)
    if queue is not None:
        query = query.where(QueueSample.queue == queue)
    return [s.to_dict() for s in db.session.scalars(
        query.order_by(QueueSample.sampled_at, QueueSample.queue))]
