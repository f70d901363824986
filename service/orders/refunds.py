"""Refunds an operator asks for: reserve, call the provider, record the outcome.

No HTTP call runs inside a database transaction:

1. Reserve, in a short transaction under the order's lock: check what is refundable
   (succeeded payments in the order's currency, minus refunds recorded, minus refunds
   reserved and not yet settled), then store a pending `refund_requests` row under the
   client's idempotency key. Concurrent requests queue on the order's lock, so together
   they never exceed what was captured.
2. Call the provider (Stripe or PayPal, through `RefundGateway`) with an idempotency key
   of its own, derived from the request, so asking again never refunds twice.
3. Record the outcome in its own short transaction: on success the refund goes through
   `services.record_refund` (the provider's refund id, so its later `charge.refunded`
   webhook finds it recorded and does not count it again) with the operator as the
   audit row's actor; on a refusal the request fails and its reservation is released.
   When the provider's answer is unknown (timeout, 5xx) the request stays pending; the
   same request repeated after REFUND_PENDING_RETRY_SECONDS asks the provider again.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import timedelta

from flask import current_app
from sqlalchemy import func, select

from service.audit import services as audit
from service.audit.actor import Actor
from service.audit.registry import critical, not_critical
from service.db_types import utcnow
from service.extensions import db
from service.orders import services
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

PENDING, SUCCEEDED, FAILED = "pending", "succeeded", "failed"


@dataclass(frozen=True)
class RefundResult:
    request: dict
    replayed: bool  # an earlier answer for the same idempotency key and body


@dataclass(frozen=True)
class _Reserved:
    request_id: int
    provider: str
    payment_id: str
    amount_cents: int
    currency: str
    reason: str


@critical("order.refund")
def refund_order(*, order_id: int, amount_cents: int, reason: str, idempotency_key: str,
                 actor: Actor) -> RefundResult:
    """Refund part or all of an order through its provider; commits its own steps.

    Raises RefundNotAllowed (over the refundable amount), IdempotencyConflict (the key
    was used with another body), RefundInProgress (the same request is being handled).
    A provider's refusal or an unknown outcome is in the returned request's status.
    """
    if isinstance(amount_cents, bool) or not isinstance(amount_cents, int) or amount_cents <= 0:
        raise InvalidAmount("amount_cents must be a positive integer")
    reason = (reason or "").strip()
    if not reason or len(reason) > 500:
        raise InvalidChange("a reason of 1 to 500 characters is required")
    if not idempotency_key:
        raise InvalidChange("an idempotency key is required")
    fingerprint = hashlib.sha256(f"{order_id}|{amount_cents}|{reason}".encode()).hexdigest()
    outcome = _reserve(order_id, amount_cents, reason, idempotency_key, fingerprint, actor)
    if isinstance(outcome, RefundResult):
        return outcome
    try:
        gateway = current_app.extensions["refund_gateways"][outcome.provider]
        provider_refund = gateway.refund(
            payment_id=outcome.payment_id, amount_cents=outcome.amount_cents,
            currency=outcome.currency, idempotency_key=f"racine-refund-{outcome.request_id}",
            reason=outcome.reason)
    except RefundDeclined as exc:
        return _finish_failed(outcome.request_id, str(exc))
    except ProviderUnavailable as exc:
        return _leave_pending(outcome.request_id, str(exc))
    return _finish_succeeded(outcome, provider_refund.id, actor)


def _reserve(order_id, amount_cents, reason, key, fingerprint, actor) -> _Reserved | RefundResult:
    order = db.session.scalar(select(Order).where(Order.id == order_id).with_for_update())
    if order is None:
        db.session.rollback()
        raise OrderNotFound(f"order {order_id} does not exist")
    earlier = db.session.scalar(select(RefundRequest).where(RefundRequest.idempotency_key == key))
    if earlier is not None:
        if earlier.fingerprint != fingerprint:
            db.session.rollback()
            raise IdempotencyConflict("this Idempotency-Key was used for a different refund")
        retry_after = timedelta(seconds=current_app.config["REFUND_PENDING_RETRY_SECONDS"])
        if earlier.status != PENDING:
            result = RefundResult(earlier.to_dict(), replayed=True)
            db.session.rollback()
            return result
        if utcnow() - earlier.updated_at < retry_after:
            db.session.rollback()
            raise RefundInProgress("a refund with this Idempotency-Key is being processed")
        # Left pending by a crash or an unknown provider answer: ask the provider again
        # with the same provider key; it answers with the refund it already made, if any.
        earlier.updated_at = utcnow()
        reserved = _Reserved(earlier.id, earlier.provider, earlier.provider_payment_id,
                             earlier.amount_cents, earlier.currency, earlier.reason)
        db.session.commit()
        return reserved
    payment, refundable = _refundable_payment(order, amount_cents)
    if payment is None:
        db.session.rollback()
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
    reserved = _Reserved(request_row.id, payment.provider, payment.provider_payment_id,
                         amount_cents, order.currency, reason)
    db.session.commit()
    return reserved


def _refundable_payment(order: Order, amount_cents: int) -> tuple[Payment | None, int]:
    """The payment to refund from, and the order's refundable total (captured in the
    order's currency, minus refunds recorded, minus refund requests still pending)."""
    payments = list(db.session.scalars(select(Payment).where(
        Payment.order_id == order.id, Payment.status == "succeeded",
        Payment.currency == order.currency).order_by(Payment.id)))
    refunded = dict(db.session.execute(
        select(Refund.provider_payment_id, func.sum(Refund.amount_cents))
        .where(Refund.order_id == order.id).group_by(Refund.provider_payment_id)).all())
    reserved = dict(db.session.execute(
        select(RefundRequest.provider_payment_id, func.sum(RefundRequest.amount_cents))
        .where(RefundRequest.order_id == order.id, RefundRequest.status == PENDING)
        .group_by(RefundRequest.provider_payment_id)).all())
    # Refunds recorded without their payment (older webhooks) count in the order's total.
    total = sum(p.amount_cents for p in payments) - sum(refunded.values()) - \
        sum(reserved.values())
    for payment in payments:
        left = payment.amount_cents - refunded.get(payment.provider_payment_id, 0) - \
            reserved.get(payment.provider_payment_id, 0)
        if amount_cents <= min(left, total):
            return payment, total
    return None, max(total, 0)


