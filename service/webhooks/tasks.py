"""Celery tasks of the webhooks domain: processing one event, and the relay."""

from __future__ import annotations

import logging
import random

from celery import shared_task
from flask import current_app
from sqlalchemy.exc import SQLAlchemyError

from service.logs import event_var
from service.webhooks import processing, relay, retention
from service.webhooks.exceptions import OrderNotYetKnown, PermanentError, TransientError
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
    cfg = current_app.config
    lease = cfg["PROCESSING_LEASE_SECONDS"]
    max_attempts = cfg["WEBHOOK_MAX_ATTEMPTS"]
    try:
        claimed = processing.claim(event_pk, lease_seconds=lease, max_attempts=max_attempts)
        if claimed is None and processing.give_up(event_pk, max_attempts=max_attempts):
            return "failed"
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
        with current_app.extensions["lease_keeper"].hold(claimed.event_pk, claimed.token):
            outcome = processing.apply(claimed)
    except PermanentError as exc:
        return "failed" if processing.record_failure(claimed, error=str(exc)) else "lost_lease"
    except TransientError as exc:
        retries = task.request.retries
        reason = _exhausted(exc, retries=retries, max_retries=task.max_retries,
                            attempts=claimed.attempts, max_attempts=max_attempts,
                            order_wait=cfg["ORDER_WAIT_RETRIES"])
        if reason is not None:
            recorded = processing.record_failure(claimed, error=f"{reason}: {exc}")
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


def _exhausted(exc: TransientError, *, retries: int, max_retries: int, attempts: int,
               max_attempts: int, order_wait: int) -> str | None:
    """Why a transiently failed event must not be tried again, or None to retry it."""
    if attempts >= max_attempts:
        return f"attempts exhausted after {attempts} attempts"
    if retries >= max_retries:
        return f"retries exhausted after {retries + 1} attempts"
    if isinstance(exc, OrderNotYetKnown) and retries >= order_wait:
        return f"order still missing after {retries + 1} attempts"
    return None


@shared_task(name="webhooks.relay_pending", ignore_result=True)
def relay_pending() -> dict:
    """Beat task: enqueue stored events the broker does not have (see `relay`)."""
    return relay.relay_pending().as_dict()


@shared_task(name="webhooks.purge_payloads", ignore_result=True)
def purge_payloads() -> dict:
    """Beat task, daily: redact payloads of events processed PAYLOAD_RETENTION_DAYS ago."""
    cutoff = retention.retention_cutoff(current_app.config["PAYLOAD_RETENTION_DAYS"])
    return retention.purge_payloads(cutoff).as_dict()
