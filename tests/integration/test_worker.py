"""The processing half of the life of a webhook, against one real Celery worker.

Deliveries go through the HTTP endpoint (Flask's test client, in this process); a real
`celery worker -B` process, shared by the module, claims and applies them and runs the
relay every second. Each test starts from empty tables and an empty Redis namespace
(`clean`), delivers, then polls the database until the worker is done.
"""

from __future__ import annotations

import json
import uuid
from datetime import timedelta

import pytest
from sqlalchemy import text

from service.clock import utcnow
from service.extensions import db
from tests.support.db import rows, scalar
from tests.support.events import (
    charge_refunded,
    make_order,
    payment_intent,
    paypal_event,
    paypal_headers,
    stripe_event,
    stripe_headers,
)
from tests.support.processes import start_worker
from tests.support.waiting import wait_until

MISSING_ORDER = 424242


@pytest.fixture(scope="module")
def worker(app, tmp_path_factory):
    """One worker with embedded beat (relay every 1 s) for the whole module."""
    proc = start_worker(tmp_path_factory.mktemp("worker"), concurrency=2, beat=True)
    yield proc
    proc.stop()


@pytest.fixture
def redis_client(clean):
    return clean.extensions["redis"]


@pytest.fixture
def cli(clean):
    """`flask webhooks ...`, each run in its own app context (and so its own session),
    as a separate process would: the test's session must not feed it cached rows."""
    runner = clean.test_cli_runner()

    def invoke(*args: str):
        with clean.app_context():
            return runner.invoke(args=["webhooks", *args])

    return invoke


# ---- helpers ------------------------------------------------------------------------


def event(event_id: str) -> dict | None:
    found = rows("SELECT * FROM webhook_events WHERE event_id = :e", e=event_id)
    return found[0] if found else None


def status_of(event_id: str) -> str | None:
    return scalar("SELECT status FROM webhook_events WHERE event_id = :e", e=event_id)


def wait_for_status(event_id: str, status: str, worker, timeout: float = 20.0) -> dict:
    wait_until(lambda: status_of(event_id) == status, timeout,
               f"event {event_id} to be {status} (now {status_of(event_id)})", logs=(worker,))
    return event(event_id)


def order_status(order_id: int) -> str:
    return scalar("SELECT status FROM orders WHERE id = :o", o=order_id)


def failures() -> list[dict]:
    return rows("SELECT * FROM webhook_failures ORDER BY id")


def deliver(client, event_type: str, obj: dict, *, event_id: str | None = None,
            expect: str = "stored") -> str:
    body, event_id = stripe_event(event_type, obj, event_id=event_id)
    response = client.post("/webhooks/stripe", data=body, headers=stripe_headers(body))
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.get_json()["status"] == expect
    return event_id


def attempt_times(redis_client, event_id: str) -> list[float]:
    return [float(v) for v in redis_client.lrange(f"test:attempts:{event_id}", 0, -1)]


# ---- transient failures -------------------------------------------------------------

def test_transient_failures_are_retried_with_growing_delays_until_processed(
        worker, client, ctx, redis_client):
    order_id = make_order()
    event_id = deliver(client, "test.flaky", {"order_id": order_id, "payment_id": "pay_flaky",
                                              "fail_times": 2})

    row = wait_for_status(event_id, "processed", worker)

    assert row["attempts"] == 3
    assert row["last_error"] is None
    times = attempt_times(redis_client, event_id)
    assert len(times) == 3
    first_gap, second_gap = times[1] - times[0], times[2] - times[1]
    # WEBHOOK_RETRY_BACKOFF=1 without jitter: 1 s before the first retry, 2 s before the second.
    assert 0.9 <= first_gap < 1.9, times
    assert 1.9 <= second_gap < 3.5, times
    assert second_gap > first_gap + 0.5, times
    assert scalar("SELECT count(*) FROM payments WHERE order_id = :o", o=order_id) == 1
    assert order_status(order_id) == "paid"
    assert failures() == []


