"""Refunds an operator asks for through the admin API, against local stand-ins for the
Stripe and PayPal refund APIs: idempotency, limits (also under concurrency), provider
refusals and outages, and the provider's later webhook matching the recorded refund."""

from __future__ import annotations

import json
import threading
import uuid

import pytest
import requests

from service.extensions import db
from tests.support.admin import caller, make_user
from tests.support.db import rows, scalar
from tests.support.events import (
    charge_refunded,
    paypal_event,
    paypal_headers,
    process_stored_event,
    stripe_event,
    stripe_headers,
)
from tests.support.processes import start_gunicorn
from tests.support.providers import paid_order, provider_settings


@pytest.fixture
def operator(clean):
    return caller(clean, "operator")


def refund(who, order_id, amount, *, key=None, reason="customer asked"):
    headers = {} if key is False else {"Idempotency-Key": key or uuid.uuid4().hex}
    return who.post(f"/api/admin/orders/{order_id}/refunds",
                    json={"amount_cents": amount, "reason": reason}, headers=headers)


def test_partial_refund_calls_stripe_records_the_refund_and_one_audit_row(clean, providers,
                                                                        operator):
    stripe, _ = providers
    order_id, intent = paid_order(clean)
    response = refund(operator, order_id, 300)
    assert response.status_code == 201, response.get_json()
    body = response.get_json()
    assert body["status"] == "succeeded" and body["provider_refund_id"].startswith("re_")
    assert stripe.calls == [{"key": f"racine-refund-{body['id']}", "payment": intent,
                             "amount": 300}]
    with clean.app_context():
        assert rows("SELECT provider_refund_id, amount_cents FROM refunds") == [
            {"provider_refund_id": body["provider_refund_id"], "amount_cents": 300}]
        assert scalar("SELECT status FROM orders WHERE id = :id", id=order_id) == \
            "partially_refunded"
        logs = rows("SELECT * FROM audit_logs WHERE action = 'order.refund'")
    assert len(logs) == 1
    log = logs[0]
    meta = json.loads(log["metadata"])
    assert (log["entity_type"], log["entity_id"], log["actor"]) == (
        "order", str(order_id), f"user:{operator.email}")
    assert (log["ip_address"], log["user_agent"], log["reason"]) == (
        "127.0.0.1", "racine-tests/1.0", "customer asked")
    assert log["token_prefix"] and operator.token.startswith(log["token_prefix"])
    refund_id = body["provider_refund_id"]
    assert meta["before"] == {"status": "paid", "refunded_cents": 0, "refunds": {refund_id: None}}
    assert meta["after"] == {"status": "partially_refunded", "refunded_cents": 300,
                             "refunds": {refund_id: "succeeded"}}
    assert meta["refunds"] == [{"provider_refund_id": refund_id, "amount_cents": 300,
                                "currency": "EUR", "status_before": None, "status": "succeeded"}]
    assert meta["refund_request_id"] == body["id"] and meta["provider_payment_id"] == intent


def test_refunds_never_exceed_what_was_captured(clean, providers, operator):
    order_id, _ = paid_order(clean)
    assert refund(operator, order_id, 700).status_code == 201
    over = refund(operator, order_id, 301)
    assert over.status_code == 422
    assert over.get_json()["error"] == "refund_not_allowed"
    assert refund(operator, order_id, 300).status_code == 201
    assert refund(operator, order_id, 1).status_code == 422
    with clean.app_context():
        assert scalar("SELECT sum(amount_cents) FROM refunds") == 1000
        assert scalar("SELECT status FROM orders WHERE id = :id", id=order_id) == "refunded"


def test_same_key_and_body_get_the_same_answer_and_no_second_refund(clean, providers, operator):
    stripe, _ = providers
    order_id, _ = paid_order(clean)
    first = refund(operator, order_id, 250, key="refund-abc")
    again = refund(operator, order_id, 250, key="refund-abc")
    assert (first.status_code, again.status_code) == (201, 201)
    assert again.get_json() == first.get_json()
    assert again.headers["Idempotent-Replayed"] == "true"
    assert len(stripe.calls) == 1
    other = refund(operator, order_id, 260, key="refund-abc")
    assert (other.status_code, other.get_json()["error"]) == (409, "idempotency_conflict")
    with clean.app_context():
        assert scalar("SELECT count(*) FROM refunds") == 1
        assert scalar("SELECT count(*) FROM audit_logs WHERE action = 'order.refund'") == 1


