"""Applying one stored event: claim the row, run its handler, record the outcome.

The database, not the broker, decides what is outstanding. A worker claims an event
with a conditional UPDATE that also takes a lease; the handler's changes and the final
status are committed together only while that lease is still this worker's. A message
delivered twice (acks_late, relay, replay) therefore finds the row claimed or done and
does nothing, and a worker killed mid-task leaves a lease that expires and lets the
relay hand the event to another worker. Leases are short and renewed while the task
runs (`leases`), and every claim counts against WEBHOOK_MAX_ATTEMPTS, lease expiries
after hard kills included: an event that keeps killing its worker ends as a failure row.

This module commits on its own, on purpose (the one exception to "the base task owns
the transaction"): the claim, the effects with the final status, a deferral and a
failure each are a separate transaction whose commit is the point, since each must
stand, or not, under the lease that was checked in it.

Error text that is stored or logged (`last_error`, failure rows, signals) is the error's
class and a reason this code wrote, never an exception's own message: those carry SQL
parameters, payload values and personal data.
"""

from __future__ import annotations

import json
import logging
import secrets
from dataclasses import dataclass
from datetime import timedelta

from celery.exceptions import SoftTimeLimitExceeded
from sqlalchemy import DateTime, select, update
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError, SQLAlchemyError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from service.alerts.services import raise_signal
from service.clock import utcnow
from service.extensions import db
from service.fastsql import Statement, fetch_all, fetch_one, run
from service.orders.exceptions import OrderNotFound, OrdersError
from service.webhooks import handlers
from service.webhooks.exceptions import (
    OrderNotYetKnown,
    PermanentError,
    ProcessingError,
    TransientError,
)
from service.webhooks.models import EventStatus, WebhookEvent, WebhookFailure

log = logging.getLogger(__name__)

MAX_ERROR_LENGTH = 500


@dataclass(frozen=True)
class Claim:
    """A leased event, with what its handler needs (read by the claim itself)."""

    event_pk: int
    token: str
    attempts: int
    provider: str
    event_id: str
    event_type: str
    payload: str


_CLAIMABLE = ("(status IN (:received, :queued)"
              " OR (status = :processing AND lease_expires_at < :now))")
_CLAIM = Statement(
    "UPDATE webhook_events SET status = :processing, lease_token = :token,"
    " lease_expires_at = :lease_until, attempts = attempts + 1"
    f" WHERE id = :event_pk AND {_CLAIMABLE}"
    " AND attempts < COALESCE(attempt_limit, :max_attempts)"
    " RETURNING attempts, provider, event_id, event_type, payload",
    now=DateTime(), lease_until=DateTime(),
)
_EXHAUSTED = Statement(
    "UPDATE webhook_events SET status = :failed, lease_token = :token,"
    " lease_expires_at = :lease_until, last_error = :error"
    f" WHERE id = :event_pk AND {_CLAIMABLE}"
    " AND attempts >= COALESCE(attempt_limit, :max_attempts)"
    " RETURNING attempts, provider, event_id, event_type, payload",
    now=DateTime(), lease_until=DateTime(),
)


def claim(event_pk: int, *, lease_seconds: int, max_attempts: int) -> Claim | None:
    """Take the event for this worker; None when it is done, failed, or leased by another.

    One conditional UPDATE, committed on its own (one round trip), that also reads what
    the handler needs. An event that has used up its attempts is not claimed: see
    `give_up`.
    """
    now = utcnow()
    token = secrets.token_hex(16)
    row = fetch_one(_CLAIM, {
        "event_pk": event_pk, "token": token, "now": now,
        "lease_until": now + timedelta(seconds=lease_seconds), "max_attempts": max_attempts,
        **_STATUSES,
    })
    if row is None:
        return None
    attempts, provider, event_id, event_type, payload = row
    return Claim(event_pk, token, attempts, provider, event_id, event_type, payload)


