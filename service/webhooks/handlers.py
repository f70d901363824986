"""Handlers per (provider, event type): read the provider's payload, call the orders service.

A handler only translates; every change of money or status happens in
`service.orders.services`, inside the worker's transaction.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from flask import current_app

from service.orders import money
from service.orders import services as orders
from service.webhooks.exceptions import OrderNotYetKnown, PermanentError

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
    _check_livemode(event)
    obj = (event.get("data") or {}).get("object") if isinstance(event.get("data"), dict) else None
    if not isinstance(obj, dict):
        raise PermanentError("event has no data.object")
    return obj


def _check_livemode(event: dict) -> None:
    """A test-mode event never pays a live order (nor refunds or disputes one), and a
    live event never reaches a test-mode service: refused, so it becomes a failure row
    with a P1 signal. After fixing STRIPE_LIVEMODE, a replay processes it."""
    expected = bool(current_app.config["STRIPE_LIVEMODE"])
    if event.get("livemode") is not expected:
        mode = "live" if expected else "test"
        raise PermanentError(f"livemode does not match STRIPE_LIVEMODE (the service expects "
                             f"{mode}-mode events)")


def _stripe_currency(obj: dict) -> str:
    return money.currency_code(obj.get("currency"))


def _stripe_order_id(obj: dict, payment_intent_id: str | None) -> int:
    metadata = obj.get("metadata") or {}
    raw = metadata.get("order_id") if isinstance(metadata, dict) else None
    if raw is not None:
        return _order_id(raw)
    if payment_intent_id:
        found = orders.order_id_for_payment("stripe", payment_intent_id)
        if found is not None:
            return found
        # A refund or dispute that outran its payment's event: wait for the payment.
        raise OrderNotYetKnown("no metadata.order_id, and its payment is not recorded yet")
    raise PermanentError("no metadata.order_id and no known payment to find the order by")


@handles("stripe", "payment_intent.succeeded")
def stripe_payment_succeeded(event: dict, source: str):
    intent = _stripe_object(event)
    currency = _stripe_currency(intent)
    # What was received, not what was asked: a partial capture is a partial payment.
    if "amount_received" not in intent:
        raise PermanentError("payment intent has no amount_received")
    return orders.record_payment(
        order_id=_stripe_order_id(intent, None),
        provider="stripe",
        provider_payment_id=_required_str(intent, "id"),
        amount_cents=money.from_stripe(intent["amount_received"], currency),
        currency=currency,
        source=source,
    )


@handles("stripe", "payment_intent.payment_failed")
def stripe_payment_failed(event: dict, source: str):
    intent = _stripe_object(event)
    currency = _stripe_currency(intent)
    error = intent.get("last_payment_error") or {}
    reason = error.get("code") if isinstance(error, dict) else None
    reason = reason if isinstance(reason, str) and _IDENTIFIER.fullmatch(reason) else "unknown"
    return orders.record_payment_failure(
        order_id=_stripe_order_id(intent, None),
        provider="stripe",
        provider_payment_id=_required_str(intent, "id"),
        amount_cents=money.from_stripe(intent.get("amount", 0), currency),
        currency=currency,
        reason=f"payment failed: {reason}",
        source=source,
    )


@handles("stripe", "charge.refunded")
def stripe_charge_refunded(event: dict, source: str):
    """The charge with its refunds: the refund list when the event carries all of it,
    else the cumulative `amount_refunded` (newer API versions omit the list)."""
    charge = _stripe_object(event)
    payment_intent = _optional_str(charge, "payment_intent")
    currency = _stripe_currency(charge)
    payment_key = payment_intent or _required_str(charge, "id")
    captured = charge.get("amount_captured")
    captured = None if captured is None else money.from_stripe(captured, currency)
    listed = charge.get("refunds")
    items = listed.get("data") if isinstance(listed, dict) else None
    complete = isinstance(items, list) and items and listed.get("has_more") is not True
    common = {"order_id": _stripe_order_id(charge, payment_intent), "provider": "stripe",
              "provider_payment_id": payment_key, "captured_cents": captured,
              "source": source}
    if complete:
        return orders.apply_refunds(**common, refunds=[
            _stripe_refund_fact(refund, currency) for refund in items])
    if "amount_refunded" not in charge:
        raise PermanentError("charge has neither a refund list nor amount_refunded")
    return orders.apply_refunds(**common, cumulative=orders.CumulativeRefund(
        key=_required_str(charge, "id"),
        total_cents=money.from_stripe(charge["amount_refunded"], currency),
        currency=currency))


def _stripe_refund_fact(refund: object, default_currency: str) -> orders.RefundFact:
    if not isinstance(refund, dict):
        raise PermanentError("refund is not an object")
    currency = money.currency_code(refund.get("currency") or default_currency)
    status = refund.get("status", "succeeded")
    if status not in money.RefundStatus.PROVIDER:
        raise PermanentError("refund status is not one Stripe uses")
    return orders.RefundFact(_required_str(refund, "id"),
                             money.from_stripe(refund.get("amount"), currency), currency, status)


@handles("stripe", "charge.refund.updated")
@handles("stripe", "refund.created")
@handles("stripe", "refund.updated")
@handles("stripe", "refund.failed")
def stripe_refund_changed(event: dict, source: str):
    """One refund object: its status moved (pending -> succeeded, succeeded -> failed)."""
    refund = _stripe_object(event)
    payment_intent = _optional_str(refund, "payment_intent")
    currency = _stripe_currency(refund)
    return orders.apply_refunds(
        order_id=_stripe_order_id(refund, payment_intent), provider="stripe",
        provider_payment_id=payment_intent or _optional_str(refund, "charge"),
        source=source, refunds=[_stripe_refund_fact(refund, currency)])


@handles("stripe", "charge.dispute.created")
def stripe_dispute_created(event: dict, source: str):
    dispute = _stripe_object(event)
    payment_intent = _optional_str(dispute, "payment_intent")
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
    """(minor units, currency) of a PayPal `amount` object: a bounded decimal string."""
    amount = resource.get("amount")
    if not isinstance(amount, dict):
        raise PermanentError("resource has no amount")
    currency = money.currency_code(amount.get("currency_code"))
    return money.from_decimal_string(amount.get("value"), currency), currency


def _paypal_capture_id_of_refund(resource: dict) -> str | None:
    links = resource.get("links")
    for link in links if isinstance(links, list) else ():
        if not isinstance(link, dict):
            continue
        href = link.get("href")
        if link.get("rel") == "up" and isinstance(href, str) and "/captures/" in href:
            return _storable(href.rstrip("/").rsplit("/", 1)[-1], "capture id")
    return None


def _paypal_order_id(resource: dict, capture_id: str | None) -> int:
    raw = resource.get("custom_id")
    if raw:
        return _order_id(raw)
    if capture_id:
        found = orders.order_id_for_payment("paypal", capture_id)
        if found is not None:
            return found
        # A refund or reversal that outran its capture's event: wait for the capture.
        raise OrderNotYetKnown("no custom_id, and its capture is not recorded yet")
    raise PermanentError("no custom_id and no known capture to find the order by")


# PayPal refund statuses, in this service's terms.
_PAYPAL_REFUND_STATUS = {"COMPLETED": "succeeded", "PENDING": "pending", "FAILED": "failed",
                         "CANCELLED": "canceled"}


@handles("paypal", "PAYMENT.CAPTURE.COMPLETED")
def paypal_capture_completed(event: dict, source: str):
    """One capture, whose amount is what was received (a partial capture pays part)."""
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
@handles("paypal", "PAYMENT.CAPTURE.REVERSED")
def paypal_capture_refunded(event: dict, source: str):
    """A refund resource; a reversal (PayPal taking the money back) is one too."""
    refund = _paypal_resource(event)
    capture_id = _paypal_capture_id_of_refund(refund)
    amount, currency = _paypal_amount(refund)
    status = _PAYPAL_REFUND_STATUS.get(refund.get("status", "COMPLETED"))
    if status is None:
        raise PermanentError("refund status is not one PayPal uses")
    return orders.apply_refunds(
        order_id=_paypal_order_id(refund, capture_id), provider="paypal",
        provider_payment_id=capture_id, source=source,
        refunds=[orders.RefundFact(_required_str(refund, "id"), amount, currency, status)])


# ---- helpers ------------------------------------------------------------------------

# Provider identifiers and codes: printable, bounded, nothing PostgreSQL refuses.
_IDENTIFIER = re.compile(r"[\x21-\x7e]{1,255}")


def _order_id(raw: object) -> int:
    if isinstance(raw, bool) or not isinstance(raw, str | int):
        raise PermanentError("order reference is not a number")
    text = str(raw).strip()
    if not text.isascii() or not text.isdigit() or len(text) > 18:
        raise PermanentError("order reference is not a number")
    value = int(text)
    if value <= 0:
        raise PermanentError("order reference is not a positive number")
    return value


def _required_str(obj: dict, key: str) -> str:
    value = obj.get(key) if isinstance(obj, dict) else None
    if not isinstance(value, str) or not value:
        raise PermanentError(f"{key} is missing")
    return _storable(value, key)


def _optional_str(obj: dict, key: str) -> str | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise PermanentError(f"{key} is not a string")
    return _storable(value, key)


def _storable(value: str, what: str) -> str:
    """An identifier the database can store: checked before any INSERT (a NUL or a lone
    surrogate would otherwise fail deep in the driver, with the value in its message)."""
    if not _IDENTIFIER.fullmatch(value):
        raise PermanentError(f"{what} is not a plain identifier")
    return value
