"""The transactional outbox: order follow-up jobs exist once the payment is committed,
reach the `orders` queue only as far as its depth bound allows, and run once.

A real worker (`webhooks,default`, shared by the module) processes the payment events
delivered through the HTTP endpoint; a second worker on `orders` is started only by the
test that wants the follow-up jobs run. The depth bound and the broker outage are
driven in this process, through apps built with other settings.
"""

from __future__ import annotations

import base64
import json
import time

import pytest

from service.extensions import db
from service.queues.depth import ENQUEUED_AT_HEADER, depth
from service.queues.outbox import add_jobs, relay_outbox
from tests.support.apps import use_celery_of
from tests.support.db import rows, scalar
from tests.support.events import make_order, payment_intent, stripe_event, stripe_headers
from tests.support.processes import start_worker
from tests.support.waiting import wait_until

DEAD_REDIS_URL = "redis://127.0.0.1:1/0"

# ---- fixtures -----------------------------------------------------------------------


@pytest.fixture
def worker(clean, tmp_path_factory):
    """Processes payment events and runs the relays (beat); nothing consumes `orders`
    unless a test starts it. Per test: its relay must not run during the others."""
    proc = start_worker(tmp_path_factory.mktemp("webhooks-worker"), queues="webhooks,default",
                        concurrency=2, beat=True, name="webhooks")
    yield proc
    proc.stop()


@pytest.fixture
def orders_worker(clean, tmp_path):
    proc = start_worker(tmp_path, queues="orders", concurrency=1, beat=False, name="orders")
    yield proc
    proc.stop()


# ---- helpers ------------------------------------------------------------------------


def outbox_rows() -> list[dict]:
    return rows("SELECT id, task_name, queue, args, status, published_at FROM outbox_jobs "
                "ORDER BY id")


def queued(redis_client, queue: str = "orders") -> list[dict]:
    """The Celery messages waiting on `queue`, oldest first: task, args and headers."""
    messages = []
    for raw in reversed(redis_client.lrange(queue, 0, -1)):  # pushed left, taken right
        envelope = json.loads(raw)
        body = envelope["body"]
        if envelope["properties"].get("body_encoding") == "base64":
            body = base64.b64decode(body)
        args, _kwargs, _embed = json.loads(body)
        messages.append({"task": envelope["headers"]["task"], "args": args,
                         "headers": envelope["headers"]})
    return messages


def deliver(client, obj: dict, *, event_id: str | None = None, expect: str = "stored") -> str:
    body, event_id = stripe_event("payment_intent.succeeded", obj, event_id=event_id)
    response = client.post("/webhooks/stripe", data=body, headers=stripe_headers(body))
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.get_json()["status"] == expect
    return event_id


def wait_processed(event_id: str, procs) -> None:
    def status():
        return scalar("SELECT status FROM webhook_events WHERE event_id = :e", e=event_id)
    wait_until(lambda: status() == "processed", 20,
               lambda: f"event {event_id} to be processed (now {status()})", logs=procs)


def wait_published(count: int, procs) -> list[dict]:
    wait_until(lambda: [r["status"] for r in outbox_rows()] == ["published"] * count, 20,
               lambda: f"{count} published outbox jobs (now {outbox_rows()})", logs=procs)
    return outbox_rows()


# ---- a payment creates its follow-up jobs -------------------------------------------


def test_paid_order_gets_its_follow_up_jobs_in_the_outbox_and_on_the_orders_queue(
        worker, client, ctx, clean):
    redis_client = clean.extensions["redis"]
    order_id = make_order(total_cents=1000)
    before = time.time()

    event_id = deliver(client, payment_intent(order_id, amount=1000))
    wait_processed(event_id, (worker,))
    jobs = wait_published(2, (worker,))

    assert scalar("SELECT status FROM orders WHERE id = :o", o=order_id) == "paid"
    assert [(j["task_name"], j["queue"], json.loads(j["args"])) for j in jobs] == [
        ("orders.fulfil", "orders", [order_id]),
        ("orders.send_confirmation", "orders", [order_id])]
    assert all(j["published_at"] is not None for j in jobs)
    messages = queued(redis_client)
    assert sorted((m["task"], m["args"]) for m in messages) == [
        ("orders.fulfil", [order_id]), ("orders.send_confirmation", [order_id])]
    for message in messages:
        assert before <= float(message["headers"][ENQUEUED_AT_HEADER]) <= time.time()
    # Nothing ran them: the follow-up work waits on its own queue, not in the webhook job.
    assert scalar("SELECT count(*) FROM fulfilments") == 0
    assert scalar("SELECT count(*) FROM notifications") == 0


