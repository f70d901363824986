"""Every handled (provider, event type): the payload a provider sends, read by its handler,
changes the order through the orders service. Real PostgreSQL; the handler runs in the
session's transaction and the test commits, as the worker does."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import func, select

from service.audit.models import AuditLog
from service.orders.exceptions import InvalidAmount
from service.orders.models import Order, OrderStatusChange, Payment, Refund
from service.webhooks import handlers, processing
from service.webhooks.exceptions import OrderNotYetKnown, PermanentError
from tests.support.events import make_order


def handle(session, provider: str, event_type: str, event: dict):
    handler = handlers.lookup(provider, event_type)
    assert handler is not None, f"no handler for {provider} {event_type}"
    outcome = handler(event, f"{provider}:{event.get('id', 'evt')}")
    session.commit()
    return outcome


def order(session, order_id: int) -> Order:
    session.expire_all()
    return session.get(Order, order_id)


def payments(session, order_id: int) -> list[tuple]:
    return [tuple(row) for row in session.execute(
        select(Payment.provider_payment_id, Payment.status, Payment.amount_cents,
               Payment.currency).where(Payment.order_id == order_id).order_by(Payment.id))]


def refunds(session, order_id: int) -> list[tuple]:
    return [tuple(row) for row in session.execute(
        select(Refund.provider_refund_id, Refund.amount_cents, Refund.provider_payment_id)
        .where(Refund.order_id == order_id).order_by(Refund.id))]


def refund_statuses(session, order_id: int) -> list[tuple]:
    return [tuple(row) for row in session.execute(
        select(Refund.provider_refund_id, Refund.status)
        .where(Refund.order_id == order_id).order_by(Refund.id))]


def stripe(obj: dict, event_id: str) -> dict:
    """A Stripe event in test mode, as the tests' development mode expects."""
    return {"id": event_id, "livemode": False, "data": {"object": obj}}


def stripe_intent(order_id: int, amount: int, *, intent_id: str = "pi_1", **extra) -> dict:
    return stripe({"id": intent_id, "object": "payment_intent", "amount": amount,
                   "amount_received": amount, "currency": "eur",
                   "metadata": {"order_id": str(order_id)}, **extra}, f"evt_{intent_id}")


def stripe_refund(order_id: int, refund_id: str, amount: int, status: str) -> dict:
    return stripe({"id": refund_id, "object": "refund", "amount": amount, "currency": "eur",
                   "payment_intent": "pi_1", "status": status,
                   "metadata": {"order_id": str(order_id)}}, f"evt_{refund_id}_{status}")


def paypal_capture(order_id: int | None, value: str, currency: str = "EUR", *,
                   capture_id: str = "CAP-1", links: list | None = None) -> dict:
    resource = {"id": capture_id, "amount": {"value": value, "currency_code": currency},
                "links": links or []}
    if order_id is not None:
        resource["custom_id"] = str(order_id)
    return {"id": f"WH-{capture_id}", "resource": resource}


# ---- Stripe -------------------------------------------------------------------------

def test_stripe_payment_succeeded_pays_the_order(ctx):
    order_id = make_order(total_cents=2500)

    handle(ctx, "stripe", "payment_intent.succeeded", stripe_intent(order_id, 2500))

    assert order(ctx, order_id).status == "paid"
    assert payments(ctx, order_id) == [("pi_1", "succeeded", 2500, "EUR")]


def test_stripe_payment_failed_fails_a_pending_order_with_the_providers_code(ctx):
    order_id = make_order(total_cents=2500)
    event = stripe_intent(order_id, 2500, last_payment_error={"code": "card_declined"})

    handle(ctx, "stripe", "payment_intent.payment_failed", event)

    assert order(ctx, order_id).status == "failed"
    assert payments(ctx, order_id) == [("pi_1", "failed", 2500, "EUR")]
    move = ctx.scalar(select(OrderStatusChange).where(OrderStatusChange.order_id == order_id))
    assert (move.to_status, move.reason) == ("failed", "payment failed: card_declined")


