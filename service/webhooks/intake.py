"""Storing a verified delivery: de-duplicate, insert, commit, then enqueue."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta

from flask import current_app
from sqlalchemy import DateTime
from sqlalchemy.exc import DataError, SQLAlchemyError

from service.clock import utcnow
from service.extensions import db
from service.fastsql import Statement, fetch_one
from service.queues.publishing import SENT
from service.webhooks.dedup import DedupCache
from service.webhooks.exceptions import MalformedEvent, StorageUnavailable
from service.webhooks.models import EventStatus
from service.webhooks.queueing import mark_unpublished, send_event
from service.webhooks.verifiers import VerifiedEvent

log = logging.getLogger(__name__)


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
    and the provider delivers again, and MalformedEvent when the database refuses a
    value it will never store (the verifier checks for those first; this is the net).
    """
    if dedup.seen_stored(event.provider, event.event_id):
        dedup.note_duplicate(event.provider, event.event_id)
        return IntakeResult("duplicate", None)
    try:
        event_pk = _insert(event, request_id)
    except DataError:
        dedup.release(event.provider, event.event_id)
        raise MalformedEvent("event holds a value the database cannot store") from None
    except SQLAlchemyError as exc:
        dedup.release(event.provider, event.event_id)
        raise StorageUnavailable(type(exc).__name__) from exc
    if event_pk is None:
        dedup.mark_stored(event.provider, event.event_id)
        dedup.note_duplicate(event.provider, event.event_id)
        return IntakeResult("duplicate", None)
    # The message and the de-duplication mark go in one round trip.
    queued = send_event(event_pk, also_set=dedup.stored_mark(event.provider, event.event_id))
    if queued != SENT:
        _mark_unpublished(event_pk)
    return IntakeResult("stored", event_pk, queued == SENT)


# ON CONFLICT ... RETURNING runs on PostgreSQL and on SQLite (3.35+) alike.
_INSERT_EVENT = Statement(
    "INSERT INTO webhook_events (provider, event_id, event_type, payload, status, attempts,"
    " request_id, received_at, queued_at, lease_expires_at)"
    " VALUES (:provider, :event_id, :event_type, :payload, :status, 0, :request_id, :now,"
    " :now, :lease_expires_at)"
    " ON CONFLICT (provider, event_id) DO NOTHING RETURNING id",
    now=DateTime(), lease_expires_at=DateTime(),
)


def _insert(event: VerifiedEvent, request_id: str | None) -> int | None:
    """INSERT ... ON CONFLICT DO NOTHING, committed; the new row's id, or None for a duplicate.

    One statement in autocommit mode: a single round trip that returns once the row is
    durable. The row is stored as `queued` with a short publish lease: if the publish
    after it fails the row goes back to `received`, and if the process dies in between,
    the relay publishes it once the lease has expired.
    """
    now = utcnow()
    grace = timedelta(seconds=current_app.config["PUBLISH_GRACE_SECONDS"])
    row = fetch_one(_INSERT_EVENT, {
        "provider": event.provider, "event_id": event.event_id,
        "event_type": event.event_type, "payload": event.body,
        "status": EventStatus.QUEUED, "request_id": request_id,
        "now": now, "lease_expires_at": now + grace,
    })
    return None if row is None else row[0]


def _mark_unpublished(event_pk: int) -> None:
    """Best effort: should this fail too, the publish lease still brings the relay."""
    try:
        mark_unpublished(event_pk)
    except SQLAlchemyError:
        db.session.rollback()