def test_transient_failures_beyond_max_retries_end_in_one_failure_row(
        worker, client, ctx, redis_client):
    order_id = make_order()
    event_id = deliver(client, "test.flaky", {"order_id": order_id, "payment_id": "pay_never",
                                              "fail_times": 10})

    # Three retries after 1 + 2 + 4 s.
    row = wait_for_status(event_id, "failed", worker, timeout=25)

    assert row["attempts"] == 4  # the first run and WEBHOOK_MAX_RETRIES=3 retries
    assert len(attempt_times(redis_client, event_id)) == 4
    recorded = failures()
    assert len(recorded) == 1
    assert recorded[0]["event_pk"] == row["id"]
    assert recorded[0]["event_type"] == "test.flaky"
    assert "retries exhausted" in recorded[0]["error_message"]
    assert recorded[0]["resolved_at"] is None
    assert scalar("SELECT count(*) FROM payments") == 0
    assert order_status(order_id) == "pending"


def test_message_delivered_again_while_event_is_processing_runs_handler_once(
        worker, client, ctx, redis_client):
    order_id = make_order()
    event_id = deliver(client, "test.slow", {"order_id": order_id, "payment_id": "pay_twice",
                                             "sleep": 2})
    started_key = f"test:started:{event_id}"
    wait_until(lambda: status_of(event_id) == "processing" and redis_client.llen(started_key),
               10, "the handler to start", logs=(worker,))

    # What acks_late redelivery, the relay or a replay can do: a second message for the
    # same row while the first run holds its lease. The worker has a free process for it.
    celery = client.application.extensions["celery"]
    duplicate = celery.send_task("webhooks.process_event", args=[event(event_id)["id"]],
                                 queue="webhooks")
    wait_until(lambda: f"[{duplicate.id}] succeeded" in worker.log(), 10,
               "the second message to be handled", logs=(worker,))
    row = wait_for_status(event_id, "processed", worker)

    line = next(x for x in worker.log().splitlines() if f"[{duplicate.id}] succeeded" in x)
    assert line.endswith("'skipped'"), line
    assert row["attempts"] == 1
    assert redis_client.llen(started_key) == 1
    assert scalar("SELECT count(*) FROM payments WHERE order_id = :o", o=order_id) == 1


# ---- permanent failures and replay --------------------------------------------------

def test_missing_order_fails_after_its_waiting_retries_and_replay_processes_it(
        worker, client, ctx, cli):
    event_id = deliver(client, "payment_intent.succeeded", payment_intent(MISSING_ORDER))

    row = wait_for_status(event_id, "failed", worker)

    assert row["attempts"] == 3  # the first try and ORDER_WAIT_RETRIES=2 more
    recorded = failures()
    assert len(recorded) == 1
    failure = recorded[0]
    assert failure["event_pk"] == row["id"]
    assert f"order {MISSING_ORDER} does not exist" in failure["error_message"]
    assert (failure["retry_count"], failure["last_retry_at"], failure["resolved_at"]) == (
        0, None, None)

    assert make_order(order_id=MISSING_ORDER) == MISSING_ORDER
    result = cli("retry", "--id", str(failure["id"]))

    assert result.exit_code == 0, result.output
    assert ("1 selected: 1 enqueued, 0 left for the relay (broker down), "
            "0 skipped (already processed)") in result.stdout
    row = wait_for_status(event_id, "processed", worker)
    assert row["attempts"] == 4
    failure = failures()[0]
    assert failure["resolved_at"] is not None
    assert failure["retry_count"] == 1
    assert failure["last_retry_at"] is not None
    assert order_status(MISSING_ORDER) == "paid"
    assert scalar("SELECT count(*) FROM payments WHERE order_id = :o", o=MISSING_ORDER) == 1