def test_stripe_charge_refunded_records_each_listed_refund_once(ctx):
    order_id = make_order(total_cents=3000)
    handle(ctx, "stripe", "payment_intent.succeeded", stripe_intent(order_id, 3000))
    charge = stripe({"id": "ch_1", "payment_intent": "pi_1", "currency": "eur", "amount": 3000,
                     "amount_refunded": 1000,
                     "refunds": {"data": [{"id": "re_1", "amount": 1000}]}}, "evt_ch")

    handle(ctx, "stripe", "charge.refunded", charge)
    handle(ctx, "stripe", "charge.refunded", charge)  # delivered again

    assert order(ctx, order_id).status == "partially_refunded"
    assert refunds(ctx, order_id) == [("re_1", 1000, "pi_1")]


def test_stripe_charge_refunded_without_a_refund_list_uses_the_cumulative_amount(ctx):
    order_id = make_order(total_cents=3000)
    handle(ctx, "stripe", "payment_intent.succeeded", stripe_intent(order_id, 3000))

    def charge(refunded: int) -> dict:
        return stripe({"id": "ch_1", "payment_intent": "pi_1", "currency": "eur",
                       "amount": 3000, "amount_refunded": refunded}, f"evt_ch_{refunded}")

    handle(ctx, "stripe", "charge.refunded", charge(1000))
    handle(ctx, "stripe", "charge.refunded", charge(3000))

    assert order(ctx, order_id).status == "refunded"
    assert refunds(ctx, order_id) == [("ch_1:cumulative:1000", 1000, "pi_1"),
                                      ("ch_1:cumulative:3000", 2000, "pi_1")]


def test_stripe_refund_created_pending_counts_only_once_updated_to_succeeded(ctx):
    order_id = make_order(total_cents=3000)
    handle(ctx, "stripe", "payment_intent.succeeded", stripe_intent(order_id, 3000))

    handle(ctx, "stripe", "refund.created", stripe_refund(order_id, "re_1", 1000, "pending"))
    assert (order(ctx, order_id).status, order(ctx, order_id).refunded_cents) == ("paid", 0)

    handle(ctx, "stripe", "refund.updated", stripe_refund(order_id, "re_1", 1000, "succeeded"))

    assert order(ctx, order_id).status == "partially_refunded"
    assert order(ctx, order_id).refunded_cents == 1000
    assert refund_statuses(ctx, order_id) == [("re_1", "succeeded")]


def test_stripe_refund_that_fails_after_it_succeeded_stops_counting(ctx):
    order_id = make_order(total_cents=3000)
    handle(ctx, "stripe", "payment_intent.succeeded", stripe_intent(order_id, 3000))
    handle(ctx, "stripe", "charge.refund.updated",
           stripe_refund(order_id, "re_1", 1000, "succeeded"))
    assert order(ctx, order_id).refunded_cents == 1000

    handle(ctx, "stripe", "refund.failed", stripe_refund(order_id, "re_1", 1000, "failed"))

    assert order(ctx, order_id).refunded_cents == 0
    assert refund_statuses(ctx, order_id) == [("re_1", "failed")]


# A cumulative figure (no refund list) names no refund; the real refunds of the same
# payment that later start counting are taken to be its money first: the payment counts
# the larger of the figure and its real refunds, never their sum.

def cumulative(refunded: int, event_id: str | None = None) -> dict:
    return stripe({"id": "ch_1", "payment_intent": "pi_1", "currency": "eur", "amount": 1000,
                   "amount_captured": 1000, "amount_refunded": refunded},
                  event_id or f"evt_ch_{refunded}")


def paid_then_refunded_by_figure(session, figure: int) -> int:
    """An order of 1,000 paid by pi_1, then a cumulative figure of `figure` refunded."""
    order_id = make_order(total_cents=1000)
    handle(session, "stripe", "payment_intent.succeeded", stripe_intent(order_id, 1000))
    handle(session, "stripe", "charge.refunded", cumulative(figure))
    return order_id


