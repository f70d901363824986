"""Celery tasks of the webhooks domain: processing one event, and the relay."""

from __future__ import annotations

import logging
import random

from celery import shared_task
from flask import current_app
from sqlalchemy.exc import SQLAlchemyError

from service.logs import event_var
from service.webhooks import processing, relay
from service.webhooks.exceptions import PermanentError, TransientError
from service.webhooks.metrics import EVENTS

log = logging.getLogger(__name__)


def backoff_delay(retries: int, *, factor: float, maximum: float, jitter: bool) -> float:
    """Seconds before retry number `retries + 1`: exponential, capped, with jitter.

    The jitter draws from the upper half of each step ("equal jitter"), so retries of
    many events spread out while each event's delays still grow from one try to the next.
    """
    ceiling = min(float(maximum), factor * (2 ** retries))
    if jitter:
        ceiling = random.uniform(ceiling / 2, ceiling)
    return round(max(ceiling, 0.1), 3)


@shared_task(bind=True, name="webhooks.process_event", acks_late=True,
             reject_on_worker_lost=True, ignore_result=True)
def process_event(self, event_pk: int) -> str:
    """Apply a stored event; retry transient errors with backoff, record permanent ones."""
    token = event_var.set(str(event_pk))
    try:
        return _process(self, event_pk)
    finally:
        event_var.reset(token)


def _process(task, event_pk: int) -> str:
    outcome = _attempt(task, event_pk)
    EVENTS.inc(outcome=outcome)
    return outcome


def _attempt(task, event_pk: int) -> str:
    lease = current_app.config["PROCESSING_LEASE_SECONDS"]
    try:
        claimed = processing.claim(event_pk, lease_seconds=lease)
    except SQLAlchemyError as exc:
        # The database is unreachable: retry this message, rather than let Celery ack a
        # failed task and leave the event to the relay's slower sweep.
        raise task.retry(exc=exc, countdown=backoff_delay(
            task.request.retries, factor=task.retry_backoff, maximum=task.retry_backoff_max,
            jitter=task.retry_jitter)) from None
    if claimed is None:
        log.info("event already handled or leased", extra={"event_pk": event_pk,
                                                           "outcome": "skipped"})
        return "skipped"
    try:
        outcome = processing.apply(claimed)
    except PermanentError as exc:
        return "failed" if processing.record_failure(claimed, error=str(exc)) else "lost_lease"
    except TransientError as exc:
        retries = task.request.retries
        if retries >= task.max_retries:
            recorded = processing.record_failure(
                claimed, error=f"retries exhausted after {retries + 1} attempts: {exc}"
            )
            return "failed" if recorded else "lost_lease"
        countdown = backoff_delay(retries, factor=task.retry_backoff,
                                  maximum=task.retry_backoff_max, jitter=task.retry_jitter)
        if not processing.defer(claimed, error=str(exc), countdown=countdown,
                                lease_seconds=lease):
            return "lost_lease"
        log.warning("event will be retried", extra={
            "event_pk": event_pk, "retries": retries + 1, "countdown": countdown,
            "error": str(exc)[:200]})
        EVENTS.inc(outcome="retried")
        raise task.retry(exc=exc, countdown=countdown) from None
    log.info("event handled", extra={"event_pk": event_pk, "outcome": outcome})
    return outcome


@shared_task(name="webhooks.relay_pending", ignore_result=True)
def relay_pending() -> dict:
    """Beat task: enqueue stored events the broker does not have (see `relay`)."""
    return relay.relay_pending().as_dict()
