"""Recovery from crashes: a worker killed mid-task, and the broker down at intake.

Each test starts its own processes, because it kills or starves them: a worker is
SIGKILLed while it holds an event, or Redis is stopped under a running gunicorn and
worker and started again, empty, on the same port. In both cases the database decides
what is outstanding and the relay (beat, every second) hands it to a live worker.
"""

from __future__ import annotations

import time

import requests
from sqlalchemy import text

from service.extensions import db
from tests.support.db import scalar
from tests.support.events import make_order, payment_intent, stripe_event, stripe_headers
from tests.support.processes import start_gunicorn, start_worker
from tests.support.redis_server import RedisServer
from tests.support.waiting import wait_until


def holds_for(predicate, seconds: float, *, interval: float = 0.1) -> bool:
    """True when `predicate` stays true for the whole of `seconds`."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not predicate():
            return False
        time.sleep(interval)
    return bool(predicate())


def event(event_id: str) -> dict:
    with db.engine.connect() as conn:
        return dict(conn.execute(text("SELECT * FROM webhook_events WHERE event_id = :e"),
                                 {"e": event_id}).mappings().one())


def status_of(event_id: str) -> str | None:
    return scalar("SELECT status FROM webhook_events WHERE event_id = :e", e=event_id)


def deliver_to_doomed_worker(client, tmp_path, processes, event_type: str, obj: dict):
    """Start the worker the test will kill (3 s processing lease), and deliver one event."""
    doomed = start_worker(tmp_path, beat=False, name="doomed",
                          env={"PROCESSING_LEASE_SECONDS": "3"})
    processes.append(doomed)
    body, event_id = stripe_event(event_type, obj)
    response = client.post("/webhooks/stripe", data=body, headers=stripe_headers(body))
    assert response.status_code == 200, response.get_data(as_text=True)
    return doomed, event_id


def test_event_of_worker_killed_mid_task_is_finished_once_by_another_worker(
        client, ctx, tmp_path, processes):
    order_id = make_order()
    redis_client = client.application.extensions["redis"]
    doomed, event_id = deliver_to_doomed_worker(
        client, tmp_path, processes,
        "test.slow", {"order_id": order_id, "payment_id": "pay_slow", "sleep": 4})
    started_key = f"test:started:{event_id}"

    wait_until(lambda: status_of(event_id) == "processing" and redis_client.llen(started_key) == 1,
               15, "the first worker to start the slow handler", logs=[doomed])
    doomed.kill9()

    assert status_of(event_id) == "processing"
    assert scalar("SELECT count(*) FROM payments") == 0
    # Its message stays unacknowledged in Redis for the visibility timeout (an hour); only
    # the expired lease, seen by the relay, can bring the event back.
    rescuer = start_worker(tmp_path, beat=True, name="rescuer")
    processes.append(rescuer)
    wait_until(lambda: status_of(event_id) == "processed", 40,
               "the event to be processed by the second worker", logs=[rescuer])

    row = event(event_id)
    assert row["attempts"] == 2
    assert row["lease_token"] is None
    assert redis_client.llen(started_key) == 2
    assert scalar("SELECT count(*) FROM payments WHERE order_id = :o", o=order_id) == 1
    assert scalar("SELECT status FROM orders WHERE id = :o", o=order_id) == "paid"
    assert scalar("SELECT count(*) FROM webhook_failures") == 0


def test_event_of_worker_killed_while_waiting_to_retry_is_finished_by_another_worker(
        client, ctx, tmp_path, processes):
    order_id = make_order()
    redis_client = client.application.extensions["redis"]
    # A waiting retry is leased for its countdown plus the processing lease.
    doomed, event_id = deliver_to_doomed_worker(
        client, tmp_path, processes,
        "test.flaky", {"order_id": order_id, "payment_id": "pay_wait", "fail_times": 2})
    attempts_key = f"test:attempts:{event_id}"

    # The second failure schedules the last retry 2 s later; the worker dies before it.
    wait_until(lambda: redis_client.llen(attempts_key) == 2 and status_of(event_id) == "queued",
               15, "the second attempt to fail", logs=[doomed])
    doomed.kill9()
    assert redis_client.llen(attempts_key) == 2

    rescuer = start_worker(tmp_path, beat=True, name="rescuer")
    processes.append(rescuer)
    wait_until(lambda: status_of(event_id) == "processed", 15,
               "the event to be processed by the second worker", logs=[rescuer])

    assert redis_client.llen(attempts_key) == 3
    assert scalar("SELECT count(*) FROM payments WHERE order_id = :o", o=order_id) == 1


def test_delivery_accepted_while_broker_is_down_is_processed_once_when_it_returns(
        ctx, tmp_path, processes):
    broker = RedisServer(tmp_path / "redis").start()
    processes.append(broker)
    private = {"REDIS_URL": broker.url()}
    web, base = start_gunicorn(tmp_path, workers=1, threads=4, env=private)
    processes.append(web)
    worker = start_worker(tmp_path, beat=True, env=private)
    processes.append(worker)
    order_id = make_order()

    broker.stop()
    body, event_id = stripe_event("payment_intent.succeeded", payment_intent(order_id))
    began = time.monotonic()
    response = requests.post(base + "/webhooks/stripe", data=body, headers=stripe_headers(body),
                             timeout=30)
    answered_in = time.monotonic() - began

    assert response.status_code == 200, response.text
    assert response.json()["status"] == "stored"
    assert answered_in < 5, f"intake waited {answered_in:.1f}s on the dead broker"
    # Stored but not on any queue: neither intake nor the relay can publish it yet.
    assert holds_for(lambda: status_of(event_id) == "received", 2.0), status_of(event_id)

    broker.start()
    wait_until(lambda: status_of(event_id) == "processed", 60,
               "the relay to enqueue the event once Redis is back", logs=[worker, web])

    assert '"msg": "relay published stored events"' in worker.log()
    row = event(event_id)
    assert row["attempts"] == 1
    assert scalar("SELECT count(*) FROM webhook_events") == 1
    assert scalar("SELECT count(*) FROM payments WHERE order_id = :o", o=order_id) == 1
    assert scalar("SELECT status FROM orders WHERE id = :o", o=order_id) == "paid"
    # Redelivery by the provider after the outage is a duplicate, never a second payment.
    again = requests.post(base + "/webhooks/stripe", data=body, headers=stripe_headers(body),
                          timeout=30)
    assert again.status_code == 200, again.text
    assert again.json()["status"] == "duplicate"
