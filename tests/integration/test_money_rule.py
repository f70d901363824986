"""The money rule against the real database, through the real handlers.

Each test feeds parsed provider events to the handler for their type, as a worker does
(inside one transaction, committed after), and reads what was recorded: payments and
their status, the order's status and sums, the follow-up jobs in the outbox, the
signals. The worker's own part (claim, commit, retries) is covered by test_worker.py
and by the concurrent-refund test at the end, which runs two worker processes.
"""

from __future__ import annotations

import json
import time
import uuid

import psycopg
import pytest

from service.extensions import db
from service.webhooks import handlers
from service.webhooks.exceptions import PermanentError
from tests.support.db import rows, scalar
from tests.support.events import (
    make_order,
    stripe_event,
    stripe_headers,
)
from tests.support.processes import start_worker
from tests.support.waiting import wait_until


def handle(provider: str, event_type: str, payload: dict) -> None:
    """Apply one event as the worker does: its handler, then the commit."""
    handler = handlers.lookup(provider, event_type)
    handler(payload, f"{provider}:{payload['id']}")
    db.session.commit()


def stripe(event_type: str, obj: dict, *, livemode: bool = False) -> dict:
    return {"id": f"evt_{uuid.uuid4().hex[:16]}", "object": "event", "type": event_type,
            "livemode": livemode, "data": {"object": obj}}


def paid(order_id: int, received: int, *, currency: str = "eur", intent: str | None = None,
         asked: int | None = None) -> dict:
    return stripe("payment_intent.succeeded", {
        "id": intent or f"pi_{uuid.uuid4().hex[:12]}", "object": "payment_intent",
        "amount": asked if asked is not None else received, "amount_received": received,
        "currency": currency, "metadata": {"order_id": str(order_id)}})


def refunded(order_id: int, intent: str, *, refunds: list | None = None,
             cumulative: int | None = None, captured: int = 1000, currency: str = "eur") -> dict:
    charge = {"id": f"ch_{intent}", "object": "charge", "payment_intent": intent,
              "amount": captured, "amount_captured": captured, "currency": currency,
              "metadata": {"order_id": str(order_id)}}
    if refunds is not None:
        charge["refunds"] = {"object": "list", "has_more": False, "data": [
            {"id": rid, "amount": amount, "currency": currency, "status": status}
            for rid, amount, status in refunds]}
        charge["amount_refunded"] = sum(a for _, a, s in refunds if s == "succeeded")
    if cumulative is not None:
        charge["amount_refunded"] = cumulative
    return stripe("charge.refunded", charge)


def paypal(event_type: str, resource: dict) -> dict:
    return {"id": f"WH-{uuid.uuid4().hex[:16]}", "event_type": event_type,
            "resource": resource}


def order(order_id: int) -> dict:
    return rows("SELECT status, paid_cents, refunded_cents, paid_at FROM orders WHERE id = :o",
                o=order_id)[0]


def payments(order_id: int) -> list[tuple]:
    return [(p["status"], p["amount_cents"], p["currency"]) for p in rows(
        "SELECT status, amount_cents, currency FROM payments WHERE order_id = :o ORDER BY id",
        o=order_id)]


def jobs(order_id: int) -> list[str]:
    return sorted(j["task_name"] for j in rows("SELECT task_name, args FROM outbox_jobs")
                  if json.loads(j["args"]) == [order_id])


def signals() -> list[dict]:
    return [{**s, "details": json.loads(s["details"])} for s in rows(
        "SELECT severity, kind, details FROM alert_signals ORDER BY id")]


FOLLOW_UPS = ["orders.fulfil", "orders.send_confirmation"]


# ---- payments ---------------------------------------------------------------------------