def counted(session, order_id: int) -> tuple:
    """The order's refunded sum, and what its refund rows count: the two must agree."""
    return (order(session, order_id).refunded_cents, session.scalar(
        select(func.coalesce(func.sum(Refund.amount_cents), 0))
        .where(Refund.order_id == order_id, Refund.status == "succeeded")))


def test_a_real_refund_after_a_cumulative_figure_is_its_money_not_more(ctx):
    order_id = paid_then_refunded_by_figure(ctx, 400)

    handle(ctx, "stripe", "refund.created", stripe_refund(order_id, "re_1", 400, "succeeded"))
    handle(ctx, "stripe", "charge.refunded", cumulative(400, "evt_ch_400_again"))

    assert counted(ctx, order_id) == (400, 400)
    assert order(ctx, order_id).status == "partially_refunded"
    assert refund_statuses(ctx, order_id) == [("ch_1:cumulative:400", "superseded"),
                                              ("re_1", "succeeded")]
    log = ctx.scalars(select(AuditLog).where(AuditLog.action == "order.refund")
                      .order_by(AuditLog.id)).all()[-1]
    meta = json.loads(log.meta)
    assert meta["before"] == {"status": "partially_refunded", "refunded_cents": 400, "refunds": {
        "re_1": None, "ch_1:cumulative:400": "succeeded"}}
    assert meta["after"] == {"status": "partially_refunded", "refunded_cents": 400, "refunds": {
        "re_1": "succeeded", "ch_1:cumulative:400": "superseded"}}


def test_a_full_refund_named_after_its_cumulative_figure_is_not_refused(ctx):
    # Counted twice, the real refund would exceed the capture and be refused.
    order_id = paid_then_refunded_by_figure(ctx, 1000)

    handle(ctx, "stripe", "charge.refunded", stripe(
        {"id": "ch_1", "payment_intent": "pi_1", "currency": "eur", "amount": 1000,
         "amount_refunded": 1000, "refunds": {"data": [{"id": "re_1", "amount": 1000}]}},
        "evt_ch_list"))

    assert counted(ctx, order_id) == (1000, 1000)
    assert order(ctx, order_id).status == "refunded"
    assert refund_statuses(ctx, order_id) == [("ch_1:cumulative:1000", "superseded"),
                                              ("re_1", "succeeded")]


def test_real_refunds_that_split_a_cumulative_figure_count_it_once(ctx):
    order_id = paid_then_refunded_by_figure(ctx, 400)

    handle(ctx, "stripe", "refund.updated", stripe_refund(order_id, "re_1", 300, "succeeded"))
    assert counted(ctx, order_id) == (400, 400)
    handle(ctx, "stripe", "refund.updated", stripe_refund(order_id, "re_2", 100, "succeeded"))
    assert counted(ctx, order_id) == (400, 400)
    # A third refund is new money: the figure is used up.
    handle(ctx, "stripe", "refund.updated", stripe_refund(order_id, "re_3", 250, "succeeded"))

    assert counted(ctx, order_id) == (650, 650)
    assert refund_statuses(ctx, order_id) == [
        ("ch_1:cumulative:400", "superseded"), ("re_1", "succeeded"),
        ("ch_1:cumulative:400:rest:100", "superseded"), ("re_2", "succeeded"),
        ("re_3", "succeeded")]


def test_a_pending_refund_that_succeeds_after_the_figure_counted_it_is_not_counted_again(ctx):
    order_id = make_order(total_cents=1000)
    handle(ctx, "stripe", "payment_intent.succeeded", stripe_intent(order_id, 1000))
    handle(ctx, "stripe", "refund.created", stripe_refund(order_id, "re_1", 400, "pending"))
    handle(ctx, "stripe", "charge.refunded", cumulative(400))
    assert counted(ctx, order_id) == (400, 400)

    handle(ctx, "stripe", "refund.updated", stripe_refund(order_id, "re_1", 400, "succeeded"))

    assert counted(ctx, order_id) == (400, 400)
    assert order(ctx, order_id).status == "partially_refunded"


