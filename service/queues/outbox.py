"""The transactional outbox: jobs become real with the commit that caused them.

A domain service adds jobs to the current transaction with `add_jobs`; they exist only
if that transaction commits. The relay (a beat task) publishes pending jobs oldest
first, as far as each queue has room, and for a rate-limited queue no more than its
window lets run now (what waits already in the queue counted): a job published past the
limit would only be put back in the outbox by its task, a round trip per job for
nothing. A job the broker could not take (down, full) simply stays pending for the next
pass.
"""

from __future__ import annotations

import functools
import json
import logging
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta

import redis
from flask import current_app
from sqlalchemy import DateTime, delete, func, select, update

from service import fastsql
from service.clock import utcnow
from service.extensions import db
from service.queues import ratelimit
from service.queues.depth import depth
from service.queues.models import OutboxJob
from service.queues.publishing import publish, room

log = logging.getLogger(__name__)

PUBLISHED_RETENTION = timedelta(days=1)


def add_jobs(jobs: list[tuple[str, list]], *, queue: str, available_at: datetime | None = None,
             retries: int = 0) -> None:
    """Add (task name, args) jobs to the current transaction, in one statement.

    They become real with the caller's commit; the relay publishes them once
    `available_at` (default now) has come and `queue` has room.
    """
    now = utcnow()
    fastsql.run(_insert_jobs(len(jobs)), {
        **{f"task_{n}": task_name for n, (task_name, _) in enumerate(jobs)},
        **{f"args_{n}": json.dumps(args) for n, (_, args) in enumerate(jobs)},
        "queue": queue, "retries": retries, "now": now, "available_at": available_at or now,
    })


@functools.cache
def _insert_jobs(count: int) -> fastsql.Statement:
    rows = ", ".join(f"(:task_{n}, :queue, :args_{n}, 'pending', :retries, :now, :available_at)"
                     for n in range(count))
    return fastsql.Statement(
        "INSERT INTO outbox_jobs (task_name, queue, args, status, retries, created_at,"
        f" available_at) VALUES {rows}", now=DateTime(), available_at=DateTime())


@dataclass
class OutboxReport:
    published: int = 0
    waiting: int = 0
    purged: int = 0

    def as_dict(self) -> dict:
        return asdict(self)


def relay_outbox(*, batch: int = 500) -> OutboxReport:
    """Publish pending jobs oldest first, per queue as far as it has room, and purge old
    published rows (committed by the caller)."""
    now = utcnow()
    report = OutboxReport()
    queues = db.session.scalars(
        select(OutboxJob.queue).where(OutboxJob.status == "pending",
                                      OutboxJob.available_at <= now).distinct()
    ).all()
    for queue in queues:
        available = _allowed(queue)
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
    if report.published or report.purged:
        log.info("outbox relay published jobs", extra={
            "count": report.published, "reason": f"{report.purged} purged, "
                                                f"{report.waiting} waiting"})
    return report


def _allowed(queue: str) -> int | None:
    """Jobs that may be published to `queue` now: its room, and its rate limit's."""
    available = room(queue)
    limit = ratelimit.rate_limit_of(queue)
    if not available or limit is None:
        return available
    window = current_app.extensions["rate_limiter"].state(*limit)["remaining"]
    if window is None:
        return available
    try:
        waiting = depth(current_app.extensions["redis"], queue)
    except redis.RedisError:
        return None
    return max(0, min(available, window - waiting))


def _publish_ids(ids: list[int]) -> int:
    """Publish jobs by id, oldest first; marked published only after the broker took them."""
    rows = db.session.execute(
        select(OutboxJob.id, OutboxJob.task_name, OutboxJob.args, OutboxJob.queue,
               OutboxJob.retries)
        .where(OutboxJob.id.in_(ids), OutboxJob.status == "pending").order_by(OutboxJob.id)
    ).all()
    db.session.rollback()
    return _send_all([tuple(row) for row in rows])


def _send_all(jobs: list[tuple]) -> int:
    """Send (id, task, args JSON, queue, retries) in order until one is refused.

    Commits on its own, on purpose: jobs the broker took are marked published at once,
    so a failure later in the pass cannot roll the mark back and publish them twice.
    """
    sent = []
    for job_id, task_name, args, queue, retries in jobs:
        # Room is checked on every publish: other publishers share the queue.
        if not publish(task_name, json.loads(args), queue=queue, retries=retries):
            break
        sent.append(job_id)
    if sent:
        db.session.execute(update(OutboxJob).where(OutboxJob.id.in_(sent))
                           .values(status="published", published_at=utcnow()))
        db.session.commit()
    return len(sent)