def test_underpayment_is_recorded_not_paid_not_fulfilled_and_signalled(ctx):
    order_id = make_order(total_cents=1000)

    handle("stripe", "payment_intent.succeeded", paid(order_id, 600, asked=1000))

    assert order(order_id)["status"] == "pending"
    assert order(order_id)["paid_at"] is None
    assert payments(order_id) == [("underpaid", 600, "EUR")]
    assert jobs(order_id) == []
    [signal] = signals()
    assert (signal["severity"], signal["kind"]) == ("P1", "payment_underpaid")
    assert {k: signal["details"][k] for k in ("order_id", "amount", "currency", "order_total",
                                              "paid", "shortfall")} == {
        "order_id": order_id, "amount": 600, "currency": "EUR", "order_total": 1000,
        "paid": 600, "shortfall": 400}


def test_stripe_counts_amount_received_so_a_partial_capture_is_a_partial_payment(ctx):
    order_id = make_order(total_cents=1000)

    # Asked 1000, captured 700: the event's `amount` would pay the order; it must not.
    handle("stripe", "payment_intent.succeeded", paid(order_id, 700, asked=1000))

    assert order(order_id)["status"] == "pending"
    assert payments(order_id) == [("underpaid", 700, "EUR")]


def test_payment_in_another_currency_is_recorded_and_refused(ctx):
    order_id = make_order(total_cents=1000, currency="EUR")

    handle("stripe", "payment_intent.succeeded", paid(order_id, 1000, currency="usd"))

    assert order(order_id)["status"] == "pending"
    assert order(order_id)["paid_cents"] == 0
    assert payments(order_id) == [("currency_mismatch", 1000, "USD")]
    assert jobs(order_id) == []
    [signal] = signals()
    assert (signal["severity"], signal["kind"]) == ("P1", "payment_currency_mismatch")
    assert (signal["details"]["currency"], signal["details"]["order_currency"]) == ("USD", "EUR")


@pytest.mark.parametrize(("currency", "total", "stripe_amount"), [
    ("JPY", 5000, 5000), ("KRW", 75000, 75000), ("KWD", 5120, 5120), ("ISK", 500, 50000),
])
def test_zero_and_three_decimal_currencies_pay_their_orders_exactly(ctx, currency, total,
                                                                    stripe_amount):
    order_id = make_order(total_cents=total, currency=currency)

    handle("stripe", "payment_intent.succeeded",
           paid(order_id, stripe_amount, currency=currency.lower()))

    assert order(order_id)["status"] == "paid"
    assert payments(order_id) == [("succeeded", total, currency)]
    assert signals() == []


def test_a_jpy_amount_read_as_cents_would_underpay_and_is_not_paid(ctx):
    order_id = make_order(total_cents=5000, currency="JPY")

    handle("paypal", "PAYMENT.CAPTURE.COMPLETED", paypal("PAYMENT.CAPTURE.COMPLETED", {
        "id": "CAP-JPY-1", "status": "COMPLETED", "custom_id": str(order_id),
        "amount": {"currency_code": "JPY", "value": "50"}}))

    assert order(order_id)["status"] == "pending"
    assert payments(order_id) == [("underpaid", 50, "JPY")]


def test_paypal_amounts_are_read_in_the_currencys_own_units(ctx):
    yen = make_order(total_cents=5000, currency="JPY")
    euro = make_order(total_cents=1050, currency="EUR")

    for order_id, currency, value in ((yen, "JPY", "5000"), (euro, "EUR", "10.50")):
        handle("paypal", "PAYMENT.CAPTURE.COMPLETED", paypal("PAYMENT.CAPTURE.COMPLETED", {
            "id": f"CAP-{currency}", "status": "COMPLETED", "custom_id": str(order_id),
            "amount": {"currency_code": currency, "value": value}}))

    assert order(yen)["status"] == order(euro)["status"] == "paid"


def test_overpayment_pays_the_order_once_and_is_a_p2(ctx):
    order_id = make_order(total_cents=1000)

    handle("stripe", "payment_intent.succeeded", paid(order_id, 1250))

    assert order(order_id)["status"] == "paid"
    assert jobs(order_id) == FOLLOW_UPS
    [signal] = signals()
    assert (signal["severity"], signal["kind"], signal["details"]["overpaid"]) == (
        "P2", "payment_overpaid", 250)