def test_follow_up_jobs_run_once_each_despite_duplicate_payments_and_messages(
        worker, orders_worker, client, ctx, clean):
    celery = clean.extensions["celery"]
    procs = (worker, orders_worker)
    order_id = make_order(total_cents=1000)
    intent = payment_intent(order_id, amount=1000)

    event_id = deliver(client, intent)
    wait_until(lambda: scalar("SELECT count(*) FROM fulfilments WHERE order_id = :o", o=order_id)
               and scalar("SELECT count(*) FROM notifications WHERE order_id = :o", o=order_id),
               20, "the fulfilment and the confirmation", logs=procs)

    # The provider delivers the same event again, and then the same payment under a new
    # event id (processed, but the order is already paid: no new jobs).
    deliver(client, intent, event_id=event_id, expect="duplicate")
    replayed = deliver(client, intent)
    wait_processed(replayed, procs)
    # And both jobs reach the queue a second time (a relay after a lost publish, an
    # acks_late redelivery).
    again = [celery.send_task(name, args=[order_id], queue="orders")
             for name in ("orders.fulfil", "orders.send_confirmation")]
    for result in again:
        wait_until(lambda result=result: f"[{result.id}] succeeded" in orders_worker.log(), 20,
                   f"the repeated job {result.id} to finish", logs=procs)
        line = next(x for x in orders_worker.log().splitlines() if f"[{result.id}] succeeded" in x)
        assert line.endswith(": False"), line  # it found the work done

    assert scalar("SELECT count(*) FROM fulfilments WHERE order_id = :o", o=order_id) == 1
    assert rows("SELECT kind, channel FROM notifications WHERE order_id = :o", o=order_id) == [
        {"kind": "payment_confirmation", "channel": "log"}]
    assert scalar("SELECT count(*) FROM payments WHERE order_id = :o", o=order_id) == 1
    assert [(j["task_name"], j["status"]) for j in outbox_rows()] == [
        ("orders.fulfil", "published"), ("orders.send_confirmation", "published")]


# ---- the depth bound ----------------------------------------------------------------


def test_bounded_depth_keeps_jobs_in_the_outbox_and_the_relay_publishes_oldest_first(
        build_app, clean, ctx):
    redis_client = clean.extensions["redis"]
    small = build_app({"QUEUE_DEPTH_MAX": 3, "QUEUE_PUBLISH_HEADROOM": 0})

    with small.app_context():
        add_jobs([("orders.fulfil", [n]) for n in range(10)], queue="orders")
        db.session.commit()
        published = relay_outbox().published
        db.session.remove()

    assert published == 3
    rows = outbox_rows()
    assert [r["status"] for r in rows] == ["published"] * 3 + ["pending"] * 7
    assert [m["args"] for m in queued(redis_client)] == [[0], [1], [2]]

    # A full queue gets nothing more from the relay either.
    with small.app_context():
        assert relay_outbox().published == 0
        db.session.remove()
    assert depth(redis_client, "orders") == 3

    batches = []
    while any(r["status"] == "pending" for r in outbox_rows()):
        assert len(batches) < 5, batches
        redis_client.delete("orders")  # the workers drained the queue
        with small.app_context():
            report = relay_outbox()
            db.session.remove()
        assert depth(redis_client, "orders") <= 3
        batches.append(([m["args"][0] for m in queued(redis_client)], report.published,
                        report.waiting))

    assert [sorted(b[0]) for b in batches] == [[3, 4, 5], [6, 7, 8], [9]]
    assert [(b[1], b[2]) for b in batches] == [(3, 4), (3, 1), (1, 0)]
    assert {r["status"] for r in outbox_rows()} == {"published"}


def test_broker_down_publishes_nothing_raises_nothing_and_the_relay_sends_the_jobs_later(
        build_app, clean, ctx):
    redis_client = clean.extensions["redis"]
    no_broker = build_app({"REDIS_URL": DEAD_REDIS_URL})

    with no_broker.app_context():
        add_jobs([("orders.fulfil", [1]), ("orders.send_confirmation", [1])], queue="orders")
        db.session.commit()
        started = time.monotonic()
        report = relay_outbox()
        elapsed = time.monotonic() - started
        db.session.remove()

    assert (report.published, report.waiting) == (0, 2)
    assert elapsed < 5.0
    assert [r["status"] for r in outbox_rows()] == ["pending", "pending"]
    assert queued(redis_client) == []

    use_celery_of(clean)  # the broker is back
    with clean.app_context():
        report = relay_outbox()
        db.session.remove()

    assert (report.published, report.waiting) == (2, 0)
    assert [r["status"] for r in outbox_rows()] == ["published", "published"]
    assert sorted(m["task"] for m in queued(redis_client)) == [
        "orders.fulfil", "orders.send_confirmation"]
