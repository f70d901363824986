"""Property: hostile deliveries, signed or not, never get a 5xx, never leave a row when
refused, and every event that is stored reaches a terminal status.

Hypothesis generates the deliveries to both endpoints: event bodies whose ids, types,
amounts, currencies and order references are hostile (lone surrogates, NUL, control
characters, exponent amounts, huge or negative numbers, floats, deep nesting), raw
bytes, and hostile headers, each either correctly signed (so it gets past the signature
to the parser, the database and the worker) or not. Each stored event is processed at
once in this process by the real task (`task.apply`), retries included.

Bounded for CI: a fixed number of examples, no per-example deadline, no example
database (a failure prints the example to reproduce it with @example).
"""

from __future__ import annotations

import json
import uuid

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tests.support.db import scalar
from tests.support.events import PAYPAL_WEBHOOK_ID, STRIPE_SECRET, make_order, stripe_headers
from tests.support.paypal_keys import sign_delivery

TERMINAL = ("processed", "ignored", "failed")
CERT_URL = "https://api.paypal.com/v1/notifications/certs/CERT-PROPERTY"

HOSTILE_TEXT = st.one_of(
    st.text(max_size=12),
    st.sampled_from(["\ud800", "\udfff", "a\x00b", "\x00", "\x1b[2J", "\u202eevil", "",
                     " ", "1e999990", "-5.00", "NaN", "10.005", "9" * 40, "évt", "|"]),
)
HOSTILE_NUMBER = st.one_of(
    st.integers(min_value=-(10**20), max_value=10**20), st.floats(allow_nan=False),
    st.sampled_from([0, 1, 10**15, 10**15 + 1, 2**63, -1, True, None]), HOSTILE_TEXT,
)
AMOUNT = st.integers(min_value=0, max_value=3000)
CURRENCY = st.one_of(st.sampled_from(["eur", "eur", "EUR", "jpy", "kwd", "isk", "usd"]),
                     HOSTILE_TEXT)
STRIPE_TYPES = st.one_of(st.sampled_from([
    "payment_intent.succeeded", "payment_intent.payment_failed", "charge.refunded",
    "charge.dispute.created", "refund.updated", "customer.updated"]), HOSTILE_TEXT)
PAYPAL_TYPES = st.one_of(st.sampled_from([
    "PAYMENT.CAPTURE.COMPLETED", "PAYMENT.CAPTURE.DENIED", "PAYMENT.CAPTURE.REFUNDED",
    "PAYMENT.CAPTURE.REVERSED", "CHECKOUT.ORDER.APPROVED"]), HOSTILE_TEXT)
JSON_LEAVES = st.one_of(st.none(), st.booleans(), HOSTILE_NUMBER, HOSTILE_TEXT)
ANY_JSON = st.recursive(JSON_LEAVES, lambda children: st.one_of(
    st.lists(children, max_size=3), st.dictionaries(HOSTILE_TEXT, children, max_size=3)),
    max_leaves=12)
LATIN1_HEADER = st.text(st.characters(max_codepoint=0xFF, exclude_characters="\r\n"),
                        max_size=80)


def mostly(valid, hostile):
    """`valid` three times in four: enough hostile values, and enough events that get
    far enough (past parsing, into the handlers) to test what lies behind."""
    return st.one_of(valid, valid, valid, hostile)


def order_reference(order_id: int):
    return mostly(st.sampled_from([str(order_id), order_id]), HOSTILE_NUMBER)


@st.composite
def stripe_body(draw, order_id: int) -> bytes:
    obj = {
        "id": draw(mostly(st.just(f"pi_{uuid.uuid4().hex[:10]}"), HOSTILE_TEXT)),
        "amount": draw(mostly(AMOUNT, HOSTILE_NUMBER)),
        "amount_received": draw(mostly(AMOUNT, HOSTILE_NUMBER)),
        "amount_refunded": draw(mostly(AMOUNT, HOSTILE_NUMBER)),
        "amount_captured": draw(mostly(AMOUNT, HOSTILE_NUMBER)),
        "currency": draw(CURRENCY), "payment_intent": draw(st.one_of(st.none(), HOSTILE_TEXT)),
        "status": draw(st.one_of(st.sampled_from(["succeeded", "pending", "failed"]),
                                 HOSTILE_TEXT)),
        "metadata": {"order_id": draw(order_reference(order_id))},
        "extra": draw(ANY_JSON),
    }
    if draw(st.booleans()):
        obj["refunds"] = {"has_more": draw(st.booleans()), "data": draw(st.lists(
            st.fixed_dictionaries({"id": HOSTILE_TEXT, "amount": HOSTILE_NUMBER,
                                   "currency": CURRENCY, "status": HOSTILE_TEXT}), max_size=3))}
    event = {"id": draw(mostly(st.just(f"evt_{uuid.uuid4().hex}"), HOSTILE_TEXT)),
             "object": "event", "type": draw(STRIPE_TYPES),
             "livemode": draw(mostly(st.just(False), JSON_LEAVES)), "data": {"object": obj}}
    return json.dumps(event).encode()


