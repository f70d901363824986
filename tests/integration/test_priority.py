"""Webhooks keep their priority while the `orders` queue is flooded.

Two real workers, split as the run command splits them: one consuming `webhooks` only,
one consuming `orders` only, with the global orders rate limit low enough that a flood
of 5,000 fulfilment jobs backs up (every job past the limit is put back to wait for its
slot). Payment webhooks delivered in the middle of that must still be applied within
seconds, measured in the database from `received_at` (intake) to `processed_at`.
"""

from __future__ import annotations

import time

import pytest
from sqlalchemy import text

from service.extensions import db
from service.queues.depth import depth
from tests.support.events import make_order, payment_intent, stripe_event, stripe_headers
from tests.support.processes import start_worker, stop_all
from tests.support.waiting import wait_until

FLOOD = 5_000
LATENCY_CEILING_SECONDS = 5.0
WEBHOOKS = 3


@pytest.fixture
def split_workers(clean, tmp_path):
    env = {"ORDERS_RATE_LIMIT": "10/minute"}
    webhooks = start_worker(tmp_path, queues="webhooks", concurrency=2, beat=False, env=env,
                            name="webhooks")
    try:
        orders = start_worker(tmp_path, queues="orders", concurrency=1, beat=False, env=env,
                              name="orders")
    except BaseException:
        webhooks.stop()
        raise
    yield webhooks, orders
    stop_all([orders, webhooks])


def event_row(event_id: str) -> dict | None:
    with db.engine.connect() as conn:
        return conn.execute(text("SELECT * FROM webhook_events WHERE event_id = :e"),
                            {"e": event_id}).mappings().first()


def test_webhook_is_processed_within_seconds_while_orders_queue_is_flooded(
        split_workers, client, ctx):
    _webhooks_worker, orders_worker = split_workers
    redis = client.application.extensions["redis"]
    celery = client.application.extensions["celery"]
    paid_order = make_order(status="paid")

    started = time.monotonic()
    with celery.producer_or_acquire() as producer:
        for _ in range(FLOOD):
            celery.send_task("orders.fulfil", args=[paid_order], queue="orders", producer=producer)
    flood_seconds = time.monotonic() - started

    measured = []
    for _ in range(WEBHOOKS):
        order_id = make_order()
        body, event_id = stripe_event("payment_intent.succeeded", payment_intent(order_id))
        response = client.post("/webhooks/stripe", data=body, headers=stripe_headers(body))
        assert response.status_code == 200, response.get_data(as_text=True)
        depth_at_intake = depth(redis, "orders")
        row = wait_until(lambda event_id=event_id: (r := event_row(event_id))
                         and r["status"] == "processed" and r,
                         30, f"event {event_id} to be processed", logs=split_workers)
        depth_when_done = depth(redis, "orders")
        latency = (row["processed_at"] - row["received_at"]).total_seconds()
        measured.append((latency, depth_at_intake, depth_when_done))

    print(f"\n{FLOOD} orders jobs published in {flood_seconds:.2f} s; webhook latency "
          + ", ".join(f"{lat * 1000:.0f} ms (orders depth {a} -> {b})" for lat, a, b in measured))

    for latency, depth_at_intake, depth_when_done in measured:
        assert latency < LATENCY_CEILING_SECONDS, measured
        # The flood was really there, waiting, while the webhook went through.
        assert depth_at_intake >= 1_000, measured
        assert depth_when_done >= 1_000, measured
    # ...and the orders worker was working through it meanwhile, held back by the limit.
    assert measured[-1][2] < FLOOD, measured
    wait_until(lambda: "rate limited" in orders_worker.log(), 10,
               "the orders worker to hold back rate-limited jobs", logs=(orders_worker,))
    with db.engine.connect() as conn:
        statuses = conn.execute(text("SELECT status FROM orders ORDER BY id")).scalars().all()
    assert statuses[1:] == ["paid"] * WEBHOOKS
