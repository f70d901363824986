"""Leases, attempts and late orders, against real worker processes.

A worker killed outright delays the events it held by at most a minute (short leases,
renewed while the task runs); a live but slow worker never loses its event; an event
that kills its worker every time ends as a failure row after WEBHOOK_MAX_ATTEMPTS; an
event whose order is committed a moment later is processed once the order is there.
"""

from __future__ import annotations

import json
import time

from tests.support.db import rows, scalar
from tests.support.events import make_order, payment_intent, stripe_event, stripe_headers
from tests.support.processes import start_worker
from tests.support.waiting import wait_until


def deliver(client, event_type: str, obj: dict) -> str:
    body, event_id = stripe_event(event_type, obj)
    response = client.post("/webhooks/stripe", data=body, headers=stripe_headers(body))
    assert response.status_code == 200, response.get_data(as_text=True)
    return event_id


def statuses() -> dict[str, str]:
    return {r["event_id"]: r["status"] for r in rows("SELECT event_id, status FROM webhook_events")}


def test_order_committed_after_its_payment_event_is_paid_by_it(client, ctx, tmp_path, processes):
    worker = start_worker(tmp_path, beat=False)
    processes.append(worker)
    order_id = 777001
    event_id = deliver(client, "payment_intent.succeeded", payment_intent(order_id))

    wait_until(lambda: scalar("SELECT attempts FROM webhook_events WHERE event_id = :e",
                              e=event_id) >= 1, 10, "the first attempt", logs=[worker])
    make_order(order_id=order_id)  # the order's commit lands just after its payment

    wait_until(lambda: statuses()[event_id] == "processed", 15, "the event to be processed",
               logs=[worker])
    assert scalar("SELECT status FROM orders WHERE id = :o", o=order_id) == "paid"
    assert scalar("SELECT count(*) FROM webhook_failures") == 0
    assert scalar("SELECT attempts FROM webhook_events WHERE event_id = :e", e=event_id) >= 2


def test_event_that_kills_its_worker_every_time_fails_after_the_attempts_cap(
        client, ctx, tmp_path, processes):
    worker = start_worker(tmp_path, beat=True, env={
        "PROCESSING_LEASE_SECONDS": "2", "WEBHOOK_MAX_ATTEMPTS": "3"})
    processes.append(worker)
    redis_client = client.application.extensions["redis"]
    event_id = deliver(client, "test.kill", {"order_id": 1, "payment_id": "pay_kill"})

    wait_until(lambda: statuses()[event_id] == "failed", 40,
               "the event to be failed after 3 attempts", logs=[worker])

    assert redis_client.llen(f"test:started:{event_id}") == 3  # never a fourth run
    row = rows("SELECT attempts, last_error FROM webhook_events WHERE event_id = :e",
               e=event_id)[0]
    assert row["attempts"] == 3
    [failure] = rows("SELECT error_message, resolved_at FROM webhook_failures")
    assert "attempts exhausted" in failure["error_message"]
    assert failure["resolved_at"] is None
    signal = rows("SELECT severity, kind, details FROM alert_signals")[0]
    assert (signal["severity"], signal["kind"]) == ("P1", "webhook_failure")
    assert json.loads(signal["details"])["attempts"] == 3
    # And it stays failed: the relay does not bring it back.
    time.sleep(3)
    assert redis_client.llen(f"test:started:{event_id}") == 3
    assert statuses()[event_id] == "failed"


def test_live_slow_worker_keeps_its_event_past_the_lease(client, ctx, tmp_path, processes):
    # Leases of 2 s renewed every half second; the handler runs 5 s. The worker's beat
    # runs the relay every second, and its second process would run the event again
    # should its lease ever expire.
    env = {"PROCESSING_LEASE_SECONDS": "2", "LEASE_RENEW_SECONDS": "0.5"}
    slow = start_worker(tmp_path, beat=True, env=env, name="slow")
    processes.append(slow)
    order_id = make_order()
    redis_client = client.application.extensions["redis"]
    event_id = deliver(client, "test.slow", {"order_id": order_id, "payment_id": "pay_slow",
                                             "sleep": 5})

    wait_until(lambda: statuses()[event_id] == "processed", 20, "the slow event", logs=[slow])

    assert redis_client.llen(f"test:started:{event_id}") == 1  # never handed to another
    assert scalar("SELECT attempts FROM webhook_events WHERE event_id = :e", e=event_id) == 1
    assert scalar("SELECT count(*) FROM payments WHERE order_id = :o", o=order_id) == 1


# Shorter than production's 30 s each, to keep the test short; what production's values
# give (at most 40 s) is checked in tests/unit/webhooks/test_lease_defaults.py.
LEASE = 8


def test_worker_killed_mid_burst_delays_the_events_it_held_by_a_lease_at_most(
        build_app, client, ctx, tmp_path, processes):
    """Running events come back when their lease expires; prefetched ones, which the dead
    worker took off the queue, when their publish lease does. Both are short."""
    timings = {"PROCESSING_LEASE_SECONDS": str(LEASE), "PUBLISH_GRACE_SECONDS": str(LEASE)}
    client = build_app({key: int(value) for key, value in timings.items()}).test_client()
    doomed = start_worker(tmp_path, beat=False, concurrency=2, name="doomed", env=timings)
    processes.append(doomed)
    burst = 12
    orders = [make_order() for _ in range(burst)]
    redis_client = client.application.extensions["redis"]
    event_ids = [deliver(client, "test.slow", {"order_id": order_id, "payment_id": f"pay_{n}",
                                               "sleep": 1.5})
                 for n, order_id in enumerate(orders)]
    # Two running, the rest prefetched (or still on the queue) when the worker dies.
    wait_until(lambda: sum(redis_client.llen(f"test:started:{e}") for e in event_ids) >= 3, 15,
               "the burst to be under way", logs=[doomed])
    doomed.kill9()
    killed_at = time.monotonic()
    held = {e for e, status in statuses().items() if status != "processed"}
    assert len(held) >= 3

    rescuer = start_worker(tmp_path, beat=True, concurrency=2, name="rescuer", env=timings)
    processes.append(rescuer)
    wait_until(lambda: all(statuses()[e] == "processed" for e in event_ids), 60,
               lambda: f"every held event to be processed: {statuses()}", logs=[rescuer])

    # A lease, a relay pass (1 s here) and the work itself (12 x 1.5 s on 2 processes).
    assert time.monotonic() - killed_at < LEASE + 2 + burst * 1.5 / 2 + 5
    assert scalar("SELECT count(*) FROM payments") == burst  # each exactly once
    assert scalar("SELECT count(*) FROM webhook_failures") == 0