def _finish_succeeded(reserved: _Reserved, provider_refund_id: str, actor: Actor) -> RefundResult:
    request_row = db.session.get(RefundRequest, reserved.request_id, with_for_update=True)
    outcome = services.record_refund(
        order_id=request_row.order_id, provider=reserved.provider,
        provider_refund_id=provider_refund_id, provider_payment_id=reserved.payment_id,
        amount_cents=reserved.amount_cents, currency=reserved.currency,
        source=f"refund_request:{reserved.request_id}", actor=actor, reason=reserved.reason,
        details={"refund_request_id": reserved.request_id,
                 "idempotency_key": request_row.idempotency_key})
    if not outcome.created:
        # The provider's webhook recorded this refund first (with the provider as actor);
        # the operator's action still gets its own row.
        order = db.session.get(Order, request_row.order_id)
        state = {"status": order.status, "refunded_cents": services.refunded_cents(order.id)}
        audit.record(action="order.refund", entity_type="order", entity_id=order.id,
                     actor=actor, before=state, after=state, reason=reserved.reason,
                     details={"refund_request_id": reserved.request_id,
                              "provider_refund_id": provider_refund_id,
                              "amount_cents": reserved.amount_cents,
                              "already_recorded_by": "provider webhook"})
    request_row.status = SUCCEEDED
    request_row.provider_refund_id = provider_refund_id
    request_row.error = None
    db.session.commit()
    return RefundResult(request_row.to_dict(), replayed=False)


def _finish_failed(request_id: int, error: str) -> RefundResult:
    request_row = db.session.get(RefundRequest, request_id, with_for_update=True)
    request_row.status = FAILED
    request_row.error = error[:500]
    db.session.commit()
    return RefundResult(request_row.to_dict(), replayed=False)


def _leave_pending(request_id: int, error: str) -> RefundResult:
    request_row = db.session.get(RefundRequest, request_id, with_for_update=True)
    request_row.error = error[:500]
    db.session.commit()
    return RefundResult(request_row.to_dict(), replayed=False)


@not_critical("reads")
def refund_requests_of(order_id: int) -> list[dict]:
    return [r.to_dict() for r in db.session.scalars(
        select(RefundRequest).where(RefundRequest.order_id == order_id)
        .order_by(RefundRequest.id))]