_CLAIM_MANY_SQL = (
    "UPDATE webhook_events SET status = :processing, lease_token = :token,"
    " lease_expires_at = :lease_until, attempts = attempts + 1"
    f" WHERE id {{ids}} AND {_CLAIMABLE}"
    " AND attempts < COALESCE(attempt_limit, :max_attempts)"
    " RETURNING id, attempts, provider, event_id, event_type, payload"
)
_CLAIM_MANY = {
    "postgresql": Statement(_CLAIM_MANY_SQL.format(ids="= ANY(:event_pks)"), now=DateTime(),
                            lease_until=DateTime()),
    "sqlite": Statement(_CLAIM_MANY_SQL.format(ids="IN :event_pks"), expanding=("event_pks",),
                        now=DateTime(), lease_until=DateTime()),
}


def claim_many(event_pks: list[int], *, lease_seconds: int, max_attempts: int) -> list[Claim]:
    """Take several events for this worker at once, under one lease token: one statement,
    committed on its own. The claims come back in the order of `event_pks`; an event done,
    failed, leased by another or out of attempts is left out (see `give_up`)."""
    if not event_pks:
        return []
    now = utcnow()
    token = secrets.token_hex(16)
    rows = fetch_all(_CLAIM_MANY[db.engine.dialect.name], {
        "event_pks": list(event_pks), "token": token, "now": now,
        "lease_until": now + timedelta(seconds=lease_seconds), "max_attempts": max_attempts,
        **_STATUSES,
    })
    by_pk = {row[0]: Claim(row[0], token, *row[1:]) for row in rows}
    return [by_pk[pk] for pk in dict.fromkeys(event_pks) if pk in by_pk]


_STATUSES = {"processing": EventStatus.PROCESSING, "received": EventStatus.RECEIVED,
             "queued": EventStatus.QUEUED, "failed": EventStatus.FAILED}


def give_up(event_pk: int, *, max_attempts: int) -> bool:
    """Fail an event that is outstanding but has used up its attempts; True if it was one.

    Called when a claim found nothing to take. This is what ends the loop of an event
    whose every attempt kills its worker outright (it never reaches `record_failure`):
    its lease expires, the relay hands it out again, and this turns it into a failure
    row with a P1 signal instead of another attempt.
    """
    now = utcnow()
    token = secrets.token_hex(16)
    error = f"attempts exhausted: {max_attempts} or more attempts, counting workers lost"
    rows = run(_EXHAUSTED, {
        "event_pk": event_pk, "token": token, "now": now, "lease_until": now,
        "max_attempts": max_attempts, "error": error, **_STATUSES,
    }).rows
    if not rows:
        db.session.rollback()
        return False
    attempts, provider, event_id, event_type, payload = rows[0]
    # In the same transaction, the row carries this call's token: the failure row and
    # the signal are written (and committed with it) by the code of any other failure.
    return record_failure(Claim(event_pk, token, attempts, provider, event_id, event_type,
                                payload), error=error)


_FINISH = Statement(
    "UPDATE webhook_events SET status = :status, processed_at = :now, lease_token = NULL,"
    " lease_expires_at = NULL, last_error = NULL"
    " WHERE id = :event_pk AND lease_token = :token",
    now=DateTime(),
)


def apply(claimed: Claim) -> str:
    """Run the event's handler and commit its effects with the final status.

    Returns "processed", "ignored" or "lost_lease"; raises TransientError or
    PermanentError, with the transaction rolled back, for the caller to decide.
    """
    handler = handlers.lookup(claimed.provider, claimed.event_type)
    source = f"{claimed.provider}:{claimed.event_id}"
    try:
        if handler is None:
            status = EventStatus.IGNORED
        else:
            handler(json.loads(claimed.payload), source)
            status = EventStatus.PROCESSED
        finished = run(_FINISH, {"status": status, "now": utcnow(),
                                 "event_pk": claimed.event_pk, "token": claimed.token}).rowcount
        if not finished:
            db.session.rollback()
            return "lost_lease"
        if claimed.attempts > 1:
            db.session.execute(
                update(WebhookFailure)
                .where(WebhookFailure.event_pk == claimed.event_pk,
                       WebhookFailure.resolved_at.is_(None))
                .values(resolved_at=utcnow())
            )
        db.session.commit()
    except BaseException as exc:
        db.session.rollback()
        raise classify(exc) from exc
    return status


