"""Storing a verified delivery: de-duplicate, insert, commit, then enqueue."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sqlalchemy import update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError

from service.db_types import utcnow
from service.extensions import db
from service.webhooks.dedup import DedupCache
from service.webhooks.exceptions import StorageUnavailable
from service.webhooks.models import EventStatus, WebhookEvent
from service.webhooks.queueing import publish_event
from service.webhooks.verifiers import VerifiedEvent

log = logging.getLogger(__name__)

_INSERTS = {"postgresql": postgresql.insert, "sqlite": sqlite.insert}


@dataclass(frozen=True)
class IntakeResult:
    status: str  # "stored" or "duplicate"
    event_pk: int | None
    queued: bool = False


def accept_event(
    event: VerifiedEvent, *, dedup: DedupCache, request_id: str | None
) -> IntakeResult:
    """Store a verified event exactly once and hand it to the workers.

    Returns only after the row is committed (or known to exist already); raises
    StorageUnavailable when the database cannot store it, so the caller answers 503
    and the provider delivers again.
    """
    if dedup.seen_stored(event.provider, event.event_id):
        return IntakeResult("duplicate", None)
    try:
        event_pk = _insert(event, request_id)
        db.session.commit()
    except SQLAlchemyError as exc:
        db.session.rollback()
        dedup.release(event.provider, event.event_id)
        raise StorageUnavailable(type(exc).__name__) from exc
    dedup.mark_stored(event.provider, event.event_id)
    if event_pk is None:
        return IntakeResult("duplicate", None)
    queued = publish_event(event_pk)
    if queued:
        _mark_queued(event_pk)
    return IntakeResult("stored", event_pk, queued)


def _insert(event: VerifiedEvent, request_id: str | None) -> int | None:
    """INSERT ... ON CONFLICT DO NOTHING; the id of the new row, or None for a duplicate."""
    insert = _INSERTS[db.engine.dialect.name]
    statement = (
        insert(WebhookEvent)
        .values(
            provider=event.provider,
            event_id=event.event_id,
            event_type=event.event_type,
            payload=event.body,
            status=EventStatus.RECEIVED,
            attempts=0,
            request_id=request_id,
            received_at=utcnow(),
        )
        .on_conflict_do_nothing(index_elements=["provider", "event_id"])
        .returning(WebhookEvent.id)
    )
    return db.session.execute(statement).scalar()


def _mark_queued(event_pk: int) -> None:
    """Record that the broker has the event, so the relay leaves it alone.

    Best effort: if this fails the relay publishes the event again later, and the
    worker's claim makes the second message a no-op.
    """
    try:
        db.session.execute(
            update(WebhookEvent)
            .where(WebhookEvent.id == event_pk, WebhookEvent.status == EventStatus.RECEIVED)
            .values(status=EventStatus.QUEUED, queued_at=utcnow())
        )
        db.session.commit()
    except SQLAlchemyError:
        db.session.rollback()
