"""The relay: hands the broker every stored event it does not have.

Four kinds of rows are outstanding without a message on the way: `received` rows whose
publish failed (broker down at intake), `queued` rows whose message was lost (a broker
restart that kept nothing), `processing` rows whose lease expired (a worker killed
mid-task, whose unacknowledged message Redis would only return after its visibility
timeout), and `queued` rows waiting for a retry whose lease expired (the worker holding
the delayed retry message died). Oldest first; it stops at the first refused publish.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from datetime import timedelta

import redis
from flask import current_app
from sqlalchemy import and_, or_, select, update

from service.clock import utcnow
from service.extensions import db
from service.queues.depth import oldest_wait_seconds
from service.queues.publishing import BROKER_DOWN, SENT, room
from service.webhooks.models import EventStatus, WebhookEvent
from service.webhooks.queueing import mark_unpublished, publish_lease, send_event

log = logging.getLogger(__name__)


@dataclass
class RelayReport:
    found: int = 0
    enqueued: int = 0
    broker_down: bool = False

    def as_dict(self) -> dict:
        return asdict(self)


def outstanding_filter(now, horizon):
    """Rows that have no message on the way. `horizon`: see `queue_horizon`."""
    cfg = current_app.config
    received_before = now - timedelta(seconds=cfg["RELAY_MIN_AGE_SECONDS"])
    queued_before = now - timedelta(seconds=cfg["RELAY_QUEUED_STALE_SECONDS"])
    return or_(
        and_(WebhookEvent.status == EventStatus.RECEIVED,
             WebhookEvent.received_at <= received_before),
        and_(WebhookEvent.status == EventStatus.QUEUED, WebhookEvent.queued_at <= queued_before,
             WebhookEvent.queued_at < horizon),
        # Waiting for a retry whose message was held by a worker that died, or stored by
        # a process that died before it published: queued with an expired lease.
        and_(WebhookEvent.status == EventStatus.QUEUED, WebhookEvent.lease_expires_at < now,
             WebhookEvent.queued_at < horizon),
        and_(WebhookEvent.status == EventStatus.PROCESSING, WebhookEvent.lease_expires_at < now),
    )


def queue_horizon(now):
    """Rows queued after the oldest message still waiting may still have theirs in the queue.

    The queue is first in, first out: a row queued before its oldest waiting message was
    taken off it already (or never put on). So an expired lease alone never republishes
    an event that is merely waiting behind a deep queue.
    """
    wait = oldest_wait_seconds(current_app.extensions["redis"], "webhooks")
    return now if wait is None else now - timedelta(seconds=wait)


def relay_pending(*, limit: int | None = None) -> RelayReport:
    """Publish outstanding events, oldest first, as far as the queue has room."""
    now = utcnow()
    available = room("webhooks")
    if available is None:
        return RelayReport(broker_down=True)
    try:
        horizon = queue_horizon(now)
    except redis.RedisError:
        return RelayReport(broker_down=True)
    limit = min(limit or current_app.config["RELAY_BATCH_SIZE"], available)
    if limit <= 0:
        return RelayReport()
    rows = db.session.execute(
        select(WebhookEvent.id, WebhookEvent.status)
        .where(outstanding_filter(now, horizon))
        .order_by(WebhookEvent.received_at, WebhookEvent.id)
        .limit(limit)
    ).all()
    db.session.rollback()
    report = RelayReport(found=len(rows))
    for event_pk, status in rows:
        if not _requeue(event_pk, status, now, horizon):
            continue
        # Room is checked on every publish: intake publishes during the pass as well.
        outcome = send_event(event_pk)
        if outcome != SENT:
            report.broker_down = outcome == BROKER_DOWN
            mark_unpublished(event_pk)
            break
        report.enqueued += 1
    if report.broker_down:
        log.warning("relay pass stopped: broker unavailable",
                    extra={"count": report.enqueued, "outcome": "broker_down"})
    elif report.enqueued:
        log.info("relay published stored events", extra={"count": report.enqueued})
    return report


def _requeue(event_pk: int, status: str, now, horizon) -> bool:
    """Mark the row queued before publishing, guarded on the state it was found in.

    Taking an expired lease away here means a worker that somehow still runs cannot
    commit its result: its final UPDATE checks the lease token. Commits on its own, on
    purpose: the row must be `queued` before its message exists, and no publish happens
    inside a transaction.
    """
    changed = db.session.execute(
        update(WebhookEvent)
        .where(WebhookEvent.id == event_pk, WebhookEvent.status == status,
               outstanding_filter(now, horizon))
        .values(status=EventStatus.QUEUED, queued_at=now, lease_token=None,
                lease_expires_at=publish_lease(now))
    ).rowcount
    db.session.commit()
    return bool(changed)

