"""Replaying failed events: the one place a responder's retry goes through."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime

from flask import current_app
from sqlalchemy import select

from service.audit import services as audit
from service.audit.actor import Actor
from service.audit.registry import critical, not_critical
from service.clock import utcnow
from service.extensions import db
from service.webhooks.models import EventStatus, WebhookEvent, WebhookFailure
from service.webhooks.queueing import mark_unpublished, publish_event, publish_lease

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Selection:
    since: datetime | None = None
    failure_id: int | None = None
    provider: str | None = None
    include_resolved: bool = False


@not_critical("reads failures")
def select_failures(selection: Selection) -> list[WebhookFailure]:
    query = select(WebhookFailure).order_by(WebhookFailure.created_at, WebhookFailure.id)
    if selection.failure_id is not None:
        query = query.where(WebhookFailure.id == selection.failure_id)
    if selection.since is not None:
        query = query.where(WebhookFailure.updated_at >= selection.since)
    if selection.provider:
        query = query.where(WebhookFailure.provider == selection.provider)
    if not selection.include_resolved:
        query = query.where(WebhookFailure.resolved_at.is_(None))
    return list(db.session.scalars(query))


@dataclass(frozen=True)
class RetryOutcome:
    failure_id: int
    event_pk: int
    result: str  # "enqueued", "left_for_relay", "skipped"


@critical("webhook.retry")
def retry_failures(failures: list[WebhookFailure], *, actor: Actor,
                   reason: str | None = None) -> Iterator[RetryOutcome]:
    """Put each failed event back in the queue and count the manual retry.

    The event goes back to `queued` in the same commit that counts the retry and writes
    its audit row, so even if the broker is down now the relay will enqueue it; the
    failure row is resolved by the worker once the event is processed. Commits each
    failure on its own, on purpose: the event must be `queued` before its message
    exists, and nothing is published inside a transaction.
    """
    for failure in failures:
        event = db.session.get(WebhookEvent, failure.event_pk, with_for_update=True)
        now = utcnow()
        in_flight = event is not None and event.status == EventStatus.PROCESSING and \
            event.lease_expires_at is not None and event.lease_expires_at > now
        if event is None or event.status in EventStatus.DONE or failure.resolved_at or in_flight:
            db.session.rollback()
            yield RetryOutcome(failure.id, failure.event_pk, "skipped")
            continue
        before = {"status": event.status, "retry_count": failure.retry_count}
        failure.retry_count += 1
        failure.last_retry_at = now
        # A responder's retry grants a fresh allowance of attempts on top of those spent.
        event.attempt_limit = event.attempts + current_app.config["WEBHOOK_MAX_ATTEMPTS"]
        event.status = EventStatus.QUEUED
        event.queued_at = now
        event.lease_token = None
        event.lease_expires_at = publish_lease(now)
        db.session.flush()
        audit.record(action="webhook.retry", entity_type="webhook_event", entity_id=event.id,
                     actor=actor, before=before,
                     after={"status": event.status, "retry_count": failure.retry_count},
                     reason=reason, details={"failure_id": failure.id, "provider": event.provider,
                                             "event_id": event.event_id,
                                             "event_type": event.event_type})
        db.session.commit()
        log.info("manual retry", extra={"event_pk": event.id, "provider": event.provider,
                                        "event_type": event.event_type, "actor": actor.label})
        if publish_event(event.id):
            yield RetryOutcome(failure.id, event.id, "enqueued")
        else:
            mark_unpublished(event.id)
            yield RetryOutcome(failure.id, event.id, "left_for_relay")