def test_replay_selects_by_since_and_provider_and_dry_run_changes_nothing(
        worker, client, ctx, cli, paypal_signing):
    old_id = deliver(client, "payment_intent.succeeded", payment_intent(MISSING_ORDER + 1))
    recent_id = deliver(client, "payment_intent.succeeded", payment_intent(MISSING_ORDER + 2))
    body, paypal_id = paypal_event("PAYMENT.CAPTURE.COMPLETED", {
        "id": f"CAP-{uuid.uuid4().hex[:12]}", "status": "COMPLETED",
        "amount": {"value": "10.00", "currency_code": "EUR"},
        "custom_id": str(MISSING_ORDER + 3)})
    response = client.post("/webhooks/paypal", data=body,
                           headers=paypal_headers(paypal_signing[0], body))
    assert response.status_code == 200, response.get_data(as_text=True)
    for event_id in (old_id, recent_id, paypal_id):
        wait_for_status(event_id, "failed", worker)
    by_event = {f["event_pk"]: f for f in failures()}
    old, recent, paypal = (by_event[event(e)["id"]]["id"] for e in (old_id, recent_id, paypal_id))
    with db.engine.begin() as conn:
        conn.execute(text("UPDATE webhook_failures SET created_at = :t, updated_at = :t "
                          "WHERE id = :i"), {"t": utcnow() - timedelta(hours=2), "i": old})
    for order_id in (MISSING_ORDER + 1, MISSING_ORDER + 2, MISSING_ORDER + 3):
        make_order(order_id=order_id)

    def dry_run(*args: str) -> set[int]:
        result = cli("retry", *args, "--dry-run", "--json")
        assert result.exit_code == 0, result.output
        data = json.loads(result.stdout)
        assert data["dry_run"] is True
        return {f["id"] for f in data["would_retry"]}

    assert dry_run("--since", "1h") == {recent, paypal}
    assert dry_run("--provider", "stripe") == {old, recent}
    assert dry_run("--provider", "paypal") == {paypal}
    assert dry_run("--since", "1h", "--provider", "stripe") == {recent}
    text_result = cli("retry", "--since", "3h", "--dry-run")
    assert text_result.exit_code == 0, text_result.output
    assert "dry run: 3 failure(s) would be retried" in text_result.stdout

    untouched = [(f["retry_count"], f["last_retry_at"], f["resolved_at"]) for f in failures()]
    assert untouched == [(0, None, None)] * 3
    assert {status_of(e) for e in (old_id, recent_id, paypal_id)} == {"failed"}

    result = cli("retry", "--since", "1h", "--provider", "stripe")
    assert result.exit_code == 0, result.output
    assert "1 selected: 1 enqueued" in result.stdout
    wait_for_status(recent_id, "processed", worker)

    # Only the selected failure was replayed; the dry runs queued nothing either.
    assert status_of(old_id) == "failed"
    assert status_of(paypal_id) == "failed"
    counts = {f["id"]: f["retry_count"] for f in failures()}
    assert counts == {old: 0, recent: 1, paypal: 0}
    assert order_status(MISSING_ORDER + 2) == "paid"
    assert order_status(MISSING_ORDER + 1) == "pending"
    assert order_status(MISSING_ORDER + 3) == "pending"

    listed = cli("list", "--json")
    assert listed.exit_code == 0, listed.output
    assert {e["event_id"]: e["status"] for e in json.loads(listed.stdout)} == {
        old_id: "failed", recent_id: "processed", paypal_id: "failed"}
    listed_failures = cli("list", "--failures", "--json")
    assert listed_failures.exit_code == 0, listed_failures.output
    assert {f["id"] for f in json.loads(listed_failures.stdout)} == {old, recent, paypal}
    shown = cli("show", str(event(recent_id)["id"]), "--json")
    assert shown.exit_code == 0, shown.output
    detail = json.loads(shown.stdout)
    assert detail["status"] == "processed"
    assert detail["failure"]["id"] == recent
    assert detail["failure"]["resolved_at"] is not None
    assert json.loads(detail["payload"])["id"] == recent_id