def test_a_real_refund_larger_than_the_figure_counts_only_what_the_figure_lacked(ctx):
    order_id = paid_then_refunded_by_figure(ctx, 400)

    handle(ctx, "stripe", "refund.created", stripe_refund(order_id, "re_1", 600, "succeeded"))

    assert counted(ctx, order_id) == (600, 600)


def test_a_real_refund_that_fails_after_naming_the_figure_takes_its_money_back(ctx):
    order_id = paid_then_refunded_by_figure(ctx, 400)
    handle(ctx, "stripe", "refund.created", stripe_refund(order_id, "re_1", 400, "succeeded"))

    handle(ctx, "stripe", "refund.failed", stripe_refund(order_id, "re_1", 400, "failed"))

    # The figure's 400 was re_1, and re_1 failed: nothing is refunded.
    assert counted(ctx, order_id) == (0, 0)
    assert refund_statuses(ctx, order_id) == [("ch_1:cumulative:400", "superseded"),
                                              ("re_1", "failed")]
    # The provider reports 400 refunded again later (another refund): it counts, once.
    handle(ctx, "stripe", "charge.refunded", cumulative(400, "evt_ch_400_later"))
    handle(ctx, "stripe", "charge.refunded", cumulative(400, "evt_ch_400_later_again"))
    assert counted(ctx, order_id) == (400, 400)
    assert refund_statuses(ctx, order_id)[-1] == ("ch_1:cumulative:400:2", "succeeded")


def test_stripe_dispute_marks_the_order_and_its_payment_disputed(ctx):
    order_id = make_order(total_cents=1200)
    handle(ctx, "stripe", "payment_intent.succeeded", stripe_intent(order_id, 1200))
    # Disputes carry no metadata: the order is found through the recorded payment.
    dispute = stripe({"id": "dp_1", "payment_intent": "pi_1", "amount": 1200}, "evt_dp")

    handle(ctx, "stripe", "charge.dispute.created", dispute)

    assert order(ctx, order_id).status == "disputed"
    assert payments(ctx, order_id) == [("pi_1", "disputed", 1200, "EUR")]


def test_a_stripe_event_naming_no_order_is_a_permanent_error(ctx):
    event = stripe({"id": "pi_orphan", "amount": 100, "amount_received": 100,
                    "currency": "eur"}, "evt_x")

    with pytest.raises(PermanentError, match=r"no metadata\.order_id"):
        handle(ctx, "stripe", "payment_intent.succeeded", event)


def test_a_stripe_refund_whose_payment_is_not_recorded_yet_waits_for_it(ctx):
    order_id = make_order(total_cents=1000)
    refund = stripe({"id": "re_early", "object": "refund", "amount": 400, "currency": "eur",
                     "payment_intent": "pi_1", "status": "succeeded"}, "evt_re_early")

    with pytest.raises(OrderNotYetKnown, match="not recorded yet"):
        handle(ctx, "stripe", "refund.created", refund)
    ctx.rollback()
    handle(ctx, "stripe", "payment_intent.succeeded", stripe_intent(order_id, 1000))
    handle(ctx, "stripe", "refund.created", refund)

    assert refunds(ctx, order_id) == [("re_early", 400, "pi_1")]
    assert order(ctx, order_id).status == "partially_refunded"


# ---- PayPal -------------------------------------------------------------------------

def test_paypal_capture_completed_pays_the_order(ctx):
    order_id = make_order(total_cents=1999)

    handle(ctx, "paypal", "PAYMENT.CAPTURE.COMPLETED", paypal_capture(order_id, "19.99"))

    assert order(ctx, order_id).status == "paid"
    assert payments(ctx, order_id) == [("CAP-1", "succeeded", 1999, "EUR")]


def test_paypal_capture_denied_fails_the_order(ctx):
    order_id = make_order(total_cents=1999)

    handle(ctx, "paypal", "PAYMENT.CAPTURE.DENIED", paypal_capture(order_id, "19.99"))

    assert order(ctx, order_id).status == "failed"
    assert payments(ctx, order_id) == [("CAP-1", "failed", 1999, "EUR")]


