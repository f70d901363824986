"""Publishing events to the broker: the one place that may find the broker down."""

from __future__ import annotations

from datetime import datetime, timedelta

from flask import current_app
from sqlalchemy import update

from service.extensions import db
from service.queues.publishing import SENT, send
from service.webhooks.models import EventStatus, WebhookEvent

TASK = "webhooks.process_event"


def send_event(event_pk: int, *, also_set: tuple[str, str, int] | None = None) -> str:
    """Send `webhooks.process_event` for a stored event: SENT, FULL or BROKER_DOWN.

    Never raises: the event is already durable, and the relay enqueues whatever this
    could not (broker down, or the queue at its depth bound). `also_set`: a Redis key
    set in the same round trip (see `publishing.send`).
    """
    return send(TASK, [event_pk], queue="webhooks", also_set=also_set)


def publish_event(event_pk: int) -> bool:
    """Like `send_event`; False when the event was not sent."""
    return send_event(event_pk) == SENT


def publish_lease(now: datetime) -> datetime:
    """When a row marked `queued` at `now` becomes the relay's again if its message never
    reached the broker (the process died, or the publish timed out, in between)."""
    return now + timedelta(seconds=current_app.config["PUBLISH_GRACE_SECONDS"])


def mark_unpublished(event_pk: int) -> None:
    """Put a queued row whose publish failed back to `received`, for the relay's next pass.

    Commits on its own, on purpose: the row was committed as `queued` before the publish
    (the worker must find it), so its correction is a transaction of its own too.
    """
    db.session.execute(
        update(WebhookEvent)
        .where(WebhookEvent.id == event_pk, WebhookEvent.status == EventStatus.QUEUED)
        .values(status=EventStatus.RECEIVED, queued_at=None, lease_expires_at=None)
    )
    db.session.commit()
