"""`webhooks.process_events`: the relay's batch jobs, against real workers, PostgreSQL and Redis.

Events are stored the way intake stores them when the queue is busy (`received`, direct
publishing paused), and the relay sends them as batch jobs. Each event of a batch is
applied in its own transaction with the per-event logic: exactly once, a failure row for
a poison event, its own retry for a transient error, leases that bring the relay back
after a worker is killed mid-batch, and the batch's weight out of the depth at the end.
"""

from __future__ import annotations

import base64
import json
import threading

from sqlalchemy import text

from service.extensions import db
from service.queues.depth import depth, weight_key
from service.webhooks.relay import relay_pending
from tests.support.db import scalar
from tests.support.events import make_orders, payment_intent, stripe_event, stripe_headers
from tests.support.processes import start_worker
from tests.support.waiting import wait_until


def store(client, events: list[tuple[str, dict]]) -> list[str]:
    """Deliver events with direct publishing paused: stored `received`, for the relay."""
    direct = client.application.extensions["webhook_direct_publishing"]
    direct.pause(600)
    ids = []
    try:
        for event_type, obj in events:
            body, event_id = stripe_event(event_type, obj)
            response = client.post("/webhooks/stripe", data=body, headers=stripe_headers(body))
            assert response.status_code == 200, response.get_data(as_text=True)
            assert response.get_json()["status"] == "stored"
            ids.append(event_id)
    finally:
        direct.resume()
    assert scalar("SELECT count(*) FROM webhook_events WHERE status <> 'received'") == 0
    # Past RELAY_MIN_AGE_SECONDS (1 s in the tests' settings).
    db.session.execute(text("UPDATE webhook_events"
                            " SET received_at = received_at - interval '10 seconds'"))
    db.session.commit()
    return ids


def messages(app) -> list[tuple[str, list]]:
    """(task, args) of each message waiting on the `webhooks` list, oldest first."""
    found = []
    for raw in reversed(app.extensions["redis"].lrange("webhooks", 0, -1)):
        envelope = json.loads(raw)
        args, _kwargs, _embed = json.loads(base64.b64decode(envelope["body"]))
        found.append((envelope["headers"]["task"], args))
    return found


def event_row(event_id: str) -> dict:
    with db.engine.connect() as conn:
        return dict(conn.execute(text("SELECT * FROM webhook_events WHERE event_id = :e"),
                                 {"e": event_id}).mappings().one())


def test_a_batch_applies_each_event_once_fails_the_poison_and_retries_the_transient(
        client, ctx, tmp_path, processes):
    orders = make_orders(6)
    good = [("payment_intent.succeeded", payment_intent(order_id)) for order_id in orders[:4]]
    poison = ("test.broken", {"order_id": orders[4], "payment_id": "pay_poison"})
    flaky = ("test.flaky", {"order_id": orders[5], "payment_id": "pay_flaky", "fail_times": 1})
    ids = store(client, [good[0], poison, good[1], flaky, good[2], good[3]])
    redis = client.application.extensions["redis"]

    report = relay_pending()
    assert (report.enqueued, report.jobs) == (6, 1)
    [(task, [batch])] = messages(client.application)
    assert task == "webhooks.process_events"
    assert batch == sorted(batch) and len(batch) == 6
    assert depth(redis, "webhooks") == 6  # one message, weighing its six events

    worker = start_worker(tmp_path, beat=False, name="batch")
    processes.append(worker)
    wait_until(lambda: scalar("SELECT count(*) FROM webhook_events WHERE status IN"
                              " ('processed', 'failed')") == 6, 30,
               "every event of the batch to be settled", logs=[worker])

    statuses = {event_id: event_row(event_id)["status"] for event_id in ids}
    assert statuses == {ids[0]: "processed", ids[1]: "failed", ids[2]: "processed",
                        ids[3]: "processed", ids[4]: "processed", ids[5]: "processed"}
    # The poison event: one failure row, its own; the rest of the batch was not held up.
    assert scalar("SELECT count(*) FROM webhook_failures") == 1
    assert scalar("SELECT event_pk FROM webhook_failures") == event_row(ids[1])["id"]
    # The transient one failed in the batch and succeeded in its own retry.
    assert event_row(ids[3])["attempts"] == 2
    assert redis.llen(f"test:attempts:{ids[3]}") == 2
    assert "Task webhooks.process_event[" in worker.log()
    # Every payment exactly once; every other event took one attempt.
    assert scalar("SELECT count(*) FROM payments") == 5
    assert scalar("SELECT count(DISTINCT order_id) FROM payments") == 5
    assert scalar("SELECT count(*) FROM webhook_events WHERE attempts = 1") == 5
    assert worker.log().count('"msg": "event handled"') == 5
    # The batch's weight left the depth when it ended.
    wait_until(lambda: depth(redis, "webhooks") == 0, 10, "the depth back to zero")
    assert redis.exists(weight_key("webhooks")) == 0


