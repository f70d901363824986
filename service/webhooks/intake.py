"""Storing a verified delivery: de-duplicate, insert, commit, then enqueue.

While the `webhooks` queue is nearly empty (below WEBHOOK_DIRECT_PUBLISH_DEPTH), intake
publishes each event itself, right after its commit: the lowest latency. Past that mark
the workers are busy anyway, and intake only stores the row as `received`; the relay
claims such rows by the hundred and sends them in batch jobs as the queue drains, which
costs far less per event. A publish refused at the mark (or at the bound) or by a broker
that is down pauses direct publishing in this process for a moment (DirectPublishing),
so a request under load does not pay a refused publish and an UPDATE to take its row
back; it pays neither.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from datetime import timedelta

from flask import current_app
from sqlalchemy import DateTime
from sqlalchemy.exc import DataError, SQLAlchemyError

from service.clock import utcnow
from service.extensions import db
from service.fastsql import Statement, fetch_one
from service.queues.publishing import BROKER_DOWN, SENT
from service.webhooks.dedup import DedupCache
from service.webhooks.exceptions import MalformedEvent, StorageUnavailable
from service.webhooks.models import EventStatus
from service.webhooks.queueing import put_back, send_event
from service.webhooks.verifiers import VerifiedEvent

log = logging.getLogger(__name__)


# How long a process stores without publishing after a refused direct publish.
PAUSE_WHEN_FULL_SECONDS = 0.25
PAUSE_WHEN_BROKER_DOWN_SECONDS = 1.0


class DirectPublishing:
    """Whether this process publishes events itself now (kept in app.extensions)."""

    def __init__(self) -> None:
        self._until = 0.0
        self._lock = threading.Lock()

    def allowed(self) -> bool:
        return time.monotonic() >= self._until

    def pause(self, seconds: float) -> None:
        with self._lock:
            self._until = max(self._until, time.monotonic() + seconds)

    def resume(self) -> None:
        with self._lock:
            self._until = 0.0


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
    direct: DirectPublishing = current_app.extensions["webhook_direct_publishing"]
    publish = direct.allowed()
    try:
        event_pk, queued_at = _insert(event, request_id, queued=publish)
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
    if not publish:
        # The key stays `pending` (a redelivery asks the database, which knows): under
        # load, a round trip to Redis per request saved.
        return IntakeResult("stored", event_pk, False)
    # The message and the de-duplication mark go in one round trip.
    queued = send_event(event_pk, also_set=dedup.stored_mark(event.provider, event.event_id),
                        below=current_app.config["WEBHOOK_DIRECT_PUBLISH_DEPTH"])
    if queued != SENT:
        direct.pause(PAUSE_WHEN_BROKER_DOWN_SECONDS if queued == BROKER_DOWN
                     else PAUSE_WHEN_FULL_SECONDS)
        _put_back(event_pk, queued_at)
    return IntakeResult("stored", event_pk, queued == SENT)


# ON CONFLICT ... RETURNING runs on PostgreSQL and on SQLite (3.35+) alike.
_INSERT_EVENT = Statement(
    "INSERT INTO webhook_events (provider, event_id, event_type, payload, status, attempts,"
    " request_id, received_at, queued_at, lease_expires_at)"
    " VALUES (:provider, :event_id, :event_type, :payload, :status, 0, :request_id, :now,"
    " :queued_at, :lease_expires_at)"
    " ON CONFLICT (provider, event_id) DO NOTHING RETURNING id",
    now=DateTime(), queued_at=DateTime(), lease_expires_at=DateTime(),
)


def _insert(event: VerifiedEvent, request_id: str | None, *,
            queued: bool) -> tuple[int | None, object]:
    """INSERT ... ON CONFLICT DO NOTHING, committed: (the new row's id or None for a
    duplicate, its queued_at).

    One statement in autocommit mode: a single round trip that returns once the row is
    durable. A row this request will publish is stored `queued` with a short publish
    lease: the relay leaves it alone meanwhile; if the publish fails the row goes back
    to `received`, and if the process dies in between, the relay publishes it once the
    lease has expired. Any other row is stored `received`: the relay's at once.
    """
    now = utcnow()
    grace = timedelta(seconds=current_app.config["PUBLISH_GRACE_SECONDS"])
    row = fetch_one(_INSERT_EVENT, {
        "provider": event.provider, "event_id": event.event_id,
        "event_type": event.event_type, "payload": event.body,
        "status": EventStatus.QUEUED if queued else EventStatus.RECEIVED,
        "request_id": request_id, "now": now,
        "queued_at": now if queued else None,
        "lease_expires_at": now + grace if queued else None,
    })
    return (None if row is None else row[0]), now


def _put_back(event_pk: int, queued_at) -> None:
    """Best effort: should this fail too, the publish lease still brings the relay."""
    try:
        put_back(event_pk, queued_at)
    except SQLAlchemyError:
        db.session.rollback()
