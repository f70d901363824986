"""HTTP intake against the real PostgreSQL and Redis, through the Flask test client.

No worker runs here: a publish that reaches Redis leaves a Celery message on the
`webhooks` list, which the tests read back. What is asserted is the stored state (rows in
`webhook_events`, keys and messages in Redis) and the HTTP answer, never a log line
alone: "nothing is acknowledged that is not stored", "each event is stored once", "a
rejected delivery stores nothing".
"""

from __future__ import annotations

import base64
import io
import json
import logging
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from sqlalchemy import select
from werkzeug.test import EnvironBuilder, TestResponse, run_wsgi_app
from werkzeug.wrappers import Request

from service.extensions import db
from service.webhooks.models import WebhookEvent
from tests.support.apps import use_celery_of
from tests.support.events import (
    STRIPE_SECRET,
    paypal_event,
    paypal_headers,
    stripe_event,
    stripe_headers,
)

STRIPE_OLD_SECRET = "whsec_test_rotated_out"  # the second secret conftest configures
MAX_BODY = 256 * 1024
CUSTOMER_EMAIL = "jane.doe+intake@example.com"
DEAD_DATABASE_URL = "postgresql+psycopg://postgres@127.0.0.1:1/nowhere"
DEAD_REDIS_URL = "redis://127.0.0.1:1/0"


# --- helpers -------------------------------------------------------------------------


def stored_events(app) -> list[dict]:
    """Every row of webhook_events, read in a fresh session (what is committed)."""
    with app.app_context():
        rows = db.session.scalars(select(WebhookEvent).order_by(WebhookEvent.id)).all()
        result = [{
            "id": e.id, "provider": e.provider, "event_id": e.event_id,
            "event_type": e.event_type, "payload": e.payload, "status": e.status,
            "queued_at": e.queued_at, "request_id": e.request_id,
        } for e in rows]
        db.session.remove()
    return result


def webhook_messages(app) -> list[dict]:
    """The Celery messages waiting on the `webhooks` Redis list: task name and args."""
    messages = []
    for raw in app.extensions["redis"].lrange("webhooks", 0, -1):
        envelope = json.loads(raw)
        body = envelope["body"]
        if envelope["properties"].get("body_encoding") == "base64":
            body = base64.b64decode(body)
        args, _kwargs, _embed = json.loads(body)
        messages.append({"task": envelope["headers"]["task"], "args": args})
    return messages


def dedup_key(provider: str, event_id: str) -> str:
    # The format of service/webhooks/dedup.py (prefix "racine:dedup").
    return f"racine:dedup:{provider}:{event_id}"


def raw_stripe_body(event_id: str, *, event_type: str = "payment_intent.succeeded") -> bytes:
    """A body a re-serialisation would change: odd spacing, key order, raw non-ASCII text."""
    created = int(time.time())
    return (
        f'{{"type":"{event_type}",   "id": "{event_id}",\n  "object":"event", "created": {created},'
        ' "data": {"object": {"id": "pi_raw", "amount": 1000, "currency": "eur",'
        f' "receipt_email": "{CUSTOMER_EMAIL}", "description": "Crème brûlée, deux pièces"}}}}}}'
    ).encode()


def stripe_body_of_size(size: int) -> tuple[bytes, str]:
    """A valid Stripe event body of exactly `size` bytes."""
    event_id = f"evt_{uuid.uuid4().hex}"
    template = '{"id": "%s", "object": "event", "type": "charge.updated", "pad": "%s"}'
    empty = len((template % (event_id, "")).encode())
    body = (template % (event_id, "x" * (size - empty))).encode()
    assert len(body) == size
    return body, event_id


def post_stripe(client, body: bytes, headers: dict | None = None, **kwargs):
    return client.post("/webhooks/stripe", data=body,
                       headers=stripe_headers(body) if headers is None else headers, **kwargs)