def test_retry_of_unknown_failure_id_is_an_error(ctx, cli):
    result = cli("retry", "--id", "999999")

    assert result.exit_code != 0
    assert "no unresolved failure with id 999999" in result.output


# ---- out-of-order events ------------------------------------------------------------

def test_refund_before_payment_leaves_order_refunded_never_paid(worker, client, ctx):
    order_id = make_order(total_cents=1000)
    intent_id = f"pi_{uuid.uuid4().hex[:20]}"
    refund_obj = charge_refunded(order_id, intent_id=intent_id, amount=1000,
                                 refunds=[("re_full", 1000)])
    refund_id = deliver(client, "charge.refunded", refund_obj)
    wait_for_status(refund_id, "processed", worker)
    assert order_status(order_id) == "refunded"

    payment_id = deliver(client, "payment_intent.succeeded",
                         payment_intent(order_id, amount=1000, intent_id=intent_id))
    wait_for_status(payment_id, "processed", worker)
    # The provider redelivers both; neither is stored again.
    deliver(client, "charge.refunded", refund_obj, event_id=refund_id, expect="duplicate")
    deliver(client, "payment_intent.succeeded",
            payment_intent(order_id, amount=1000, intent_id=intent_id), event_id=payment_id,
            expect="duplicate")

    assert order_status(order_id) == "refunded"
    assert scalar("SELECT count(*) FROM payments WHERE order_id = :o", o=order_id) == 1
    assert scalar("SELECT count(*) FROM refunds WHERE order_id = :o", o=order_id) == 1
    changes = rows("SELECT id, from_status, to_status, applied FROM order_status_changes "
                   "WHERE order_id = :o ORDER BY id", o=order_id)
    moves = [(c["from_status"], c["to_status"], c["applied"]) for c in changes]
    assert moves == [("pending", "refunded", True), ("refunded", "paid", False)]
    assert scalar("SELECT count(*) FROM webhook_events") == 2


def test_partial_refund_then_full_refund_moves_order_forward(worker, client, ctx):
    order_id = make_order(total_cents=1000)
    intent_id = f"pi_{uuid.uuid4().hex[:20]}"

    paid = deliver(client, "payment_intent.succeeded",
                   payment_intent(order_id, amount=1000, intent_id=intent_id))
    wait_for_status(paid, "processed", worker)
    assert order_status(order_id) == "paid"

    partial = deliver(client, "charge.refunded", charge_refunded(
        order_id, intent_id=intent_id, amount=1000, refunds=[("re_part_1", 400)]))
    wait_for_status(partial, "processed", worker)
    assert order_status(order_id) == "partially_refunded"

    # Stripe sends the charge with every refund so far: the first is not counted twice.
    full = deliver(client, "charge.refunded", charge_refunded(
        order_id, intent_id=intent_id, amount=1000,
        refunds=[("re_part_1", 400), ("re_part_2", 600)]))
    wait_for_status(full, "processed", worker)
    assert order_status(order_id) == "refunded"

    refunds = rows("SELECT provider_refund_id, amount_cents FROM refunds WHERE order_id = :o "
                   "ORDER BY id", o=order_id)
    assert [(r["provider_refund_id"], r["amount_cents"]) for r in refunds] == [
        ("re_part_1", 400), ("re_part_2", 600)]
    moves = [(c["from_status"], c["to_status"], c["applied"]) for c in rows(
        "SELECT from_status, to_status, applied FROM order_status_changes WHERE order_id = :o "
        "ORDER BY id", o=order_id)]
    assert moves == [("pending", "paid", True), ("paid", "partially_refunded", True),
                     ("partially_refunded", "refunded", True)]
    assert scalar("SELECT count(*) FROM payments WHERE order_id = :o", o=order_id) == 1
