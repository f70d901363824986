"""Refunds an operator asks for: reserve, call the provider, record the outcome.

The money itself changes in one place only, `services.apply_refunds`, the function the
providers' webhooks call too; this module orders the steps around the provider's HTTP
call, which must not run inside a database transaction. So, unlike the rest of the
orders services, it commits its own steps, on purpose:

1. Reserve, in a short transaction under the order's lock: check what is refundable
   (the payment's captured amount in the order's currency, minus its refunds succeeded
   or still in flight at the provider, minus refunds reserved here and not yet settled;
   and never more than the order's paid sum minus those), then store a pending
   `refund_requests` row under the client's idempotency key, and commit. Concurrent
   requests queue on the order's lock, so together they never exceed what was captured.
2. Call the provider (Stripe or PayPal, through `RefundGateway`) with no transaction
   open, with an idempotency key of its own derived from the request, so asking again
   never refunds twice.
3. Record the outcome in its own short transaction: an accepted refund goes through
   `services.apply_refunds` with the provider's refund id and status and the operator
   as the audit row's actor, so the provider's later webhook for it finds it recorded
   and counts nothing twice; a refusal fails the request and releases its reservation.
   When the provider's answer is unknown (timeout, 5xx) the request stays pending; the
   same request repeated after REFUND_PENDING_RETRY_SECONDS asks the provider again.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import timedelta

from flask import current_app
from sqlalchemy import func, select

from service.audit.actor import Actor
from service.audit.registry import critical, not_critical
from service.clock import utcnow
from service.extensions import db
from service.orders import money, services
from service.orders.exceptions import (
    IdempotencyConflict,
    InvalidAmount,
    InvalidChange,
    OrderNotFound,
    RefundInProgress,
    RefundNotAllowed,
)
from service.orders.gateways import ProviderUnavailable, RefundDeclined
from service.orders.models import Order, Payment, Refund, RefundRequest
from service.orders.money import PaymentStatus, RefundStatus

PENDING, SUCCEEDED, FAILED = "pending", "succeeded", "failed"

# Payments an operator may refund from: money received and not under dispute.
_REFUNDABLE_PAYMENTS = (PaymentStatus.SUCCEEDED, PaymentStatus.UNDERPAID)
# Provider refunds that take money from a payment: counted, or still in flight.
_TAKING_REFUNDS = (RefundStatus.SUCCEEDED, RefundStatus.PENDING, RefundStatus.REQUIRES_ACTION)


@dataclass(frozen=True)
class RefundResult:
    request: dict
    replayed: bool  # an earlier answer for the same idempotency key and body


@dataclass(frozen=True)
class _Reserved:
    request_id: int
    order_id: int
    idempotency_key: str
    provider: str
    payment_id: str
    amount_cents: int
    currency: str
    reason: str


@critical("order.refund")
def refund_order(*, order_id: int, amount_cents: int, reason: str, idempotency_key: str,
                 actor: Actor) -> RefundResult:
    """Refund part or all of an order through its provider; commits its own steps (the
    provider's HTTP call sits between two of them, with no transaction open).

    Raises RefundNotAllowed (over the refundable amount), IdempotencyConflict (the key
    was used with another body), RefundInProgress (the same request is being handled).
    A provider's refusal or an unknown outcome is in the returned request's status;
    `refund_status` says where an accepted refund stands at the provider (a Stripe
    refund may stay `pending` a while; it counts once it has succeeded).
    """
    try:
        amount_cents = money.checked_minor_units(amount_cents)
    except InvalidAmount:
        raise InvalidAmount("amount_cents must be a positive integer within bounds") from None
    if amount_cents <= 0:
        raise InvalidAmount("amount_cents must be a positive integer within bounds")
    reason = (reason or "").strip()
    if not reason or len(reason) > 500:
        raise InvalidChange("a reason of 1 to 500 characters is required")
    if not idempotency_key:
        raise InvalidChange("an idempotency key is required")
    fingerprint = hashlib.sha256(f"{order_id}|{amount_cents}|{reason}".encode()).hexdigest()
    try:
        outcome = _reserve(order_id, amount_cents, reason, idempotency_key, fingerprint, actor)
    except Exception:
        db.session.rollback()
        raise
    db.session.commit()
    if isinstance(outcome, RefundResult):
        return outcome
    try:
        gateway = current_app.extensions["refund_gateways"][outcome.provider]
        provider_refund = gateway.refund(
            payment_id=outcome.payment_id, amount_cents=outcome.amount_cents,
            currency=outcome.currency, idempotency_key=f"racine-refund-{outcome.request_id}",
            reason=outcome.reason)
    except RefundDeclined as exc:
        return _finish(outcome.request_id, status=FAILED, error=str(exc))
    except ProviderUnavailable as exc:
        return _finish(outcome.request_id, status=PENDING, error=str(exc))
    try:
        _record(outcome, provider_refund, actor)
    except Exception:
        # Left pending: a repeat of the request asks the provider again with the same
        # key and records the refund it answers; its webhook records it meanwhile.
        db.session.rollback()
        raise
    return _finish(outcome.request_id, status=SUCCEEDED, provider_refund_id=provider_refund.id)


def _record(outcome: _Reserved, provider_refund, actor: Actor) -> None:
    services.apply_refunds(
        order_id=outcome.order_id, provider=outcome.provider,
        provider_payment_id=outcome.payment_id, source=f"refund_request:{outcome.request_id}",
        refunds=[services.RefundFact(provider_refund.id, outcome.amount_cents,
                                     outcome.currency, provider_refund.status)],
        actor=actor, reason=outcome.reason,
        details={"refund_request_id": outcome.request_id,
                 "idempotency_key": outcome.idempotency_key})


def _reserve(order_id, amount_cents, reason, key, fingerprint, actor) -> _Reserved | RefundResult:
    """Step 1, under the order's lock; the caller commits (or rolls back on a raise)."""
    # populate_existing: the paid and refunded sums as the lock returns them.
    order = db.session.scalar(select(Order).where(Order.id == order_id).with_for_update()
                              .execution_options(populate_existing=True))
    if order is None:
        raise OrderNotFound(f"order {order_id} does not exist")
    earlier = db.session.scalar(select(RefundRequest).where(RefundRequest.idempotency_key == key))
    if earlier is not None:
        if earlier.fingerprint != fingerprint:
            raise IdempotencyConflict("this Idempotency-Key was used for a different refund")
        if earlier.status != PENDING:
            return RefundResult(_as_dict(earlier), replayed=True)
        retry_after = timedelta(seconds=current_app.config["REFUND_PENDING_RETRY_SECONDS"])
        if utcnow() - earlier.updated_at < retry_after:
            raise RefundInProgress("a refund with this Idempotency-Key is being processed")
        # Left pending by a crash or an unknown provider answer: ask the provider again
        # with the same provider key; it answers with the refund it already made, if any.
        earlier.updated_at = utcnow()
        return _reserved(earlier)
    payment, refundable = _refundable_payment(order, amount_cents)
    if payment is None:
        raise RefundNotAllowed(
            f"refund of {amount_cents} exceeds what is refundable: {refundable} "
            f"{order.currency} (captured minus refunded minus refunds in progress)"
            if amount_cents > refundable else
            "no single payment of the order can cover this refund; refund less")
    request_row = RefundRequest(
        order_id=order.id, idempotency_key=key, fingerprint=fingerprint,
        amount_cents=amount_cents, currency=order.currency, reason=reason,
        provider=payment.provider, provider_payment_id=payment.provider_payment_id,
        status=PENDING, actor=actor.label[:255])
    db.session.add(request_row)
    db.session.flush()
    return _reserved(request_row)


def _reserved(row: RefundRequest) -> _Reserved:
    return _Reserved(row.id, row.order_id, row.idempotency_key, row.provider,
                     row.provider_payment_id, row.amount_cents, row.currency, row.reason)


def _refundable_payment(order: Order, amount_cents: int) -> tuple[Payment | None, int]:
    """The payment to refund from, and the order's refundable total: its paid sum minus
    its succeeded refunds (the money rule's figures), minus refunds in flight at the
    provider and refund requests still pending here."""
    payments = list(db.session.scalars(select(Payment).where(
        Payment.order_id == order.id, Payment.status.in_(_REFUNDABLE_PAYMENTS),
        Payment.currency == order.currency).order_by(Payment.id)))
    taken = dict(db.session.execute(
        select(Refund.provider_payment_id, func.sum(Refund.amount_cents))
        .where(Refund.order_id == order.id, Refund.status.in_(_TAKING_REFUNDS))
        .group_by(Refund.provider_payment_id)).all())
    in_flight = db.session.scalar(
        select(func.coalesce(func.sum(Refund.amount_cents), 0)).where(
            Refund.order_id == order.id, Refund.status.in_(_TAKING_REFUNDS),
            Refund.status != RefundStatus.SUCCEEDED))
    reserved = dict(db.session.execute(
        select(RefundRequest.provider_payment_id, func.sum(RefundRequest.amount_cents))
        .where(RefundRequest.order_id == order.id, RefundRequest.status == PENDING)
        .group_by(RefundRequest.provider_payment_id)).all())
    # int(): PostgreSQL sums a bigint column as numeric.
    total = order.paid_cents - order.refunded_cents - int(in_flight) - \
        int(sum(reserved.values()))
    for payment in payments:
        left = payment.amount_cents - int(taken.get(payment.provider_payment_id, 0)) - \
            int(reserved.get(payment.provider_payment_id, 0))
        if amount_cents <= min(left, total):
            return payment, total
    return None, max(total, 0)


def _finish(request_id: int, *, status: str, error: str | None = None,
            provider_refund_id: str | None = None) -> RefundResult:
    """Step 3's request row: succeeded, failed (its reservation released) or still pending
    (the provider's answer is unknown); committed with the refund `apply_refunds` wrote."""
    request_row = db.session.get(RefundRequest, request_id, with_for_update=True)
    request_row.status = status
    request_row.error = error[:500] if error else None
    if provider_refund_id:
        request_row.provider_refund_id = provider_refund_id
    result = RefundResult(_as_dict(request_row), replayed=False)
    db.session.commit()
    return result


def _as_dict(row: RefundRequest) -> dict:
    """The request, and where its refund stands at the provider once it was accepted."""
    refund_status = None
    if row.provider_refund_id:
        refund_status = db.session.scalar(select(Refund.status).where(
            Refund.provider == row.provider, Refund.provider_refund_id == row.provider_refund_id))
    return {**row.to_dict(), "refund_status": refund_status}


@not_critical("reads")
def refund_requests_of(order_id: int) -> list[dict]:
    return [_as_dict(r) for r in db.session.scalars(
        select(RefundRequest).where(RefundRequest.order_id == order_id)
        .order_by(RefundRequest.id))]