def post_streamed(app, path: str, body: bytes, headers: dict) -> TestResponse:
    """POST without Content-Length, as a server passes on a chunked body it terminates.

    The test client always derives a Content-Length from its input, so the WSGI environ
    is built by hand and handed to the app directly.
    """
    environ = EnvironBuilder(path=path, method="POST", headers=headers).get_environ()
    environ.pop("CONTENT_LENGTH", None)
    environ["wsgi.input"] = io.BytesIO(body)
    environ["wsgi.input_terminated"] = True
    app_iter, status, response_headers = run_wsgi_app(app, environ, buffered=True)
    return TestResponse(app_iter, status, response_headers, request=Request(environ))


@pytest.fixture(autouse=True)
def _session_celery(app):
    use_celery_of(app)
    yield
    use_celery_of(app)


@contextmanager
def captured_service_logs() -> Iterator[io.StringIO]:
    """What the `service` logger writes, formatted by its own (JSON) formatter."""
    logger = logging.getLogger("service")
    assert logger.handlers, "the service logger has no handler"
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logger.handlers[0].formatter)
    logger.addHandler(handler)
    try:
        yield stream
    finally:
        logger.removeHandler(handler)


# --- Stripe: stored once ---------------------------------------------------------------


def test_valid_stripe_delivery_is_stored_verbatim_queued_and_published(client, clean):
    event_id = f"evt_{uuid.uuid4().hex}"
    body = raw_stripe_body(event_id)

    response = post_stripe(client, body)

    assert response.status_code == 200
    assert response.get_json() == {"status": "stored", "event_id": event_id}
    [row] = stored_events(clean)
    assert (row["provider"], row["event_id"], row["event_type"]) == (
        "stripe", event_id, "payment_intent.succeeded")
    assert row["payload"] == body.decode("utf-8")  # the raw body, not a re-serialisation
    assert row["status"] == "queued"
    assert row["queued_at"] is not None
    assert row["request_id"] == response.headers["X-Request-ID"]
    assert webhook_messages(clean) == [{"task": "webhooks.process_event", "args": [row["id"]]}]
    assert clean.extensions["redis"].get(dedup_key("stripe", event_id)) == b"stored"


def test_duplicate_delivery_answers_200_duplicate_and_stores_one_row(client, clean):
    body, event_id = stripe_event("payment_intent.succeeded", {"id": "pi_dup"})
    headers = stripe_headers(body)
    assert post_stripe(client, body, headers).get_json()["status"] == "stored"

    again = post_stripe(client, body, headers)
    # A redelivery is signed afresh by the provider; it is the same event all the same.
    resigned = post_stripe(client, body, stripe_headers(body))

    for response in (again, resigned):
        assert response.status_code == 200
        assert response.get_json() == {"status": "duplicate", "event_id": event_id}
    assert [r["event_id"] for r in stored_events(clean)] == [event_id]
    assert len(webhook_messages(clean)) == 1  # enqueued once, not once per delivery


def test_duplicate_after_redis_is_flushed_is_caught_by_the_database(client, clean,
                                                                   redis_claim):
    body, event_id = stripe_event("payment_intent.succeeded", {"id": "pi_flush"})
    assert post_stripe(client, body).get_json()["status"] == "stored"
    redis_claim.reset()  # dedup keys and the queued message are gone

    response = post_stripe(client, body)

    assert response.status_code == 200
    assert response.get_json()["status"] == "duplicate"
    [row] = stored_events(clean)
    assert row["event_id"] == event_id
    assert row["status"] == "queued"
    assert webhook_messages(clean) == []  # a duplicate is never enqueued again
    assert clean.extensions["redis"].get(dedup_key("stripe", event_id)) == b"stored"


def test_pending_dedup_key_does_not_make_a_new_delivery_a_duplicate(client, clean):
    body, event_id = stripe_event("payment_intent.succeeded", {"id": "pi_pending"})
    # A concurrent delivery, or one that crashed before its commit, left only a claim.
    clean.extensions["redis"].set(dedup_key("stripe", event_id), b"pending", ex=300)

    response = post_stripe(client, body)

    assert response.status_code == 200
    assert response.get_json()["status"] == "stored"
    [row] = stored_events(clean)
    assert row["event_id"] == event_id
    assert webhook_messages(clean) == [{"task": "webhooks.process_event", "args": [row["id"]]}]
    assert clean.extensions["redis"].get(dedup_key("stripe", event_id)) == b"stored"