@st.composite
def paypal_body(draw, order_id: int) -> bytes:
    resource = {
        "id": draw(mostly(st.just(f"CAP-{uuid.uuid4().hex[:10]}"), HOSTILE_TEXT)),
        "status": draw(st.one_of(st.sampled_from(["COMPLETED", "PENDING"]), HOSTILE_TEXT)),
        "custom_id": draw(order_reference(order_id)),
        "amount": {"value": draw(mostly(AMOUNT.map(lambda a: f"{a / 100:.2f}"), HOSTILE_NUMBER)),
                   "currency_code": draw(CURRENCY)},
        "links": draw(st.one_of(ANY_JSON, st.just([{"rel": "up", "href": "https://api.paypal"
                                                    ".com/v2/payments/captures/CAP-1"}]))),
    }
    event = {"id": draw(mostly(st.just(f"WH-{uuid.uuid4().hex}"), HOSTILE_TEXT)),
             "event_type": draw(PAYPAL_TYPES), "resource": resource}
    return json.dumps(event).encode()


def deep(depth: int) -> bytes:
    return (f'{{"id": "evt_deep_{uuid.uuid4().hex}", "type": "x", "event_type": "x", '
            f'"data": {"[" * depth}{"]" * depth}}}').encode()


@st.composite
def delivery(draw, order_id: int) -> tuple[str, bytes, str]:
    provider = draw(st.sampled_from(["stripe", "paypal"]))
    kind = draw(st.sampled_from(["event"] * 6 + ["deep", "bytes"]))
    if kind == "event":
        body = draw(stripe_body(order_id) if provider == "stripe" else paypal_body(order_id))
    elif kind == "deep":
        body = deep(draw(st.integers(min_value=1, max_value=3000)))
    else:
        body = draw(st.binary(max_size=200))
    signing = draw(st.sampled_from(["signed"] * 4 + ["unsigned", "hostile_headers"]))
    return provider, body, signing


def headers_for(provider: str, body: bytes, signing: str, data, paypal_key) -> dict:
    if signing == "hostile_headers":
        names = (["Stripe-Signature"] if provider == "stripe" else
                 ["PAYPAL-TRANSMISSION-ID", "PAYPAL-TRANSMISSION-TIME", "PAYPAL-TRANSMISSION-SIG",
                  "PAYPAL-CERT-URL", "PAYPAL-AUTH-ALGO"])
        return {name: data.draw(LATIN1_HEADER) for name in names}
    if signing == "unsigned":
        return {}
    if provider == "stripe":
        try:
            return stripe_headers(body)
        except UnicodeDecodeError:  # not UTF-8: sign the bytes as the provider would
            return {"Stripe-Signature": _stripe_signature(body)}
    return sign_delivery(paypal_key, body=body, webhook_id=PAYPAL_WEBHOOK_ID, cert_url=CERT_URL)


def _stripe_signature(body: bytes) -> str:
    import hashlib
    import hmac
    import time

    timestamp = int(time.time())
    digest = hmac.new(STRIPE_SECRET.encode(), f"{timestamp}.".encode() + body,
                      hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def counts() -> tuple[int, int]:
    return (scalar("SELECT count(*) FROM webhook_events"),
            scalar("SELECT count(*) FROM paypal_transmissions"))


@pytest.fixture
def order_id(ctx):
    return make_order(total_cents=1000)


@settings(max_examples=200, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large])
@given(data=st.data())
def test_hostile_deliveries_never_5xx_leave_no_row_when_refused_and_end_terminal(
        client, order_id, paypal_signing, data):
    provider, body, signing = data.draw(delivery(order_id))
    headers = headers_for(provider, body, signing, data, paypal_signing[0])
    before = counts()

    response = client.post(f"/webhooks/{provider}", data=body, headers=headers)

    assert response.status_code < 500, (response.status_code, response.get_data(as_text=True))
    event(f"{signing}: {response.status_code}")  # --hypothesis-show-statistics
    if response.status_code != 200:
        assert counts() == before, "a refused delivery left a row"
        return
    assert signing == "signed", "an unsigned delivery was accepted"
    answer = response.get_json()
    if answer["status"] != "stored":
        return
    event_pk = scalar("SELECT max(id) FROM webhook_events")
    task = client.application.extensions["celery"].tasks["webhooks.process_event"]
    task.apply(args=[event_pk])
    status = scalar("SELECT status FROM webhook_events WHERE id = :i", i=event_pk)
    event(f"stored, then {status}")
    assert status in TERMINAL, status
