import time

import pytest

from service.webhooks.exceptions import MalformedEvent, SignatureError
from service.webhooks.verifiers import StripeVerifier
from tests.support.events import stripe_event, stripe_headers

PRIMARY = "whsec_primary"
OLD = "whsec_old"


def verifier(*secrets):
    return StripeVerifier(secrets=list(secrets) or [PRIMARY], tolerance=300)


def test_valid_signature_is_accepted_and_parsed():
    body, event_id = stripe_event("payment_intent.succeeded", {"id": "pi_1"})
    event = verifier().verify(body, stripe_headers(body, secret=PRIMARY))
    assert (event.provider, event.event_id, event.event_type) == (
        "stripe", event_id, "payment_intent.succeeded")
    assert event.data["data"]["object"]["id"] == "pi_1"


def test_tampered_body_is_rejected():
    body, _ = stripe_event("payment_intent.succeeded", {"id": "pi_1", "amount": 100})
    headers = stripe_headers(body, secret=PRIMARY)
    tampered = body.replace(b'"amount": 100', b'"amount": 1')
    with pytest.raises(SignatureError, match="does not match"):
        verifier().verify(tampered, headers)


def test_wrong_secret_is_rejected():
    body, _ = stripe_event("payment_intent.succeeded", {"id": "pi_1"})
    with pytest.raises(SignatureError):
        verifier().verify(body, stripe_headers(body, secret="whsec_attacker"))


def test_stale_timestamp_is_rejected():
    body, _ = stripe_event("payment_intent.succeeded", {"id": "pi_1"})
    headers = stripe_headers(body, secret=PRIMARY, timestamp=int(time.time()) - 301)
    with pytest.raises(SignatureError, match="tolerance"):
        verifier().verify(body, headers)


def test_timestamp_within_tolerance_is_accepted():
    body, _ = stripe_event("payment_intent.succeeded", {"id": "pi_1"})
    headers = stripe_headers(body, secret=PRIMARY, timestamp=int(time.time()) - 290)
    assert verifier().verify(body, headers).event_type == "payment_intent.succeeded"


@pytest.mark.parametrize("headers", [{}, {"Stripe-Signature": ""}])
def test_missing_signature_header_is_rejected(headers):
    body, _ = stripe_event("payment_intent.succeeded", {"id": "pi_1"})
    with pytest.raises(SignatureError, match="missing"):
        verifier().verify(body, headers)


def test_garbage_signature_header_is_rejected():
    body, _ = stripe_event("payment_intent.succeeded", {"id": "pi_1"})
    with pytest.raises(SignatureError):
        verifier().verify(body, {"Stripe-Signature": "nonsense"})


def test_rotated_secret_accepts_old_and_new():
    both = verifier(PRIMARY, OLD)
    for secret in (PRIMARY, OLD):
        body, event_id = stripe_event("charge.refunded", {"id": "ch_1"})
        assert both.verify(body, stripe_headers(body, secret=secret)).event_id == event_id
    body, _ = stripe_event("charge.refunded", {"id": "ch_1"})
    with pytest.raises(SignatureError):
        verifier(PRIMARY).verify(body, stripe_headers(body, secret=OLD))


def test_valid_signature_over_non_json_is_malformed():
    body = b"not json"
    with pytest.raises(MalformedEvent):
        verifier().verify(body, stripe_headers(body, secret=PRIMARY))


@pytest.mark.parametrize("body", [b'{"type": "x"}', b'{"id": "evt_1"}', b'[1, 2]',
                                  b'{"id": 5, "type": "x"}', b'{"id": "", "type": "x"}'])
def test_event_without_id_or_type_is_malformed(body):
    with pytest.raises(MalformedEvent):
        verifier().verify(body, stripe_headers(body, secret=PRIMARY))


def test_non_utf8_body_is_malformed():
    with pytest.raises(MalformedEvent):
        verifier().verify(b"\xff\xfe", {"Stripe-Signature": "t=1,v1=00"})