def test_delivery_signed_with_the_rotated_out_secret_is_still_stored(client, clean):
    body, event_id = stripe_event("payment_intent.succeeded", {"id": "pi_rotated"})

    response = post_stripe(client, body, stripe_headers(body, secret=STRIPE_OLD_SECRET))

    assert response.status_code == 200
    assert response.get_json()["status"] == "stored"
    assert [r["event_id"] for r in stored_events(clean)] == [event_id]


# --- Stripe: rejections store nothing ----------------------------------------------------


def _tampered():
    body, _ = stripe_event("payment_intent.succeeded", {"id": "pi_t", "amount": 1000})
    return body.replace(b'"amount": 1000', b'"amount": 1'), stripe_headers(body)


def _wrong_secret():
    body, _ = stripe_event("payment_intent.succeeded", {"id": "pi_w"})
    return body, stripe_headers(body, secret="whsec_attacker")


def _stale():
    body, _ = stripe_event("payment_intent.succeeded", {"id": "pi_s"})
    return body, stripe_headers(body, timestamp=int(time.time()) - 600)


def _missing_header():
    body, _ = stripe_event("payment_intent.succeeded", {"id": "pi_m"})
    return body, {"Content-Type": "application/json"}


def _garbled_header():
    body, _ = stripe_event("payment_intent.succeeded", {"id": "pi_g"})
    return body, {"Stripe-Signature": "not-a-signature", "Content-Type": "application/json"}


def _signed(text: str):
    body = text.encode()
    return body, stripe_headers(body)


REJECTIONS = {
    "tampered_body": (_tampered, "bad_signature", "signature does not match"),
    "wrong_secret": (_wrong_secret, "bad_signature", "signature does not match"),
    "stale_timestamp": (_stale, "bad_signature", "tolerance"),
    "missing_header": (_missing_header, "bad_signature", "missing Stripe-Signature"),
    "garbled_header": (_garbled_header, "bad_signature", "malformed Stripe-Signature"),
    "invalid_json": (lambda: _signed('{"id": "evt_x", "type": '), "malformed_event", "not valid JSON"),
    "json_array": (lambda: _signed('["evt_x", "charge.updated"]'), "malformed_event", "not a JSON object"),
    "missing_id": (lambda: _signed('{"type": "charge.updated"}'), "malformed_event", "id is missing"),
    "missing_type": (lambda: _signed('{"id": "evt_no_type"}'), "malformed_event", "type is missing"),
    "blank_id": (lambda: _signed('{"id": "  ", "type": "charge.updated"}'), "malformed_event",
                 "id is missing"),
}


@pytest.mark.parametrize("case", list(REJECTIONS), ids=list(REJECTIONS))
def test_rejected_stripe_delivery_answers_400_and_stores_nothing(client, clean, case):
    make, code, reason = REJECTIONS[case]
    body, headers = make()

    response = post_stripe(client, body, headers)

    assert response.status_code == 400
    answer = response.get_json()
    assert answer["error"] == code
    assert reason in answer["reason"]
    assert stored_events(clean) == []
    assert webhook_messages(clean) == []
    assert clean.extensions["redis"].keys("racine:dedup:*") == []


def test_body_at_the_size_limit_is_stored(client, clean):
    body, event_id = stripe_body_of_size(MAX_BODY)

    response = post_stripe(client, body)

    assert response.status_code == 200
    assert response.get_json()["status"] == "stored"
    [row] = stored_events(clean)
    assert row["event_id"] == event_id
    assert len(row["payload"]) == MAX_BODY


def test_body_over_the_size_limit_answers_413_and_stores_nothing(client, clean):
    body, _ = stripe_body_of_size(MAX_BODY + 1)

    response = post_stripe(client, body)

    assert response.status_code == 413
    assert response.get_json()["error"] == "too_large"
    assert stored_events(clean) == []
    assert webhook_messages(clean) == []


