"""Fulfilment from payment facts, end to end: signed deliveries over the HTTP endpoint,
a real worker for the `webhooks`, `orders` and `default` queues, its beat publishing
the outbox. An order paid and partially refunded is fulfilled exactly once whichever
event arrives first, redeliveries included; one refunded in full first never is.
"""

from __future__ import annotations

import uuid

import pytest

from tests.support.db import scalar
from tests.support.events import (
    charge_refunded,
    make_order,
    payment_intent,
    stripe_event,
    stripe_headers,
)
from tests.support.processes import start_worker
from tests.support.waiting import wait_until


@pytest.fixture(scope="module")
def worker(app, tmp_path_factory):
    proc = start_worker(tmp_path_factory.mktemp("fulfilment"), queues="webhooks,orders,default",
                        concurrency=2, beat=True)
    yield proc
    proc.stop()


def deliver(client, event_type: str, obj: dict, *, times: int = 1) -> str:
    body, event_id = stripe_event(event_type, obj)
    for _ in range(times):  # the provider's redeliveries are answered as duplicates
        response = client.post("/webhooks/stripe", data=body, headers=stripe_headers(body))
        assert response.status_code == 200, response.get_data(as_text=True)
    return event_id


def processed(*event_ids: str) -> bool:
    return all(scalar("SELECT status FROM webhook_events WHERE event_id = :e", e=e)
               == "processed" for e in event_ids)


def follow_ups_done(order_id: int) -> bool:
    """Both follow-up jobs ran (a notification is recorded by the second)."""
    return scalar("SELECT count(*) FROM outbox_jobs WHERE status = 'pending'") == 0 and \
        scalar("SELECT count(*) FROM notifications WHERE order_id = :o AND status = 'sent'",
               o=order_id) == 1


@pytest.mark.parametrize("refund_first", [True, False])
def test_paid_then_partially_refunded_order_is_fulfilled_once_in_any_arrival_order(
        worker, client, ctx, refund_first):
    order_id = make_order(total_cents=1000)
    intent = f"pi_{uuid.uuid4().hex[:16]}"
    payment = ("payment_intent.succeeded", payment_intent(order_id, amount=1000,
                                                          intent_id=intent))
    refund = ("charge.refunded", charge_refunded(order_id, intent_id=intent, amount=1000,
                                                 refunds=[("re_part", 300)]))
    first, second = (refund, payment) if refund_first else (payment, refund)

    ids = [deliver(client, *first, times=2)]
    wait_until(lambda: processed(*ids), 20, "the first event", logs=[worker])
    ids.append(deliver(client, *second, times=2))
    wait_until(lambda: processed(*ids) and follow_ups_done(order_id), 30,
               "both events and the follow-up jobs", logs=[worker])

    assert scalar("SELECT count(*) FROM fulfilments WHERE order_id = :o", o=order_id) == 1
    assert scalar("SELECT status FROM orders WHERE id = :o", o=order_id) == "partially_refunded"
    assert scalar("SELECT refunded_cents FROM orders WHERE id = :o", o=order_id) == 300


def test_order_refunded_in_full_before_its_payment_is_never_fulfilled(worker, client, ctx):
    order_id = make_order(total_cents=1000)
    intent = f"pi_{uuid.uuid4().hex[:16]}"

    refund_id = deliver(client, "charge.refunded", charge_refunded(
        order_id, intent_id=intent, amount=1000, refunds=[("re_all", 1000)]))
    wait_until(lambda: processed(refund_id), 20, "the refund", logs=[worker])
    payment_id = deliver(client, "payment_intent.succeeded",
                         payment_intent(order_id, amount=1000, intent_id=intent))
    wait_until(lambda: processed(payment_id), 20, "the payment", logs=[worker])

    assert scalar("SELECT count(*) FROM outbox_jobs") == 0  # nothing was ever asked
    assert scalar("SELECT count(*) FROM fulfilments WHERE order_id = :o", o=order_id) == 0
    assert scalar("SELECT status FROM orders WHERE id = :o", o=order_id) == "refunded"


def test_a_refund_naming_only_its_payment_waits_for_the_payment_that_comes_after_it(
        worker, client, ctx):
    """Stripe's refund objects carry no order metadata, only the payment intent. Arriving
    before their payment, they wait for it (ORDER_WAIT_RETRIES), then count once."""
    order_id = make_order(total_cents=1000)
    intent = f"pi_{uuid.uuid4().hex[:16]}"
    refund = {"id": f"re_{uuid.uuid4().hex[:12]}", "object": "refund", "amount": 400,
              "currency": "eur", "payment_intent": intent, "status": "succeeded"}

    refund_id = deliver(client, "refund.created", refund)
    wait_until(lambda: scalar("SELECT attempts FROM webhook_events WHERE event_id = :e",
                              e=refund_id), 20, "the refund's first attempt", logs=[worker])
    assert not processed(refund_id)
    payment_id = deliver(client, "payment_intent.succeeded",
                         payment_intent(order_id, amount=1000, intent_id=intent))
    wait_until(lambda: processed(refund_id, payment_id) and follow_ups_done(order_id), 60,
               "the payment, then the refund that waited for it", logs=[worker])

    assert scalar("SELECT count(*) FROM webhook_failures") == 0
    assert scalar("SELECT status FROM orders WHERE id = :o", o=order_id) == "partially_refunded"
    assert scalar("SELECT refunded_cents FROM orders WHERE id = :o", o=order_id) == 400
    assert scalar("SELECT count(*) FROM fulfilments WHERE order_id = :o", o=order_id) == 1