def test_split_payments_that_reach_the_total_pay_the_order_once(ctx):
    order_id = make_order(total_cents=1000)

    handle("stripe", "payment_intent.succeeded", paid(order_id, 300))
    handle("paypal", "PAYMENT.CAPTURE.COMPLETED", paypal("PAYMENT.CAPTURE.COMPLETED", {
        "id": "CAP-SPLIT-2", "status": "COMPLETED", "custom_id": str(order_id),
        "amount": {"currency_code": "EUR", "value": "3.00"}}))
    assert order(order_id)["status"] == "pending"
    handle("stripe", "payment_intent.succeeded", paid(order_id, 400))
    handle("stripe", "payment_intent.succeeded", paid(order_id, 100))

    assert order(order_id)["status"] == "paid"
    assert order(order_id)["paid_cents"] == 1100
    # The partial payments count now: they say so.
    assert [p[0] for p in payments(order_id)] == ["succeeded"] * 4
    assert jobs(order_id) == FOLLOW_UPS  # once, though four payments arrived
    moves = rows("SELECT from_status, to_status, applied FROM order_status_changes "
                 "WHERE order_id = :o", o=order_id)
    assert [(m["from_status"], m["to_status"], m["applied"]) for m in moves] == [
        ("pending", "paid", True)]
    assert [s["kind"] for s in signals()] == ["payment_underpaid", "payment_underpaid",
                                              "payment_overpaid"]


def test_redelivered_payment_is_counted_once(ctx):
    order_id = make_order(total_cents=1000)
    event = paid(order_id, 600, intent="pi_once")

    handle("stripe", "payment_intent.succeeded", event)
    handle("stripe", "payment_intent.succeeded", {**event, "id": "evt_other_delivery"})

    assert order(order_id)["paid_cents"] == 600
    assert len(payments(order_id)) == 1


def test_a_test_mode_event_never_pays_a_live_order(ctx, app, monkeypatch):
    monkeypatch.setitem(app.config, "STRIPE_LIVEMODE", True)
    order_id = make_order(total_cents=1000)

    with pytest.raises(PermanentError, match="livemode does not match STRIPE_LIVEMODE"):
        handle("stripe", "payment_intent.succeeded", paid(order_id, 1000))
    db.session.rollback()

    assert order(order_id)["status"] == "pending"
    assert payments(order_id) == []
    handle("stripe", "payment_intent.succeeded", {**paid(order_id, 1000), "livemode": True})
    assert order(order_id)["status"] == "paid"


# ---- refunds ----------------------------------------------------------------------------

def test_refund_list_counts_each_refund_once_with_its_status(ctx):
    order_id = make_order(total_cents=1000)
    handle("stripe", "payment_intent.succeeded", paid(order_id, 1000, intent="pi_r"))

    handle("stripe", "charge.refunded", refunded(order_id, "pi_r",
                                                 refunds=[("re_1", 300, "pending")]))
    assert (order(order_id)["status"], order(order_id)["refunded_cents"]) == ("paid", 0)

    handle("stripe", "charge.refunded", refunded(order_id, "pi_r", refunds=[
        ("re_1", 300, "succeeded"), ("re_2", 200, "succeeded")]))
    assert (order(order_id)["status"], order(order_id)["refunded_cents"]) == (
        "partially_refunded", 500)

    # A late event still saying "pending" does not take the money back out.
    handle("stripe", "charge.refunded", refunded(order_id, "pi_r",
                                                 refunds=[("re_1", 300, "pending")]))
    assert order(order_id)["refunded_cents"] == 500

    # A refund that fails after it succeeded stops counting.
    handle("stripe", "charge.refund.updated", stripe("charge.refund.updated", {
        "id": "re_2", "object": "refund", "amount": 200, "currency": "eur",
        "status": "failed", "payment_intent": "pi_r"}))
    assert order(order_id)["refunded_cents"] == 300
    statuses = {r["provider_refund_id"]: r["status"] for r in rows(
        "SELECT provider_refund_id, status FROM refunds WHERE order_id = :o", o=order_id)}
    assert statuses == {"re_1": "succeeded", "re_2": "failed"}