def test_streamed_body_over_the_size_limit_answers_413_and_stores_nothing(clean):
    body, _ = stripe_body_of_size(MAX_BODY + 1)

    response = post_streamed(clean, "/webhooks/stripe", body, stripe_headers(body))

    assert response.status_code == 413
    assert response.get_json()["error"] == "too_large"
    assert stored_events(clean) == []


def test_streamed_body_within_the_limit_is_stored(client, clean):
    body, event_id = stripe_event("payment_intent.succeeded", {"id": "pi_chunked"})

    response = post_streamed(clean, "/webhooks/stripe", body, stripe_headers(body))

    assert response.status_code == 200
    assert response.get_json()["status"] == "stored"
    [row] = stored_events(clean)
    assert (row["event_id"], row["payload"]) == (event_id, body.decode())


def test_unknown_provider_answers_404_and_stores_nothing(client, clean):
    body, _ = stripe_event("payment_intent.succeeded", {"id": "pi_u"})

    response = client.post("/webhooks/adyen", data=body, headers=stripe_headers(body))

    assert response.status_code == 404
    assert response.get_json()["error"] == "unknown_provider"
    assert stored_events(clean) == []


def test_get_on_the_webhook_endpoint_answers_405(client, clean):
    response = client.get("/webhooks/stripe")

    assert response.status_code == 405
    assert "POST" in response.headers["Allow"]
    assert stored_events(clean) == []


# --- PayPal ----------------------------------------------------------------------------


def test_valid_paypal_delivery_is_stored_and_queued(client, clean, paypal_signing):
    key, _cert_path = paypal_signing
    body, event_id = paypal_event("PAYMENT.CAPTURE.COMPLETED", {"id": "CAP-1", "custom_id": "1"})

    response = client.post("/webhooks/paypal", data=body, headers=paypal_headers(key, body))

    assert response.status_code == 200
    assert response.get_json() == {"status": "stored", "event_id": event_id}
    [row] = stored_events(clean)
    assert (row["provider"], row["event_id"], row["event_type"]) == (
        "paypal", event_id, "PAYMENT.CAPTURE.COMPLETED")
    assert row["payload"] == body.decode()
    assert row["status"] == "queued"
    assert webhook_messages(clean) == [{"task": "webhooks.process_event", "args": [row["id"]]}]


def test_paypal_duplicate_answers_200_duplicate_and_stores_one_row(client, clean, paypal_signing):
    key, _ = paypal_signing
    body, event_id = paypal_event("PAYMENT.CAPTURE.COMPLETED", {"id": "CAP-2"})
    first = client.post("/webhooks/paypal", data=body, headers=paypal_headers(key, body))
    # PayPal redelivers with a new transmission id and signature.
    again = client.post("/webhooks/paypal", data=body, headers=paypal_headers(key, body))

    assert first.get_json()["status"] == "stored"
    assert again.status_code == 200
    assert again.get_json() == {"status": "duplicate", "event_id": event_id}
    assert [r["event_id"] for r in stored_events(clean)] == [event_id]
    assert len(webhook_messages(clean)) == 1


def test_same_event_id_from_two_providers_is_two_events(client, clean, paypal_signing):
    key, _ = paypal_signing
    shared_id = f"EV-{uuid.uuid4().hex[:12]}"
    stripe_body, _ = stripe_event("charge.updated", {"id": "ch_1"}, event_id=shared_id)
    paypal_body, _ = paypal_event("PAYMENT.CAPTURE.COMPLETED", {"id": "CAP-3"}, event_id=shared_id)

    first = post_stripe(client, stripe_body)
    second = client.post("/webhooks/paypal", data=paypal_body,
                         headers=paypal_headers(key, paypal_body))

    assert first.get_json()["status"] == second.get_json()["status"] == "stored"
    assert sorted(r["provider"] for r in stored_events(clean)) == ["paypal", "stripe"]


def _paypal_tampered(key):
    body, _ = paypal_event("PAYMENT.CAPTURE.COMPLETED", {"id": "CAP-T", "amount": {"value": "10.00"}})
    return body.replace(b'"10.00"', b'"0.01"'), paypal_headers(key, body)


