"""The transactional outbox: jobs become real with the commit that caused them.

A domain service adds a job to the current transaction with `add_job`; after the commit
the caller publishes the session's new jobs with `publish_added` (bounded by queue
depth). Whatever is not published then (broker down, queue full, process died) is
published by the relay, oldest first, as room appears.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, func, select, update

from service.db_types import utcnow
from service.extensions import db
from service.queues.models import OutboxJob
from service.queues.publishing import publish, room

log = logging.getLogger(__name__)

_SESSION_KEY = "racine_outbox_new"
PUBLISHED_RETENTION = timedelta(days=1)


def add_job(task_name: str, args: list, *, queue: str, available_at: datetime | None = None,
            retries: int = 0, publish_now: bool = True) -> OutboxJob:
    """Add a job to the current transaction.

    With `publish_now`, the caller publishes it right after the commit (`publish_added`);
    otherwise, and in any case if that fails, the relay publishes it once `available_at`
    has come and its queue has room.
    """
    job = OutboxJob(task_name=task_name, queue=queue, args=json.dumps(args), status="pending",
                    available_at=available_at or utcnow(), retries=retries)
    db.session.add(job)
    if publish_now:
        db.session.info.setdefault(_SESSION_KEY, []).append(job)
    return job


def discard_added() -> None:
    """Forget jobs of a transaction that was rolled back."""
    db.session.info.pop(_SESSION_KEY, None)


def publish_added() -> int:
    """Publish the jobs added in the transaction just committed; returns how many went."""
    jobs = db.session.info.pop(_SESSION_KEY, [])
    ids = [job.id for job in jobs if job.id is not None]
    return _publish_ids(ids) if ids else 0


@dataclass
class OutboxReport:
    published: int = 0
    waiting: int = 0
    purged: int = 0

    def as_dict(self) -> dict:
        return asdict(self)


def relay_outbox(*, batch: int = 500) -> OutboxReport:
    """Publish pending jobs oldest first, per queue as far as it has room."""
    now = utcnow()
    report = OutboxReport()
    queues = db.session.scalars(
        select(OutboxJob.queue).where(OutboxJob.status == "pending",
                                      OutboxJob.available_at <= now).distinct()
    ).all()
    for queue in queues:
        available = room(queue)
        if not available:
            continue
        ids = db.session.scalars(
            select(OutboxJob.id)
            .where(OutboxJob.status == "pending", OutboxJob.queue == queue,
                   OutboxJob.available_at <= now)
            .order_by(OutboxJob.id).limit(min(batch, available))
        ).all()
        report.published += _publish_ids(list(ids))
    report.purged = db.session.execute(
        delete(OutboxJob).where(OutboxJob.status == "published",
                                OutboxJob.published_at < now - PUBLISHED_RETENTION)
    ).rowcount or 0
    report.waiting = db.session.scalar(
        select(func.count()).select_from(OutboxJob).where(OutboxJob.status == "pending"))
    db.session.commit()
    return report


def _publish_ids(ids: list[int]) -> int:
    """Publish jobs by id; mark each published only after the broker took it."""
    published = 0
    jobs = db.session.scalars(select(OutboxJob).where(OutboxJob.id.in_(ids),
                                                      OutboxJob.status == "pending")
                              .order_by(OutboxJob.id)).all()
    for job in jobs:
        # Room is checked on every publish: other publishers share the queue.
        if not publish(job.task_name, json.loads(job.args), queue=job.queue,
                       retries=job.retries):
            break
        db.session.execute(update(OutboxJob).where(OutboxJob.id == job.id)
                           .values(status="published", published_at=utcnow()))
        published += 1
    db.session.commit()
    return published
