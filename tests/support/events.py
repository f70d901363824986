"""Signed provider deliveries and domain rows for tests."""

from __future__ import annotations

import json
import time
import uuid

import stripe

from service.clock import utcnow
from service.extensions import db
from service.orders.models import Customer, Order

STRIPE_SECRET = "whsec_test_primary"
PAYPAL_WEBHOOK_ID = "WH-TEST-0001"
PAYPAL_CERT_URL = "https://api.paypal.com/v1/notifications/certs/CERT-TEST"


def stripe_event(event_type: str, obj: dict, *, event_id: str | None = None) -> tuple[bytes, str]:
    event_id = event_id or f"evt_{uuid.uuid4().hex}"
    # Test-mode events, as the tests' development mode expects (STRIPE_LIVEMODE=false).
    body = json.dumps({"id": event_id, "object": "event", "type": event_type,
                       "created": int(time.time()), "livemode": False,
                       "data": {"object": obj}})
    return body.encode(), event_id


def stripe_headers(body: bytes, *, secret: str = STRIPE_SECRET, timestamp: int | None = None) -> dict:
    header = stripe.WebhookSignature.generate_signature_header(body.decode(), secret, timestamp)
    return {"Stripe-Signature": header, "Content-Type": "application/json"}


def payment_intent(order_id: int, *, amount: int = 1000, intent_id: str | None = None) -> dict:
    return {"id": intent_id or f"pi_{uuid.uuid4().hex[:20]}", "object": "payment_intent",
            "amount": amount, "amount_received": amount, "currency": "eur",
            "metadata": {"order_id": str(order_id)}}


def charge_refunded(order_id: int, *, intent_id: str, amount: int, refunds: list[tuple[str, int]]) -> dict:
    return {"id": f"ch_{intent_id}", "object": "charge", "payment_intent": intent_id,
            "amount": amount, "amount_refunded": sum(a for _, a in refunds), "currency": "eur",
            "metadata": {"order_id": str(order_id)},
            "refunds": {"data": [{"id": rid, "amount": a} for rid, a in refunds]}}


def paypal_event(event_type: str, resource: dict, *, event_id: str | None = None) -> tuple[bytes, str]:
    event_id = event_id or f"WH-{uuid.uuid4().hex[:20].upper()}"
    body = json.dumps({"id": event_id, "event_type": event_type, "resource_type": "capture",
                       "resource": resource})
    return body.encode(), event_id


def paypal_headers(private_key, body: bytes, *, webhook_id: str = PAYPAL_WEBHOOK_ID,
                   cert_url: str = PAYPAL_CERT_URL) -> dict:
    from tests.support.paypal_keys import sign_delivery

    headers = sign_delivery(private_key, body=body, webhook_id=webhook_id, cert_url=cert_url)
    headers["Content-Type"] = "application/json"
    return headers


def make_order(*, total_cents: int = 1000, order_id: int | None = None, status: str = "pending",
               currency: str = "EUR") -> int:
    """Insert a customer and an order; needs an app context. Returns the order id.

    A `paid` order has the facts to match: its total received, and when.
    """
    customer = Customer(email=f"{uuid.uuid4().hex[:12]}@example.test", name="Test Customer")
    db.session.add(customer)
    db.session.flush()
    order = Order(customer_id=customer.id, status=status, currency=currency,
                  total_cents=total_cents)
    if status == "paid":
        order.paid_cents, order.paid_at = total_cents, utcnow()
    if order_id is not None:
        order.id = order_id
    db.session.add(order)
    db.session.commit()
    return order.id


def make_orders(count: int, *, total_cents: int = 1000) -> list[int]:
    customer = Customer(email=f"{uuid.uuid4().hex[:12]}@example.test", name="Bulk Customer")
    db.session.add(customer)
    db.session.flush()
    orders = [Order(customer_id=customer.id, status="pending", currency="EUR",
                    total_cents=total_cents) for _ in range(count)]
    db.session.add_all(orders)
    db.session.commit()
    return [o.id for o in orders]


def process_stored_event(event_pk: int) -> str:
    """Claim and apply one stored event as a worker would, in this process (needs an app
    context); returns the outcome (`processed`, ...)."""
    from service.webhooks import processing

    claimed = processing.claim(event_pk, lease_seconds=30, max_attempts=5)
    return processing.apply(claimed)