def _paypal_wrong_webhook_id(key):
    body, _ = paypal_event("PAYMENT.CAPTURE.COMPLETED", {"id": "CAP-W"})
    return body, paypal_headers(key, body, webhook_id="WH-SOMEONE-ELSE")


def _paypal_missing_signature(key):
    body, _ = paypal_event("PAYMENT.CAPTURE.COMPLETED", {"id": "CAP-M"})
    headers = paypal_headers(key, body)
    del headers["PAYPAL-TRANSMISSION-SIG"]
    return body, headers


def _paypal_other_key(_key):
    from tests.support.paypal_keys import make_certificate

    other_key, _ = make_certificate()
    body, _ = paypal_event("PAYMENT.CAPTURE.COMPLETED", {"id": "CAP-K"})
    return body, paypal_headers(other_key, body)


PAYPAL_REJECTIONS = {
    "tampered_body": (_paypal_tampered, "signature does not match"),
    "wrong_webhook_id": (_paypal_wrong_webhook_id, "signature does not match"),
    "missing_signature": (_paypal_missing_signature, "missing PAYPAL-TRANSMISSION-SIG"),
    "signed_by_another_key": (_paypal_other_key, "signature does not match"),
}


@pytest.mark.parametrize("case", list(PAYPAL_REJECTIONS), ids=list(PAYPAL_REJECTIONS))
def test_rejected_paypal_delivery_answers_400_and_stores_nothing(client, clean, paypal_signing, case):
    make, reason = PAYPAL_REJECTIONS[case]
    body, headers = make(paypal_signing[0])

    response = client.post("/webhooks/paypal", data=body, headers=headers)

    assert response.status_code == 400
    assert response.get_json()["error"] == "bad_signature"
    assert reason in response.get_json()["reason"]
    assert stored_events(clean) == []
    assert webhook_messages(clean) == []


# --- the database down -----------------------------------------------------------------


def test_database_down_answers_503_with_retry_after_and_acknowledges_nothing(
    build_app, clean, paypal_signing
):
    dead = build_app({"SQLALCHEMY_DATABASE_URI": DEAD_DATABASE_URL})
    dead_client = dead.test_client()
    body, event_id = stripe_event("payment_intent.succeeded", {"id": "pi_dbdown"})
    paypal_body, _ = paypal_event("PAYMENT.CAPTURE.COMPLETED", {"id": "CAP-DB"})

    answers = [
        post_stripe(dead_client, body),
        post_stripe(dead_client, body),  # the provider's retry, while still down
        dead_client.post("/webhooks/paypal", data=paypal_body,
                         headers=paypal_headers(paypal_signing[0], paypal_body)),
    ]

    # PayPal's transmission log, in the same database, is what fails first there.
    errors = ["storage_unavailable", "storage_unavailable", "verification_unavailable"]
    for response, error in zip(answers, errors, strict=True):
        assert response.status_code == 503
        assert response.get_json()["error"] == error
        assert int(response.headers["Retry-After"]) > 0
    assert stored_events(clean) == []
    assert webhook_messages(clean) == []
    # The claim is released, so the redelivery after recovery is not taken for a duplicate.
    assert clean.extensions["redis"].get(dedup_key("stripe", event_id)) is None

    use_celery_of(clean)
    recovered = post_stripe(clean.test_client(), body)

    assert recovered.status_code == 200
    assert recovered.get_json()["status"] == "stored"
    assert [r["event_id"] for r in stored_events(clean)] == [event_id]


def test_readiness_fails_without_the_database_while_liveness_holds(build_app, client):
    dead = build_app({"SQLALCHEMY_DATABASE_URI": DEAD_DATABASE_URL})
    dead_client = dead.test_client()

    not_ready = dead_client.get("/readyz")
    ready = client.get("/readyz")

    assert not_ready.status_code == 503
    assert not_ready.get_json()["checks"]["database"].startswith("error")
    assert not_ready.get_json()["checks"]["redis"] == "ok"
    assert ready.status_code == 200
    assert ready.get_json() == {"status": "ok", "checks": {"database": "ok", "redis": "ok"}}
    assert dead_client.get("/healthz").status_code == 200
    assert client.get("/healthz").status_code == 200


