"""Handlers per (provider, event type): read the provider's payload, call the orders service.

A handler only translates; every change of money or status happens in
`service.orders.services`, inside the worker's transaction.
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal, InvalidOperation

from service.orders import services as orders
from service.orders.money import exponent
from service.webhooks.exceptions import PermanentError

Handler = Callable[[dict, str], object]


_HANDLERS: dict[tuple[str, str], Handler] = {}


def handles(provider: str, event_type: str):
    def register(func: Handler) -> Handler:
        _HANDLERS[(provider, event_type)] = func
        return func
    return register


def lookup(provider: str, event_type: str) -> Handler | None:
    return _HANDLERS.get((provider, event_type))


def registered() -> list[tuple[str, str]]:
    return sorted(_HANDLERS)


# ---- Stripe -------------------------------------------------------------------------

def _stripe_object(event: dict) -> dict:
    obj = (event.get("data") or {}).get("object")
    if not isinstance(obj, dict):
        raise PermanentError("event has no data.object")
    return obj


def _stripe_order_id(obj: dict, payment_intent_id: str | None) -> int:
    metadata = obj.get("metadata") or {}
    raw = metadata.get("order_id") if isinstance(metadata, dict) else None
    if raw is not None:
        return _order_id(raw)
    if payment_intent_id:
        found = orders.order_id_for_payment("stripe", payment_intent_id)
        if found is not None:
            return found
    raise PermanentError("no metadata.order_id and no known payment to find the order by")


@handles("stripe", "payment_intent.succeeded")
def stripe_payment_succeeded(event: dict, source: str):
    intent = _stripe_object(event)
    amount = intent.get("amount_received") or intent.get("amount") or 0
    return orders.record_payment(
        order_id=_stripe_order_id(intent, None),
        provider="stripe",
        provider_payment_id=_required_str(intent, "id"),
        amount_cents=_int(amount),
        currency=str(intent.get("currency") or "eur"),
        source=source,
    )


@handles("stripe", "payment_intent.payment_failed")
def stripe_payment_failed(event: dict, source: str):
    intent = _stripe_object(event)
    error = intent.get("last_payment_error") or {}
    reason = error.get("code") if isinstance(error, dict) else None
    return orders.record_payment_failure(
        order_id=_stripe_order_id(intent, None),
        provider="stripe",
        provider_payment_id=_required_str(intent, "id"),
        amount_cents=_int(intent.get("amount") or 0),
        currency=str(intent.get("currency") or "eur"),
        reason=f"payment failed: {reason or 'unknown'}",
        source=source,
    )


@handles("stripe", "charge.refunded")
def stripe_charge_refunded(event: dict, source: str):
    charge = _stripe_object(event)
    payment_intent = charge.get("payment_intent")
    order_id = _stripe_order_id(charge, payment_intent)
    currency = str(charge.get("currency") or "eur")
    refunds = ((charge.get("refunds") or {}).get("data")) or []
    if refunds:
        outcome = None
        for refund in refunds:
            outcome = orders.record_refund(
                order_id=order_id, provider="stripe",
                provider_refund_id=_required_str(refund, "id"),
                provider_payment_id=payment_intent,
                amount_cents=_int(refund.get("amount") or 0), currency=currency, source=source,
            )
        return outcome
    # Newer API versions omit the refunds list: the cumulative amount identifies the step.
    total = _int(charge.get("amount_refunded") or 0)
    already = orders.refunded_cents(order_id)
    return orders.record_refund(
        order_id=order_id, provider="stripe",
        provider_refund_id=f"{_required_str(charge, 'id')}:{total}",
        provider_payment_id=payment_intent,
        amount_cents=max(total - already, 0), currency=currency, source=source,
    )


@handles("stripe", "charge.dispute.created")
def stripe_dispute_created(event: dict, source: str):
    dispute = _stripe_object(event)
    payment_intent = dispute.get("payment_intent")
    return orders.record_dispute(
        order_id=_stripe_order_id(dispute, payment_intent),
        provider="stripe",
        provider_payment_id=payment_intent,
        source=source,
    )


# ---- PayPal -------------------------------------------------------------------------

def _paypal_resource(event: dict) -> dict:
    resource = event.get("resource")
    if not isinstance(resource, dict):
        raise PermanentError("event has no resource")
    return resource


def _paypal_amount(resource: dict) -> tuple[int, str]:
    amount = resource.get("amount") or {}
    currency = str(amount.get("currency_code") or "EUR").upper()
    try:
        value = Decimal(str(amount.get("value", "0")))
    except InvalidOperation as exc:
        raise PermanentError("amount.value is not a number") from exc
    return int((value * (10 ** exponent(currency))).to_integral_value()), currency


def _paypal_capture_id_of_refund(resource: dict) -> str | None:
    for link in resource.get("links") or []:
        if isinstance(link, dict) and link.get("rel") == "up" and "/captures/" in str(link.get("href")):
            return str(link["href"]).rstrip("/").rsplit("/", 1)[-1]
    return None


def _paypal_order_id(resource: dict, capture_id: str | None) -> int:
    raw = resource.get("custom_id")
    if raw:
        return _order_id(raw)
    if capture_id:
        found = orders.order_id_for_payment("paypal", capture_id)
        if found is not None:
            return found
    raise PermanentError("no custom_id and no known capture to find the order by")


@handles("paypal", "PAYMENT.CAPTURE.COMPLETED")
def paypal_capture_completed(event: dict, source: str):
    capture = _paypal_resource(event)
    amount, currency = _paypal_amount(capture)
    return orders.record_payment(
        order_id=_paypal_order_id(capture, None), provider="paypal",
        provider_payment_id=_required_str(capture, "id"),
        amount_cents=amount, currency=currency, source=source,
    )


@handles("paypal", "PAYMENT.CAPTURE.DENIED")
def paypal_capture_denied(event: dict, source: str):
    capture = _paypal_resource(event)
    amount, currency = _paypal_amount(capture)
    return orders.record_payment_failure(
        order_id=_paypal_order_id(capture, None), provider="paypal",
        provider_payment_id=_required_str(capture, "id"),
        amount_cents=amount, currency=currency, reason="capture denied", source=source,
    )


@handles("paypal", "PAYMENT.CAPTURE.REFUNDED")
def paypal_capture_refunded(event: dict, source: str):
    refund = _paypal_resource(event)
    capture_id = _paypal_capture_id_of_refund(refund)
    amount, currency = _paypal_amount(refund)
    return orders.record_refund(
        order_id=_paypal_order_id(refund, capture_id), provider="paypal",
        provider_refund_id=_required_str(refund, "id"), provider_payment_id=capture_id,
        amount_cents=amount, currency=currency, source=source,
    )


# ---- helpers ------------------------------------------------------------------------

def _order_id(raw: object) -> int:
    try:
        value = int(str(raw).strip())
    except ValueError as exc:
        raise PermanentError("order reference is not a number") from exc
    if value <= 0:
        raise PermanentError("order reference is not a positive number")
    return value


def _int(raw: object) -> int:
    if isinstance(raw, bool) or not isinstance(raw, int):
        raise PermanentError("amount is not an integer")
    return raw


def _required_str(obj: dict, key: str) -> str:
    value = obj.get(key) if isinstance(obj, dict) else None
    if not isinstance(value, str) or not value:
        raise PermanentError(f"{key} is missing")
    return value