def test_cumulative_refund_figures_add_only_their_delta(ctx):
    order_id = make_order(total_cents=1000)
    handle("stripe", "payment_intent.succeeded", paid(order_id, 1000, intent="pi_c"))

    for figure in (400, 400, 1000, 400):  # a redelivery, a newer figure, a late older one
        handle("stripe", "charge.refunded", refunded(order_id, "pi_c", cumulative=figure))

    assert order(order_id)["refunded_cents"] == 1000
    assert order(order_id)["status"] == "refunded"
    assert scalar("SELECT sum(amount_cents) FROM refunds WHERE order_id = :o", o=order_id) == 1000


def test_a_refund_never_exceeds_what_was_captured(ctx):
    order_id = make_order(total_cents=1000)
    handle("stripe", "payment_intent.succeeded", paid(order_id, 1000, intent="pi_x"))

    handle("stripe", "charge.refunded", refunded(order_id, "pi_x", refunds=[
        ("re_ok", 600, "succeeded"), ("re_too_much", 500, "succeeded")]))

    assert order(order_id)["refunded_cents"] == 600
    statuses = {r["provider_refund_id"]: r["status"] for r in rows(
        "SELECT provider_refund_id, status FROM refunds WHERE order_id = :o", o=order_id)}
    assert statuses == {"re_ok": "succeeded", "re_too_much": "exceeds_capture"}
    [signal] = signals()
    assert (signal["severity"], signal["kind"]) == ("P1", "refund_exceeds_capture")
    assert (signal["details"]["amount"], signal["details"]["refunded"]) == (500, 600)


def test_a_refund_that_overtakes_its_payment_is_bounded_by_the_captured_figure(ctx):
    order_id = make_order(total_cents=1000)

    handle("stripe", "charge.refunded", refunded(order_id, "pi_early", captured=1000,
                                                 refunds=[("re_big", 1500, "succeeded")]))

    assert order(order_id)["refunded_cents"] == 0
    assert rows("SELECT status FROM refunds")[0]["status"] == "exceeds_capture"


def test_a_refund_in_another_currency_is_refused_and_signalled(ctx):
    order_id = make_order(total_cents=1000)
    handle("stripe", "payment_intent.succeeded", paid(order_id, 1000, intent="pi_gbp"))

    handle("stripe", "charge.refunded", refunded(order_id, "pi_gbp", currency="gbp",
                                                 refunds=[("re_gbp", 1000, "succeeded")]))

    assert order(order_id)["status"] == "paid"
    assert order(order_id)["refunded_cents"] == 0
    assert rows("SELECT status FROM refunds")[0]["status"] == "currency_mismatch"
    assert [(s["severity"], s["kind"]) for s in signals()] == [("P1", "refund_currency_mismatch")]


@pytest.mark.parametrize("event_type", ["PAYMENT.CAPTURE.REFUNDED", "PAYMENT.CAPTURE.REVERSED"])
def test_paypal_refunds_and_reversals_give_money_back(ctx, event_type):
    order_id = make_order(total_cents=1000)
    handle("paypal", "PAYMENT.CAPTURE.COMPLETED", paypal("PAYMENT.CAPTURE.COMPLETED", {
        "id": "CAP-R", "status": "COMPLETED", "custom_id": str(order_id),
        "amount": {"currency_code": "EUR", "value": "10.00"}}))

    handle("paypal", event_type, paypal(event_type, {
        "id": "REF-1", "status": "COMPLETED", "amount": {"currency_code": "EUR", "value": "10.00"},
        "links": [{"rel": "up", "href": "https://api.paypal.com/v2/payments/captures/CAP-R"}]}))

    assert (order(order_id)["status"], order(order_id)["refunded_cents"]) == ("refunded", 1000)
    assert rows("SELECT provider_payment_id FROM refunds")[0]["provider_payment_id"] == "CAP-R"


# ---- fulfilment from payment facts ------------------------------------------------------

def run_follow_ups(order_id: int) -> bool:
    from service.orders import services

    done = services.request_fulfilment(order_id)
    db.session.commit()
    return done