# --- the broker down -------------------------------------------------------------------


def test_broker_down_still_stores_fast_and_the_relay_publishes_later(build_app, clean):
    from service.webhooks.relay import relay_pending

    no_broker = build_app({"REDIS_URL": DEAD_REDIS_URL})  # its Celery app is now current
    body, event_id = stripe_event("payment_intent.succeeded", {"id": "pi_brokerdown"})

    started = time.monotonic()
    response = post_stripe(no_broker.test_client(), body)
    elapsed = time.monotonic() - started

    assert response.status_code == 200
    assert response.get_json()["status"] == "stored"
    assert elapsed < 5.0
    [row] = stored_events(clean)
    assert (row["event_id"], row["status"], row["queued_at"]) == (event_id, "received", None)
    assert webhook_messages(clean) == []
    assert no_broker.test_client().get("/readyz").status_code == 503

    # While the broker is still down, the relay leaves the row for its next pass.
    time.sleep(1.1)  # RELAY_MIN_AGE_SECONDS is 1 in tests
    with no_broker.app_context():
        report = relay_pending()
    assert report.broker_down
    assert report.enqueued == 0
    assert [r["status"] for r in stored_events(clean)] == ["received"]

    use_celery_of(clean)  # the broker is back
    with clean.app_context():
        report = relay_pending()
        db.session.remove()

    assert (report.found, report.enqueued, report.broker_down) == (1, 1, False)
    [row] = stored_events(clean)
    assert row["status"] == "queued"
    assert row["queued_at"] is not None
    assert webhook_messages(clean) == [{"task": "webhooks.process_event", "args": [row["id"]]}]
    # The provider's redelivery meets the stored row and is not enqueued a second time.
    again = post_stripe(clean.test_client(), body)
    assert again.get_json()["status"] == "duplicate"
    assert len(webhook_messages(clean)) == 1


def test_past_the_direct_publish_mark_intake_only_stores_and_pauses_its_publishing(
        build_app, clean, monkeypatch):
    """A busy queue: the first refused publish takes its row back and pauses direct
    publishing in the process; meanwhile deliveries are only stored, for the relay."""
    from service.webhooks import intake

    monkeypatch.setattr(intake, "PAUSE_WHEN_FULL_SECONDS", 60)  # outlasts a slow machine
    busy = build_app({"WEBHOOK_DIRECT_PUBLISH_DEPTH": 2})
    redis = clean.extensions["redis"]
    redis.rpush("webhooks", b"waiting", b"waiting")
    client = busy.test_client()

    answers = [post_stripe(client, stripe_event("payment_intent.succeeded",
                                                {"id": f"pi_busy_{n}"})[0]) for n in range(3)]

    assert [a.get_json()["status"] for a in answers] == ["stored"] * 3
    assert [(r["status"], r["queued_at"]) for r in stored_events(clean)] == \
        [("received", None)] * 3
    assert redis.lrange("webhooks", 0, -1) == [b"waiting", b"waiting"]
    assert not busy.extensions["webhook_direct_publishing"].allowed()

    # Room again and the pause over: intake publishes itself.
    redis.delete("webhooks")
    busy.extensions["webhook_direct_publishing"].resume()
    body, _ = stripe_event("payment_intent.succeeded", {"id": "pi_quiet"})
    assert post_stripe(client, body).get_json()["status"] == "stored"
    assert [r["status"] for r in stored_events(clean)] == ["received"] * 3 + ["queued"]
    assert [m["task"] for m in webhook_messages(clean)] == ["webhooks.process_event"]