def test_worker_killed_mid_batch_leaves_nothing_lost_and_nothing_twice(
        client, ctx, tmp_path, processes):
    orders = make_orders(4)
    ids = store(client, [
        ("payment_intent.succeeded", payment_intent(orders[0])),
        ("test.slow", {"order_id": orders[1], "payment_id": "pay_slow", "sleep": 4}),
        ("payment_intent.succeeded", payment_intent(orders[2])),
        ("payment_intent.succeeded", payment_intent(orders[3])),
    ])
    redis = client.application.extensions["redis"]
    assert relay_pending().jobs == 1
    doomed = start_worker(tmp_path, beat=False, name="doomed",
                          env={"PROCESSING_LEASE_SECONDS": "3"})
    processes.append(doomed)
    wait_until(lambda: redis.llen(f"test:started:{ids[1]}") == 1, 20,
               "the batch to reach its slow event", logs=[doomed])
    doomed.kill9()

    # The first event is done; the slow one and those after it hold the batch's lease.
    assert event_row(ids[0])["status"] == "processed"
    assert [event_row(event_id)["status"] for event_id in ids[1:]] == ["processing"] * 3
    # The batch message stays unacknowledged for the visibility timeout: only the expired
    # leases, seen by the relay, bring the events back.
    rescuer = start_worker(tmp_path, beat=True, name="rescuer")
    processes.append(rescuer)
    wait_until(lambda: scalar("SELECT count(*) FROM webhook_events"
                              " WHERE status = 'processed'") == 4, 40,
               "every event to be processed", logs=[rescuer])

    assert scalar("SELECT count(*) FROM payments") == 4
    assert scalar("SELECT count(DISTINCT order_id) FROM payments") == 4
    assert scalar("SELECT count(*) FROM orders WHERE status = 'paid'") == 4
    assert event_row(ids[0])["attempts"] == 1
    assert [event_row(event_id)["attempts"] for event_id in ids[1:]] == [2, 2, 2]
    assert redis.llen(f"test:started:{ids[1]}") == 2
    assert scalar("SELECT count(*) FROM webhook_failures") == 0


def test_an_event_that_kills_its_worker_in_a_batch_spends_only_its_own_attempts(
        client, ctx, tmp_path, processes):
    """The batch dies with its first event, every time that event runs. Brought back by
    the relay, each event the worker died under goes alone: the killer reaches the
    attempts cap by itself, and the events that shared its batch are processed."""
    orders = make_orders(5)
    ids = store(client, [("test.kill", {"order_id": orders[0], "payment_id": "pay_kill"})]
                + [("payment_intent.succeeded", payment_intent(order_id))
                   for order_id in orders[1:]])
    redis = client.application.extensions["redis"]
    assert relay_pending().jobs == 1  # one batch, the killer first in it
    worker = start_worker(tmp_path, beat=True, name="batch-killed", env={
        "PROCESSING_LEASE_SECONDS": "2", "WEBHOOK_MAX_ATTEMPTS": "3"})
    processes.append(worker)

    wait_until(lambda: scalar("SELECT count(*) FROM webhook_events WHERE status IN"
                              " ('processed', 'failed')") == 5, 60,
               "every event of the batch to be settled", logs=[worker])

    assert event_row(ids[0])["status"] == "failed"
    assert redis.llen(f"test:started:{ids[0]}") == 3
    assert [event_row(event_id)["status"] for event_id in ids[1:]] == ["processed"] * 4
    # Killed once in the batch, then processed alone: two attempts each, not the cap.
    assert [event_row(event_id)["attempts"] for event_id in ids[1:]] == [2] * 4
    assert scalar("SELECT count(*) FROM payments") == 4
    assert scalar("SELECT count(*) FROM webhook_failures") == 1


def test_two_relays_at_once_publish_each_event_exactly_once(client, ctx, build_app):
    orders = make_orders(1)
    store(client, [("test.unhandled", {"order_id": orders[0], "n": n}) for n in range(400)])
    # Small claims, so the two passes interleave many times.
    app = build_app({"RELAY_BATCH_SIZE": 15, "WEBHOOK_EVENTS_PER_JOB": 7})
    relays = 2
    reports = []
    errors: list[BaseException] = []
    start = threading.Barrier(relays)

    def relay() -> None:
        try:
            with app.app_context():
                start.wait(timeout=10)
                reports.append(relay_pending(limit=400))
                db.session.remove()
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=relay) for _ in range(relays)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert not errors, errors
    published = [pk for task, args in messages(app)
                 for pk in (args[0] if task == "webhooks.process_events" else args)]
    assert len(published) == len(set(published)) == 400
    assert sum(report.enqueued for report in reports) == 400
    assert scalar("SELECT count(*) FROM webhook_events WHERE status = 'queued'") == 400
    assert depth(app.extensions["redis"], "webhooks") == 400


def test_relay_command_publishes_until_empty_and_says_so(client, ctx, build_app):
    orders = make_orders(1)
    store(client, [("test.unhandled", {"order_id": orders[0], "n": n}) for n in range(120)])

    result = client.application.test_cli_runner().invoke(
        args=["webhooks", "relay", "--until-empty", "--json"])

    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == {"found": 120, "enqueued": 120, "jobs": 3,
                                         "broker_down": False}
    assert [len(args[0]) for _task, args in messages(client.application)] == [50, 50, 20]
    again = client.application.test_cli_runner().invoke(args=["webhooks", "relay"])
    assert again.exit_code == 0
    assert again.output.startswith("0 event(s) published in 0 job(s)")

    no_broker = build_app({"REDIS_URL": "redis://127.0.0.1:1/0"})
    with no_broker.app_context():  # the command runs in the current app's context
        down = no_broker.test_cli_runner().invoke(args=["webhooks", "relay"])
    assert down.exit_code == 1, down.output
    assert "broker unavailable" in down.output
