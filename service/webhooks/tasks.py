"""Celery tasks of the webhooks domain: processing one event or a batch, and the relay."""

from __future__ import annotations

import logging
import random
from collections import Counter
from collections.abc import Callable

from celery import shared_task
from celery.exceptions import Retry
from flask import current_app
from sqlalchemy.exc import SQLAlchemyError

from service.logs import event_var
from service.queues.publishing import release
from service.webhooks import processing, relay, retention
from service.webhooks.exceptions import OrderNotYetKnown, PermanentError, TransientError
from service.webhooks.metrics import EVENTS
from service.webhooks.queueing import QUEUE

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
        raise _retry_message(task, exc) from None
    if claimed is None:
        log.info("event already handled or leased", extra={"event_pk": event_pk,
                                                           "outcome": "skipped"})
        return "skipped"

    def retry_later(exc: TransientError, countdown: float) -> None:
        raise task.retry(exc=exc, countdown=countdown) from None

    with current_app.extensions["lease_keeper"].hold(claimed.event_pk, claimed.token):
        return _settle(task, claimed, retries=task.request.retries, retry_later=retry_later)


def _settle(task, claimed: processing.Claim, *, retries: int,
            retry_later: Callable[[TransientError, float], None]) -> str:
    """Apply a claimed event and record its outcome: the one path for both tasks.

    A transient error defers the event (queued, with a lease covering the wait) and
    calls `retry_later(exc, countdown)`; a permanent one, or one out of retries or
    attempts, records its failure row.
    """
    cfg = current_app.config
    try:
        outcome = processing.apply(claimed)
    except PermanentError as exc:
        return "failed" if processing.record_failure(claimed, error=str(exc)) else "lost_lease"
    except TransientError as exc:
        reason = _exhausted(exc, retries=retries, max_retries=task.max_retries,
                            attempts=claimed.attempts, max_attempts=cfg["WEBHOOK_MAX_ATTEMPTS"],
                            order_wait=cfg["ORDER_WAIT_RETRIES"])
        if reason is not None:
            recorded = processing.record_failure(claimed, error=f"{reason}: {exc}")
            return "failed" if recorded else "lost_lease"
        countdown = backoff_delay(retries, factor=task.retry_backoff,
                                  maximum=task.retry_backoff_max, jitter=task.retry_jitter)
        if not processing.defer(claimed, error=str(exc), countdown=countdown,
                                lease_seconds=cfg["PROCESSING_LEASE_SECONDS"]):
            return "lost_lease"
        log.warning("event will be retried", extra={
            "event_pk": claimed.event_pk, "retries": retries + 1, "countdown": countdown,
            "error": str(exc)[:200]})
        EVENTS.inc(outcome="retried")
        retry_later(exc, countdown)
        return "retried"
    log.info("event handled", extra={"event_pk": claimed.event_pk, "outcome": outcome})
    return outcome


def _retry_message(task, exc: Exception) -> Exception:
    return task.retry(exc=exc, countdown=backoff_delay(
        task.request.retries, factor=task.retry_backoff, maximum=task.retry_backoff_max,
        jitter=task.retry_jitter))


@shared_task(bind=True, name="webhooks.process_events", acks_late=True,
             reject_on_worker_lost=True, ignore_result=True)
def process_events(self, event_pks: list[int]) -> dict:
    """Apply a batch of stored events (the relay's job), each in its own transaction.

    The batch claims its events in one statement and holds their leases while it runs,
    so a worker killed mid-batch leaves leases that expire and bring the relay, as for
    one event. Each event is applied, and its outcome recorded, exactly as
    `process_event` does (exactly once under its lease, a failure row per failed event);
    a transient error defers that event alone and sends it to `process_event` with its
    backoff, the rest of the batch going on. The batch's weight leaves the queue's depth
    when it ends, however it ends (unless the message itself is retried: the retry
    carries it).
    """
    release_weight = True
    try:
        return _process_batch(self, event_pks)
    except Retry:
        release_weight = False
        raise
    finally:
        if release_weight:
            release(QUEUE, len(event_pks))


def _process_batch(task, event_pks: list[int]) -> dict:
    cfg = current_app.config
    max_attempts = cfg["WEBHOOK_MAX_ATTEMPTS"]
    outcomes: Counter[str] = Counter()
    try:
        claims = processing.claim_many(event_pks, lease_seconds=cfg["PROCESSING_LEASE_SECONDS"],
                                       max_attempts=max_attempts)
        claimed = {claim.event_pk for claim in claims}
        for event_pk in event_pks:
            if event_pk in claimed:
                continue
            outcome = "failed" if processing.give_up(event_pk, max_attempts=max_attempts) \
                else "skipped"
            if outcome == "skipped":
                log.info("event already handled or leased",
                         extra={"event_pk": event_pk, "outcome": "skipped"})
            outcomes[outcome] += 1
    except SQLAlchemyError as exc:
        raise _retry_message(task, exc) from None

    keeper = current_app.extensions["lease_keeper"]
    with keeper.hold_all({claim.event_pk: claim.token for claim in claims}):
        for claim in claims:
            token = event_var.set(str(claim.event_pk))
            try:
                outcomes[_settle(task, claim, retries=0, retry_later=_retry_alone(claim))] += 1
            finally:
                keeper.done(claim.event_pk)
                event_var.reset(token)
    for outcome, count in outcomes.items():
        if outcome != "retried":  # counted as it was deferred
            EVENTS.inc(count, outcome=outcome)
    return dict(outcomes)


def _retry_alone(claim: processing.Claim) -> Callable[[TransientError, float], None]:
    def later(exc: TransientError, countdown: float) -> None:
        # Its first retry: `process_event` takes it from there, with its own backoff. If
        # the broker refuses, the deferred row's lease brings the relay instead.
        try:
            process_event.apply_async(args=[claim.event_pk], countdown=countdown, retries=1)
        except Exception as error:  # kombu's connection errors vary by transport
            log.warning("retry not sent, left to the relay",
                        extra={"event_pk": claim.event_pk, "error": type(error).__name__})
    return later


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
    """Beat task: enqueue stored events the broker does not have, as the queue has room,
    for up to RELAY_PASS_SECONDS (see `relay`)."""
    return relay.relay_pending().as_dict()


@shared_task(name="webhooks.purge_payloads", ignore_result=True)
def purge_payloads() -> dict:
    """Beat task, daily: redact payloads of events processed PAYLOAD_RETENTION_DAYS ago."""
    cutoff = retention.retention_cutoff(current_app.config["PAYLOAD_RETENTION_DAYS"])
    return retention.purge_payloads(cutoff).as_dict()