def test_paypal_capture_refunded_finds_the_order_through_the_capture_link(ctx):
    order_id = make_order(total_cents=1999)
    handle(ctx, "paypal", "PAYMENT.CAPTURE.COMPLETED", paypal_capture(order_id, "19.99"))
    links = [{"rel": "self", "href": "https://api.paypal.com/v2/payments/refunds/REF-1"},
             {"rel": "up", "href": "https://api.paypal.com/v2/payments/captures/CAP-1"}]
    refund = paypal_capture(None, "19.99", capture_id="REF-1", links=links)

    handle(ctx, "paypal", "PAYMENT.CAPTURE.REFUNDED", refund)

    assert order(ctx, order_id).status == "refunded"
    assert refunds(ctx, order_id) == [("REF-1", 1999, "CAP-1")]


def test_a_paypal_refund_whose_capture_is_not_recorded_yet_waits_for_it(ctx):
    order_id = make_order(total_cents=1999)
    links = [{"rel": "up", "href": "https://api.paypal.com/v2/payments/captures/CAP-1"}]
    refund = paypal_capture(None, "19.99", capture_id="REF-EARLY", links=links)

    with pytest.raises(OrderNotYetKnown, match="not recorded yet"):
        handle(ctx, "paypal", "PAYMENT.CAPTURE.REFUNDED", refund)
    ctx.rollback()
    handle(ctx, "paypal", "PAYMENT.CAPTURE.COMPLETED", paypal_capture(order_id, "19.99"))
    handle(ctx, "paypal", "PAYMENT.CAPTURE.REFUNDED", refund)

    assert order(ctx, order_id).status == "refunded"


def test_paypal_capture_reversed_takes_the_money_back_like_a_refund(ctx):
    order_id = make_order(total_cents=1999)
    handle(ctx, "paypal", "PAYMENT.CAPTURE.COMPLETED", paypal_capture(order_id, "19.99"))
    links = [{"rel": "up", "href": "https://api.paypal.com/v2/payments/captures/CAP-1"}]
    reversal = paypal_capture(None, "19.99", capture_id="REV-1", links=links)

    handle(ctx, "paypal", "PAYMENT.CAPTURE.REVERSED", reversal)

    assert order(ctx, order_id).status == "refunded"
    assert refunds(ctx, order_id) == [("REV-1", 1999, "CAP-1")]


def test_a_zero_decimal_currency_is_not_multiplied_by_a_hundred(ctx):
    order_id = make_order(total_cents=1500, currency="JPY")

    handle(ctx, "paypal", "PAYMENT.CAPTURE.COMPLETED", paypal_capture(order_id, "1500", "JPY"))

    assert order(ctx, order_id).status == "paid"
    assert payments(ctx, order_id) == [("CAP-1", "succeeded", 1500, "JPY")]


def test_a_paypal_amount_that_is_not_a_number_is_a_permanent_error(ctx):
    order_id = make_order(total_cents=1500)

    with pytest.raises(InvalidAmount, match="not a plain decimal number") as raised:
        handle(ctx, "paypal", "PAYMENT.CAPTURE.COMPLETED", paypal_capture(order_id, "12,50"))

    assert isinstance(processing.classify(raised.value), PermanentError)


def test_every_registered_provider_event_type_has_a_test_here():
    tested = {("stripe", "payment_intent.succeeded"), ("stripe", "payment_intent.payment_failed"),
              ("stripe", "charge.refunded"), ("stripe", "charge.dispute.created"),
              ("stripe", "refund.created"), ("stripe", "refund.updated"),
              ("stripe", "refund.failed"), ("stripe", "charge.refund.updated"),
              ("paypal", "PAYMENT.CAPTURE.COMPLETED"), ("paypal", "PAYMENT.CAPTURE.DENIED"),
              ("paypal", "PAYMENT.CAPTURE.REFUNDED"), ("paypal", "PAYMENT.CAPTURE.REVERSED")}

    assert {key for key in handlers.registered() if not key[1].startswith("test.")} == tested