def test_a_refund_needs_an_idempotency_key_and_a_valid_body(clean, providers, operator):
    order_id, _ = paid_order(clean)
    missing = refund(operator, order_id, 100, key=False)
    assert (missing.status_code, missing.get_json()["error"]) == (400, "idempotency_key_required")
    for body in ({"amount_cents": "100", "reason": "x"}, {"amount_cents": 0, "reason": "x"},
                 {"amount_cents": 100}, {"amount_cents": 100, "reason": "x", "extra": 1}):
        response = operator.post(f"/api/admin/orders/{order_id}/refunds", json=body,
                                 headers={"Idempotency-Key": uuid.uuid4().hex})
        assert (response.status_code, response.get_json()["error"]) == (400, "validation_failed")
    assert refund(operator, 999999, 100).status_code == 404


def test_a_declined_refund_fails_and_releases_its_reservation(clean, providers, operator):
    stripe, _ = providers
    order_id, _ = paid_order(clean)
    stripe.mode = "decline"
    declined = refund(operator, order_id, 1000, key="k-declined")
    assert (declined.status_code, declined.get_json()["error"]) == (422, "refund_declined")
    assert declined.get_json()["details"]["status"] == "failed"
    replay = refund(operator, order_id, 1000, key="k-declined")
    assert replay.status_code == 422
    assert replay.get_json()["details"] == declined.get_json()["details"]
    stripe.mode = "ok"
    assert refund(operator, order_id, 1000).status_code == 201
    with clean.app_context():
        assert scalar("SELECT count(*) FROM audit_logs WHERE action = 'order.refund'") == 1


def test_an_unknown_provider_outcome_stays_pending_and_the_same_key_completes_it(
        clean, providers, operator, monkeypatch):
    stripe, _ = providers
    order_id, _ = paid_order(clean)
    stripe.mode = "error"
    unknown = refund(operator, order_id, 400, key="k-outage")
    assert (unknown.status_code, unknown.get_json()["error"]) == (502, "provider_unavailable")
    # The reservation holds while the outcome is unknown.
    assert refund(operator, order_id, 700).status_code == 422
    assert refund(operator, order_id, 400, key="k-outage").status_code == 409
    stripe.mode = "ok"
    monkeypatch.setitem(clean.config, "REFUND_PENDING_RETRY_SECONDS", 0)
    done = refund(operator, order_id, 400, key="k-outage")
    assert done.status_code == 201
    assert len(stripe.refunds) == 1
    with clean.app_context():
        assert scalar("SELECT sum(amount_cents) FROM refunds") == 400


def _deliver(app, body: bytes, headers: dict, path: str = "/webhooks/stripe") -> None:
    """Post one delivery and process it as a worker would, in this thread."""
    with app.app_context():
        assert app.test_client().post(path, data=body, headers=headers).status_code == 200
        pk = scalar("SELECT max(id) FROM webhook_events")
        assert process_stored_event(pk) == "processed"
        db.session.remove()


def _charge_refunded_listing(order_id, intent, refund_id):
    return charge_refunded(order_id, intent_id=intent, amount=1000, refunds=[(refund_id, 300)])


def _charge_refunded_cumulative(order_id, intent, refund_id):
    # Newer API versions: no refund list, only the charge's cumulative figure.
    charge = charge_refunded(order_id, intent_id=intent, amount=1000, refunds=[(refund_id, 300)])
    del charge["refunds"]
    return charge


def _refund_updated(order_id, intent, refund_id):
    return {"id": refund_id, "object": "refund", "amount": 300, "currency": "eur",
            "status": "succeeded", "payment_intent": intent,
            "metadata": {"order_id": str(order_id)}}


