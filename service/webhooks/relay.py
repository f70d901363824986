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

from flask import current_app
from sqlalchemy import and_, or_, select, update

from service.db_types import utcnow
from service.extensions import db
from service.queues.publishing import BROKER_DOWN, SENT, room
from service.webhooks.models import EventStatus, WebhookEvent
from service.webhooks.queueing import mark_unpublished, send_event

log = logging.getLogger(__name__)


@dataclass
class RelayReport:
    found: int = 0
    enqueued: int = 0
    broker_down: bool = False

    def as_dict(self) -> dict:
        return asdict(self)


def outstanding_filter(now):
    cfg = current_app.config
    received_before = now - timedelta(seconds=cfg["RELAY_MIN_AGE_SECONDS"])
    queued_before = now - timedelta(seconds=cfg["RELAY_QUEUED_STALE_SECONDS"])
    return or_(
        and_(WebhookEvent.status == EventStatus.RECEIVED,
             WebhookEvent.received_at <= received_before),
        and_(WebhookEvent.status == EventStatus.QUEUED, WebhookEvent.queued_at <= queued_before),
        # Processing, or waiting for a retry whose message was held by a worker that died.
        and_(WebhookEvent.status.in_((EventStatus.PROCESSING, EventStatus.QUEUED)),
             WebhookEvent.lease_expires_at < now),
    )


def relay_pending(*, limit: int | None = None) -> RelayReport:
    """Publish outstanding events, oldest first, as far as the queue has room."""
    now = utcnow()
    available = room("webhooks")
    if available is None:
        return RelayReport(broker_down=True)
    limit = min(limit or current_app.config["RELAY_BATCH_SIZE"], available)
    if limit <= 0:
        return RelayReport()
    rows = db.session.execute(
        select(WebhookEvent.id, WebhookEvent.status)
        .where(outstanding_filter(now))
        .order_by(WebhookEvent.received_at, WebhookEvent.id)
        .limit(limit)
    ).all()
    db.session.rollback()
    report = RelayReport(found=len(rows))
    for event_pk, status in rows:
        if not _requeue(event_pk, status, now):
            continue
        # Room is checked on every publish: intake publishes during the pass as well.
        outcome = send_event(event_pk)
        if outcome != SENT:
            report.broker_down = outcome == BROKER_DOWN
            mark_unpublished(event_pk)
            break
        report.enqueued += 1
    if report.found:
        log.info("relay pass", extra={"count": report.enqueued, "outcome":
                                      "broker_down" if report.broker_down else "ok"})
    return report


def _requeue(event_pk: int, status: str, now) -> bool:
    """Mark the row queued before publishing, guarded on the state it was found in.

    Taking an expired lease away here means a worker that somehow still runs cannot
    commit its result: its final UPDATE checks the lease token.
    """
    changed = db.session.execute(
        update(WebhookEvent)
        .where(WebhookEvent.id == event_pk, WebhookEvent.status == status,
               outstanding_filter(now))
        .values(status=EventStatus.QUEUED, queued_at=now, lease_token=None,
                lease_expires_at=None)
    ).rowcount
    db.session.commit()
    return bool(changed)

