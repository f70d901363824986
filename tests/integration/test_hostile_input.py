"""Hostile deliveries, validly signed or not, get a clear 400 and store nothing.

Each case was found by fuzzing the endpoints from outside: before, they were answered
500 (an exception escaped) or 503 (the database refused the row, so the provider would
have retried for days).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time

import pytest

from service.webhooks.verifiers import DEFAULT_MAX_DEPTH
from tests.support.db import scalar
from tests.support.events import (
    STRIPE_SECRET,
    paypal_headers,
    stripe_headers,
)


@pytest.fixture(autouse=True)
def _context(ctx):
    """Every test reads the tables afterwards."""


def post_stripe(client, body: bytes, headers: dict | None = None):
    return client.post("/webhooks/stripe", data=body, headers=headers or stripe_headers(body))


def deep_body(event_id: str, depth: int) -> bytes:
    """An event whose `data` is `depth` nested lists."""
    inner = "[" * depth + "]" * depth
    return f'{{"id": "{event_id}", "object": "event", "type": "x.y", "data": {inner}}}'.encode()


def assert_refused(response, reason_part: str) -> None:
    assert response.status_code == 400, response.get_data(as_text=True)
    assert reason_part in response.get_json()["reason"]
    assert "Retry-After" not in response.headers
    assert scalar("SELECT count(*) FROM webhook_events") == 0


def test_non_ascii_signature_before_the_right_one_is_a_400(client):
    body = json.dumps({"id": "evt_nonascii", "object": "event", "type": "x.y"}).encode()
    timestamp = int(time.time())
    good = hmac.new(STRIPE_SECRET.encode(), f"{timestamp}.{body.decode()}".encode(),
                    hashlib.sha256).hexdigest()
    header = f"t={timestamp},v1=é{good[1:]},v1={good}"

    response = post_stripe(client, body, {"Stripe-Signature": header.encode("utf-8")
                                          .decode("latin-1")})

    assert_refused(response, "malformed Stripe-Signature header")


@pytest.mark.parametrize("depth", [DEFAULT_MAX_DEPTH + 1, 1000, 5000])
def test_signed_body_nested_deeper_than_the_limit_is_a_400(client, depth):
    body = deep_body(f"evt_deep_{depth}", depth)

    assert_refused(post_stripe(client, body), f"nested deeper than {DEFAULT_MAX_DEPTH} levels")


def test_signed_body_at_the_depth_limit_is_stored(client):
    # The event object itself is one level, so the limit leaves depth - 1 below it.
    body = deep_body("evt_deep_ok", DEFAULT_MAX_DEPTH - 1)

    response = post_stripe(client, body)

    assert response.status_code == 200, response.get_data(as_text=True)


@pytest.mark.parametrize("field", ["id", "type"])
@pytest.mark.parametrize("escape", ["\\ud800", "\\u0000", "\\u001b"])
def test_signed_event_whose_id_or_type_cannot_be_stored_is_a_400(client, field, escape):
    event = {"id": "evt_hostile", "object": "event", "type": "payment_intent.succeeded"}
    body = json.dumps(event).replace(f'"{event[field]}"', f'"{event[field]}{escape}"').encode()
    assert escape.encode() in body

    assert_refused(post_stripe(client, body), "cannot be stored")


def test_paypal_event_whose_id_holds_nul_is_a_400(client, paypal_signing):
    body = b'{"id": "WH-NUL\\u0000", "event_type": "PAYMENT.CAPTURE.COMPLETED", "resource": {}}'

    response = client.post("/webhooks/paypal", data=body,
                           headers=paypal_headers(paypal_signing[0], body))

    assert_refused(response, "cannot be stored")
    assert scalar("SELECT count(*) FROM paypal_transmissions") == 0