@pytest.mark.parametrize(("event_type", "make"), [
    ("charge.refunded", _charge_refunded_listing),
    ("charge.refunded", _charge_refunded_cumulative),
    ("refund.updated", _refund_updated),
], ids=["refund-list", "cumulative-figure", "refund-object"])
def test_the_providers_later_webhook_matches_the_refund_already_recorded(
        clean, providers, operator, event_type, make):
    order_id, intent = paid_order(clean)
    refund_id = refund(operator, order_id, 300).get_json()["provider_refund_id"]
    body, _ = stripe_event(event_type, make(order_id, intent, refund_id))
    _deliver(clean, body, stripe_headers(body))
    with clean.app_context():
        assert scalar("SELECT sum(amount_cents) FROM refunds") == 300
        assert rows("SELECT refunded_cents, status FROM orders WHERE id = :id", id=order_id) == [
            {"refunded_cents": 300, "status": "partially_refunded"}]
        assert rows("SELECT actor FROM audit_logs WHERE action = 'order.refund'") == [
            {"actor": f"user:{operator.email}"}]


def test_paypals_later_refund_webhook_matches_the_refund_already_recorded(
        clean, providers, operator, paypal_signing):
    order_id, capture = paid_order(clean, provider="paypal")
    refund_id = refund(operator, order_id, 250).get_json()["provider_refund_id"]
    body, _ = paypal_event("PAYMENT.CAPTURE.REFUNDED", {
        "id": refund_id, "status": "COMPLETED", "custom_id": str(order_id),
        "amount": {"value": "2.50", "currency_code": "EUR"},
        "links": [{"rel": "up", "href": f"https://api.paypal.com/v2/payments/captures/{capture}"}]})
    _deliver(clean, body, paypal_headers(paypal_signing[0], body), "/webhooks/paypal")
    with clean.app_context():
        assert scalar("SELECT sum(amount_cents) FROM refunds") == 250
        assert scalar("SELECT refunded_cents FROM orders WHERE id = :id", id=order_id) == 250
        assert scalar("SELECT count(*) FROM audit_logs WHERE action = 'order.refund'") == 1


def test_a_webhook_that_outruns_the_providers_answer_is_counted_once(clean, providers, operator):
    """The provider's webhook for the refund is processed before its HTTP answer reaches
    the service: the refund is the provider's record, counted once, and the operator's
    action still has its own audit row, which changes nothing."""
    stripe, _ = providers
    order_id, intent = paid_order(clean)

    def webhook_first(refund_body):
        body, _ = stripe_event("charge.refunded",
                               _charge_refunded_listing(order_id, intent, refund_body["id"]))
        _deliver(clean, body, stripe_headers(body))

    stripe.before_answer = webhook_first
    response = refund(operator, order_id, 300)
    assert response.status_code == 201, response.get_json()
    assert response.get_json()["refund_status"] == "succeeded"
    with clean.app_context():
        assert scalar("SELECT sum(amount_cents) FROM refunds") == 300
        assert scalar("SELECT refunded_cents FROM orders WHERE id = :id", id=order_id) == 300
        logs = rows("SELECT actor, metadata FROM audit_logs WHERE action = 'order.refund'"
                    " ORDER BY id")
    assert [log["actor"] for log in logs] == ["system:stripe", f"user:{operator.email}"]
    provider_row, operator_row = (json.loads(log["metadata"]) for log in logs)
    assert provider_row["after"]["refunded_cents"] == 300
    assert operator_row["before"] == operator_row["after"]
    assert operator_row["already_recorded"] == [response.get_json()["provider_refund_id"]]


