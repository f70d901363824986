"""Publishing events to the broker: the one place that may find the broker down."""

from __future__ import annotations

import logging

from flask import current_app
from sqlalchemy import update

from service.extensions import db
from service.webhooks.models import EventStatus, WebhookEvent

log = logging.getLogger(__name__)


def publish_event(event_pk: int) -> bool:
    """Send `webhooks.process_event` for a stored event; False when the broker refused.

    Never raises: the event is already durable, and the relay enqueues whatever this
    could not.
    """
    celery = current_app.extensions["celery"]
    try:
        celery.send_task("webhooks.process_event", args=[event_pk], queue="webhooks", retry=False)
    except Exception as exc:  # any broker failure leaves the event to the relay
        log.warning("broker unavailable, event left for the relay",
                    extra={"event_pk": event_pk, "error": type(exc).__name__})
        return False
    return True


def mark_unpublished(event_pk: int) -> None:
    """Put a queued row whose publish failed back to `received`, for the relay's next pass."""
    db.session.execute(
        update(WebhookEvent)
        .where(WebhookEvent.id == event_pk, WebhookEvent.status == EventStatus.QUEUED)
        .values(status=EventStatus.RECEIVED)
    )
    db.session.commit()
