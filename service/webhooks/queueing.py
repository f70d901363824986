"""Publishing events to the broker: the one place that may find the broker down."""

from __future__ import annotations

from sqlalchemy import update

from service.extensions import db
from service.queues.publishing import publish, send
from service.webhooks.models import EventStatus, WebhookEvent


def send_event(event_pk: int) -> str:
    """Like `publish_event`, telling SENT, FULL and BROKER_DOWN apart (for the relay)."""
    return send("webhooks.process_event", [event_pk], queue="webhooks")


def publish_event(event_pk: int) -> bool:
    """Send `webhooks.process_event` for a stored event; False when it was not sent.

    Never raises: the event is already durable, and the relay enqueues whatever this
    could not (broker down, or the queue at its depth bound).
    """
    return publish("webhooks.process_event", [event_pk], queue="webhooks")


def mark_unpublished(event_pk: int) -> None:
    """Put a queued row whose publish failed back to `received`, for the relay's next pass."""
    db.session.execute(
        update(WebhookEvent)
        .where(WebhookEvent.id == event_pk, WebhookEvent.status == EventStatus.QUEUED)
        .values(status=EventStatus.RECEIVED, queued_at=None, lease_expires_at=None)
    )
    db.session.commit()