def test_a_cumulative_figure_that_outruns_the_providers_answer_is_counted_once(
        clean, providers, operator):
    """The webhook carries only the charge's cumulative figure, processed before the
    provider's HTTP answer: the operator's refund is that figure's money, so the figure's
    row stops counting and the operator's audit row says so."""
    stripe, _ = providers
    order_id, intent = paid_order(clean)

    def webhook_first(refund_body):
        body, _ = stripe_event("charge.refunded", _charge_refunded_cumulative(
            order_id, intent, refund_body["id"]))
        _deliver(clean, body, stripe_headers(body))

    stripe.before_answer = webhook_first
    response = refund(operator, order_id, 300)
    assert response.status_code == 201, response.get_json()
    refund_id = response.get_json()["provider_refund_id"]
    figure = f"ch_{intent}:cumulative:300"
    with clean.app_context():
        assert rows("SELECT provider_refund_id, status FROM refunds ORDER BY id") == [
            {"provider_refund_id": figure, "status": "superseded"},
            {"provider_refund_id": refund_id, "status": "succeeded"}]
        assert scalar("SELECT refunded_cents FROM orders WHERE id = :id", id=order_id) == 300
        logs = rows("SELECT actor, metadata FROM audit_logs WHERE action = 'order.refund'"
                    " ORDER BY id")
    assert [log["actor"] for log in logs] == ["system:stripe", f"user:{operator.email}"]
    operator_row = json.loads(logs[1]["metadata"])
    assert operator_row["before"]["refunds"] == {refund_id: None, figure: "succeeded"}
    assert operator_row["after"]["refunds"] == {refund_id: "succeeded", figure: "superseded"}
    assert operator_row["before"]["refunded_cents"] == operator_row["after"]["refunded_cents"]


def test_a_refund_pending_at_the_provider_counts_once_it_succeeds(clean, providers, operator):
    stripe, _ = providers
    stripe.refund_status = "pending"
    order_id, intent = paid_order(clean)
    response = refund(operator, order_id, 300)
    assert response.status_code == 201, response.get_json()
    assert response.get_json()["refund_status"] == "pending"
    with clean.app_context():
        assert rows("SELECT refunded_cents, status FROM orders WHERE id = :id", id=order_id) == [
            {"refunded_cents": 0, "status": "paid"}]
    # Money in flight at the provider is not refundable again.
    assert refund(operator, order_id, 701).status_code == 422
    body, _ = stripe_event("refund.updated", _refund_updated(
        order_id, intent, response.get_json()["provider_refund_id"]))
    _deliver(clean, body, stripe_headers(body))
    with clean.app_context():
        assert rows("SELECT refunded_cents, status FROM orders WHERE id = :id", id=order_id) == [
            {"refunded_cents": 300, "status": "partially_refunded"}]
        logs = rows("SELECT actor, metadata FROM audit_logs WHERE action = 'order.refund'"
                    " ORDER BY id")
    assert [log["actor"] for log in logs] == [f"user:{operator.email}", "system:stripe"]
    assert [json.loads(log["metadata"])["refunds"][0]["status"] for log in logs] == [
        "pending", "succeeded"]


def test_paypal_refunds_go_through_the_paypal_rest_call(clean, providers, operator):
    _, paypal = providers
    order_id, capture = paid_order(clean, provider="paypal")
    response = refund(operator, order_id, 1000)
    assert response.status_code == 201, response.get_json()
    assert response.get_json()["provider_refund_id"].startswith("RF")
    assert paypal.calls[0]["payment"] == capture and paypal.calls[0]["amount"] == 1000
    with clean.app_context():
        assert scalar("SELECT status FROM orders WHERE id = :id", id=order_id) == "refunded"


def test_concurrent_partial_refunds_through_the_api_never_over_refund(clean, providers,
                                                                    tmp_path):
    stripe, paypal = providers
    stripe.delay = 0.05
    order_id, _ = paid_order(clean, total=1000)
    with clean.app_context():
        _, _, token = make_user("operator", email="racer@racine.test")
        db.session.remove()
    env = {k: str(v) for k, v in provider_settings(stripe, paypal).items()}
    server, base = start_gunicorn(tmp_path, workers=2, threads=4, env=env)
    results = []
    try:
        def attempt():
            response = requests.post(
                f"{base}/api/admin/orders/{order_id}/refunds", timeout=30,
                json={"amount_cents": 300, "reason": "race"},
                headers={"Authorization": f"Bearer {token}", "Idempotency-Key": uuid.uuid4().hex})
            results.append(response.status_code)

        threads = [threading.Thread(target=attempt) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        server.stop()
    assert sorted(results) == [201] * 3 + [422] * 5
    assert stripe.refunded_total() == 900
    with clean.app_context():
        assert scalar("SELECT sum(amount_cents) FROM refunds") == 900
        assert scalar("SELECT count(*) FROM audit_logs WHERE action = 'order.refund'") == 3