def test_event_committed_but_never_published_is_relayed_once_its_publish_lease_expires(clean):
    """A web process that dies between the commit and the publish leaves a `queued` row
    with no message; its publish lease lets the relay find it. A row whose lease has
    not expired yet (its message may well be on the way) is left alone."""
    from datetime import timedelta

    from service.clock import utcnow
    from service.webhooks.relay import relay_pending

    now = utcnow()
    with clean.app_context():
        for event_id, lease in (("evt_orphan", now - timedelta(seconds=1)),
                                ("evt_in_flight", now + timedelta(seconds=60))):
            db.session.add(WebhookEvent(
                provider="stripe", event_id=event_id, event_type="payment_intent.succeeded",
                payload="{}", status="queued", attempts=0, received_at=now - timedelta(seconds=61),
                queued_at=now - timedelta(seconds=61), lease_expires_at=lease))
        db.session.commit()
        report = relay_pending()
        orphan = db.session.scalar(select(WebhookEvent).where(WebhookEvent.event_id == "evt_orphan"))
        assert (report.found, report.enqueued) == (1, 1)
        assert webhook_messages(clean) == [{"task": "webhooks.process_event", "args": [orphan.id]}]
        # Relayed like an intake publish: queued, with a publish lease of its own, so a
        # message lost again is found again.
        grace = clean.config["PUBLISH_GRACE_SECONDS"]
        assert orphan.status == "queued"
        assert now + timedelta(seconds=grace - 5) < orphan.lease_expires_at \
            <= utcnow() + timedelta(seconds=grace)
        # While that lease runs, the next pass leaves the row alone.
        assert relay_pending().found == 0
        db.session.remove()


# --- logs ------------------------------------------------------------------------------


def _log_entries(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


def test_logs_carry_the_request_id_and_no_signature_secret_or_body(client, clean):
    event_id = f"evt_{uuid.uuid4().hex}"
    body = raw_stripe_body(event_id)
    headers = stripe_headers(body)
    tampered_body = raw_stripe_body(f"evt_{uuid.uuid4().hex}")
    tampered_headers = stripe_headers(tampered_body)
    tampered_body = tampered_body.replace(b'"amount": 1000', b'"amount": 1')

    with captured_service_logs() as stream:
        accepted = post_stripe(client, body, headers)
        duplicate = post_stripe(client, body, headers)
        rejected = post_stripe(client, tampered_body, tampered_headers)
    output = stream.getvalue()

    assert (accepted.status_code, duplicate.status_code, rejected.status_code) == (200, 200, 400)
    entries = _log_entries(stream)
    by_request = {}
    for entry in entries:
        by_request.setdefault(entry.get("request_id"), []).append(entry)
    for response, message in ((accepted, "delivery accepted"), (duplicate, "delivery accepted"),
                              (rejected, "delivery rejected")):
        request_id = response.headers["X-Request-ID"]
        assert request_id
        assert message in [e["msg"] for e in by_request.get(request_id, [])]
    outcomes = [e.get("outcome") for e in entries if e["msg"] == "delivery accepted"]
    assert outcomes == ["stored", "duplicate"]
    assert len({accepted.headers["X-Request-ID"], duplicate.headers["X-Request-ID"],
                rejected.headers["X-Request-ID"]}) == 3

    for secret_text in (
        headers["Stripe-Signature"], tampered_headers["Stripe-Signature"],
        headers["Stripe-Signature"].split("v1=")[1], STRIPE_SECRET, STRIPE_OLD_SECRET,
        CUSTOMER_EMAIL, "receipt_email", "pi_raw", body.decode()[:40],
    ):
        assert secret_text not in output


def test_a_plain_caller_request_id_is_echoed_and_a_hostile_one_is_replaced(client, clean):
    body, _ = stripe_event("payment_intent.succeeded", {"id": "pi_rid"})
    headers = stripe_headers(body)
    hostile = 'x" injected=1'

    with captured_service_logs() as stream:
        echoed = post_stripe(client, body, {**headers, "X-Request-ID": "edge-7f3a-01"})
        too_long = client.get("/healthz", headers={"X-Request-ID": "a" * 65})
        not_plain = client.get("/healthz", headers={"X-Request-ID": hostile})

    assert echoed.headers["X-Request-ID"] == "edge-7f3a-01"
    assert [r["request_id"] for r in stored_events(clean)] == ["edge-7f3a-01"]
    assert "edge-7f3a-01" in [e.get("request_id") for e in _log_entries(stream)]
    for response, sent in ((too_long, "a" * 65), (not_plain, hostile)):
        generated = response.headers["X-Request-ID"]
        assert generated != sent
        assert len(generated) == 32
        assert generated.isalnum()