@pytest.mark.parametrize("refund_first", [False, True])
def test_paid_and_partially_refunded_order_is_fulfilled_once_in_either_order(ctx, refund_first):
    order_id = make_order(total_cents=1000)
    steps = [lambda: handle("stripe", "payment_intent.succeeded",
                            paid(order_id, 1000, intent="pi_f")),
             lambda: handle("stripe", "charge.refunded",
                            refunded(order_id, "pi_f", refunds=[("re_f", 300, "succeeded")]))]
    for step in reversed(steps) if refund_first else steps:
        step()

    assert order(order_id)["status"] == "partially_refunded"
    assert jobs(order_id) == FOLLOW_UPS
    assert run_follow_ups(order_id) is True
    assert run_follow_ups(order_id) is False  # the job delivered twice
    assert scalar("SELECT count(*) FROM fulfilments WHERE order_id = :o", o=order_id) == 1


def test_order_refunded_in_full_before_its_payment_is_never_fulfilled(ctx):
    order_id = make_order(total_cents=1000)

    handle("stripe", "charge.refunded", refunded(order_id, "pi_g",
                                                 refunds=[("re_g", 1000, "succeeded")]))
    handle("stripe", "payment_intent.succeeded", paid(order_id, 1000, intent="pi_g"))

    assert order(order_id)["status"] == "refunded"
    assert jobs(order_id) == []
    assert run_follow_ups(order_id) is False
    assert scalar("SELECT count(*) FROM fulfilments") == 0


def test_order_refunded_in_full_before_its_fulfilment_job_runs_is_not_fulfilled(ctx):
    order_id = make_order(total_cents=1000)
    handle("stripe", "payment_intent.succeeded", paid(order_id, 1000, intent="pi_h"))
    handle("stripe", "charge.refunded", refunded(order_id, "pi_h", cumulative=1000))

    assert jobs(order_id) == FOLLOW_UPS  # queued while it was paid
    assert run_follow_ups(order_id) is False


# ---- concurrency: two workers, one order -------------------------------------------------

def test_two_cumulative_refunds_processed_at_once_on_two_workers_count_money_once(
        client, ctx, tmp_path, service_env):
    order_id = make_order(total_cents=1000)
    handle("stripe", "payment_intent.succeeded", paid(order_id, 1000, intent="pi_race"))
    workers = [start_worker(tmp_path, queues="webhooks", concurrency=1, beat=False, name=name)
               for name in ("race-a", "race-b")]
    dsn = service_env["DATABASE_URL"].replace("postgresql+psycopg://", "postgresql://", 1)
    try:
        # Hold the order's lock so both events reach it, then let them race.
        with psycopg.connect(dsn) as holder:
            holder.execute("SELECT id FROM orders WHERE id = %s FOR UPDATE", (order_id,))
            event_ids = []
            for figure in (400, 1000):  # two refunds: 400, then 600 more
                body, event_id = stripe_event("charge.refunded", refunded(
                    order_id, "pi_race", cumulative=figure)["data"]["object"])
                response = client.post("/webhooks/stripe", data=body, headers=stripe_headers(body))
                assert response.status_code == 200, response.get_data(as_text=True)
                event_ids.append(event_id)
            wait_until(lambda: scalar(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                " AND datname = current_database()") >= 2,
                20, "both workers to wait on the order's lock", logs=workers)
            time.sleep(0.2)
            holder.rollback()
        wait_until(lambda: scalar(
            "SELECT count(*) FROM webhook_events WHERE status = 'processed'"
            " AND event_type = 'charge.refunded'") == 2, 20, "both refunds", logs=workers)
    finally:
        for worker in workers:
            worker.stop()

    assert all("succeeded in" in worker.log() for worker in workers)  # one event each
    assert order(order_id)["refunded_cents"] == 1000
    assert scalar("SELECT sum(amount_cents) FROM refunds WHERE order_id = :o", o=order_id) == 1000
    assert order(order_id)["status"] == "refunded"