def classify(exc: BaseException) -> BaseException:
    """Decide, in one place, whether an error is worth retrying, and what may be said of it.

    Only messages this service wrote itself (its domain errors, which name ids and
    rules, never values) are kept; anything else is its class name and a short reason.
    """
    if isinstance(exc, ProcessingError):
        return exc
    if isinstance(exc, OrderNotFound):
        # The order's own commit may still be in flight: wait a little before failing.
        return OrderNotYetKnown(str(exc))
    if isinstance(exc, OrdersError):
        return PermanentError(str(exc))
    if isinstance(exc, IntegrityError):
        # A concurrent insert of the same provider id: the next attempt finds the row.
        return TransientError("IntegrityError: conflicting concurrent write")
    if isinstance(exc, OperationalError | PoolTimeout | TimeoutError | ConnectionError
                  | SoftTimeLimitExceeded):
        return TransientError(type(exc).__name__)
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return TransientError("database connection lost")
    if isinstance(exc, DBAPIError):
        return PermanentError(f"{type(exc).__name__}: the database refused a value")
    if isinstance(exc, Exception):
        return PermanentError(f"{type(exc).__name__}: unexpected error in the handler")
    return exc  # KeyboardInterrupt, SystemExit, time limits: not ours to classify


def defer(claimed: Claim, *, error: str, countdown: float, lease_seconds: int) -> bool:
    """Give a transiently failed event back to the queue state while it waits to retry.

    The retry message lives in the worker that holds it until its countdown ends; a
    lease covering countdown and run time lets the relay take the event over if that
    worker dies meanwhile. False when this worker's lease was already taken away.
    """
    now = utcnow()
    return bool(_write_outcome(
        update(WebhookEvent)
        .where(WebhookEvent.id == claimed.event_pk, WebhookEvent.lease_token == claimed.token)
        .values(status=EventStatus.QUEUED, queued_at=now, lease_token=None,
                lease_expires_at=now + timedelta(seconds=countdown + lease_seconds),
                last_error=error[:MAX_ERROR_LENGTH])
    ))


def record_failure(claimed: Claim, *, error: str) -> bool:
    """Mark the event failed and open (or re-open) its one row in webhook_failures.

    Only while this worker still holds the lease: a worker whose lease expired must not
    overwrite the outcome of the one that took over. False when the lease was lost.
    """
    error = error[:MAX_ERROR_LENGTH]
    event_pk = claimed.event_pk
    event = db.session.scalar(
        select(WebhookEvent).where(WebhookEvent.id == event_pk).with_for_update()
    )
    if event is None or event.lease_token != claimed.token:
        db.session.rollback()
        return False
    event.status = EventStatus.FAILED
    event.lease_token = None
    event.lease_expires_at = None
    event.last_error = error
    failure = db.session.scalar(select(WebhookFailure).where(WebhookFailure.event_pk == event_pk))
    if failure is None:
        db.session.add(WebhookFailure(
            event_pk=event_pk, provider=event.provider, event_type=event.event_type,
            payload=event.payload, error_message=error, retry_count=0,
        ))
    else:
        failure.error_message = error
        failure.resolved_at = None
    raise_signal(severity="P1", kind="webhook_failure", source=f"{event.provider}:{event.event_type}",
                 details={"event_pk": event_pk, "attempts": event.attempts,
                          "error": error[:200]})
    try:
        db.session.commit()
    except SQLAlchemyError:
        db.session.rollback()
        raise
    log.error("event failed", extra={"event_pk": event_pk, "provider": event.provider,
                                     "event_type": event.event_type, "error": error[:200]})
    return True


def _write_outcome(statement) -> int:
    try:
        rowcount = db.session.execute(statement).rowcount
        db.session.commit()
        return rowcount
    except SQLAlchemyError:
        db.session.rollback()
        raise
