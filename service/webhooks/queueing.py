"""Publishing events to the broker: the one place that may find the broker down."""

from __future__ import annotations

from datetime import datetime, timedelta

from flask import current_app
from sqlalchemy import DateTime, update

from service.extensions import db
from service.fastsql import Statement, fetch_one
from service.queues.publishing import SENT, send
from service.webhooks.models import EventStatus, WebhookEvent

QUEUE = "webhooks"
TASK = "webhooks.process_event"
BATCH_TASK = "webhooks.process_events"


def send_event(event_pk: int, *, also_set: tuple[str, str, int] | None = None,
               below: int | None = None) -> str:
    """Send `webhooks.process_event` for a stored event: SENT, FULL or BROKER_DOWN.

    Never raises: the event is already durable, and the relay enqueues whatever this
    could not (broker down, or the queue at its depth bound). `also_set`: a Redis key
    set in the same round trip (see `publishing.send`); `below`: publish only while the
    queue's depth is under this mark.
    """
    return send(TASK, [event_pk], queue=QUEUE, also_set=also_set, below=below)


def publish_event(event_pk: int) -> bool:
    """Like `send_event`; False when the event was not sent."""
    return send_event(event_pk) == SENT


def publish_lease(now: datetime) -> datetime:
    """When a row marked `queued` at `now` becomes the relay's again if its message never
    reached the broker (the process died, or the publish timed out, in between)."""
    return now + timedelta(seconds=current_app.config["PUBLISH_GRACE_SECONDS"])


_UNPUBLISHED = Statement(
    "UPDATE webhook_events SET status = :received, queued_at = NULL, lease_expires_at = NULL"
    " WHERE id = :event_pk AND status = :queued AND queued_at = :queued_at",
    queued_at=DateTime(),
)


def put_back(event_pk: int, queued_at: datetime) -> None:
    """Intake's `mark_unpublished`: one autocommit statement (one round trip), guarded on
    the `queued_at` this request wrote, so it never takes back a row the relay has since
    claimed and published."""
    fetch_one(_UNPUBLISHED, {"event_pk": event_pk, "queued_at": queued_at,
                             "received": EventStatus.RECEIVED, "queued": EventStatus.QUEUED})


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
