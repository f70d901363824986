"""The orders service against a real PostgreSQL database."""

import pytest
from sqlalchemy import func, select

from service.orders import services
from service.orders.exceptions import InvalidAmount, OrderNotFound
from service.orders.models import Order, OrderStatusChange, Payment, Refund
from tests.support.events import make_order


def _count(db, model, **where):
    query = select(func.count()).select_from(model)
    for key, value in where.items():
        query = query.where(getattr(model, key) == value)
    return db.scalar(query)


def _refund(order_id, *, provider, refund_id, amount, currency, source, payment_id=None):
    return services.apply_refunds(
        order_id=order_id, provider=provider, provider_payment_id=payment_id, source=source,
        refunds=[services.RefundFact(refund_id, amount, currency)])


def test_payment_is_recorded_once_per_provider_payment_id(ctx):
    order_id = make_order(total_cents=1500)
    first = services.record_payment(order_id=order_id, provider="stripe", provider_payment_id="pi_1",
                                    amount_cents=1500, currency="eur", source="t:1")
    ctx.commit()
    again = services.record_payment(order_id=order_id, provider="stripe", provider_payment_id="pi_1",
                                    amount_cents=1500, currency="eur", source="t:2")
    ctx.commit()
    assert (first.created, again.created) == (True, False)
    assert _count(ctx, Payment, order_id=order_id) == 1
    assert ctx.get(Order, order_id).status == "paid"
    assert ctx.get(Order, order_id).paid_at is not None
    assert _count(ctx, OrderStatusChange, order_id=order_id, applied=True) == 1


def test_refund_before_payment_leaves_order_refunded_and_records_the_refusal(ctx):
    order_id = make_order(total_cents=2000)
    _refund(order_id, provider="stripe", refund_id="re_1", payment_id="pi_1", amount=2000,
            currency="eur", source="stripe:evt_refund")
    ctx.commit()
    outcome = services.record_payment(order_id=order_id, provider="stripe",
                                      provider_payment_id="pi_1", amount_cents=2000,
                                      currency="eur", source="stripe:evt_paid")
    ctx.commit()
    assert outcome.status == "refunded"
    assert outcome.refused == "refunded -> paid is not a forward move"
    assert ctx.get(Order, order_id).status == "refunded"
    refusal = ctx.scalar(select(OrderStatusChange).where(
        OrderStatusChange.order_id == order_id, OrderStatusChange.applied.is_(False)))
    assert (refusal.from_status, refusal.to_status, refusal.source) == (
        "refunded", "paid", "stripe:evt_paid")
    assert _count(ctx, Payment, order_id=order_id) == 1  # the money did move: recorded


def test_partial_then_full_refund(ctx):
    order_id = make_order(total_cents=1000)
    services.record_payment(order_id=order_id, provider="paypal", provider_payment_id="CAP-1",
                            amount_cents=1000, currency="EUR", source="t")
    partial = _refund(order_id, provider="paypal", refund_id="R-1", amount=300,
                      currency="EUR", source="t")
    assert partial.status == "partially_refunded"
    repeat = _refund(order_id, provider="paypal", refund_id="R-1", amount=300,
                      currency="EUR", source="t")
    assert (repeat.created, repeat.status) == (False, "partially_refunded")
    full = _refund(order_id, provider="paypal", refund_id="R-2", amount=700,
                      currency="EUR", source="t")
    ctx.commit()
    assert full.status == "refunded"
    assert services.refunded_cents(order_id) == 1000
    assert _count(ctx, Refund, order_id=order_id) == 2


def test_failure_after_success_does_not_unpay_the_order(ctx):
    order_id = make_order()
    services.record_payment(order_id=order_id, provider="stripe", provider_payment_id="pi_ok",
                            amount_cents=1000, currency="eur", source="t")
    outcome = services.record_payment_failure(order_id=order_id, provider="stripe",
                                              provider_payment_id="pi_declined", amount_cents=1000,
                                              currency="eur", reason="card_declined", source="t")
    ctx.commit()
    assert outcome.status == "paid"
    assert outcome.refused


def test_failed_order_can_still_be_paid_by_a_later_attempt(ctx):
    order_id = make_order()
    services.record_payment_failure(order_id=order_id, provider="stripe", provider_payment_id="pi_a",
                                    amount_cents=1000, currency="eur", reason="declined", source="t")
    assert ctx.get(Order, order_id).status == "failed"
    services.record_payment(order_id=order_id, provider="stripe", provider_payment_id="pi_b",
                            amount_cents=1000, currency="eur", source="t")
    ctx.commit()
    assert ctx.get(Order, order_id).status == "paid"


def test_dispute_marks_order_and_payment(ctx):
    order_id = make_order()
    services.record_payment(order_id=order_id, provider="stripe", provider_payment_id="pi_d",
                            amount_cents=1000, currency="eur", source="t")
    services.record_dispute(order_id=order_id, provider="stripe", provider_payment_id="pi_d",
                            source="t")
    ctx.commit()
    assert ctx.get(Order, order_id).status == "disputed"
    assert ctx.scalar(select(Payment.status).where(Payment.provider_payment_id == "pi_d")) == "disputed"


def test_unknown_order_and_bad_amount_are_errors(ctx):
    with pytest.raises(OrderNotFound):
        services.record_payment(order_id=999999, provider="stripe", provider_payment_id="pi_x",
                                amount_cents=1, currency="eur", source="t")
    ctx.rollback()
    order_id = make_order()
    with pytest.raises(InvalidAmount):
        services.record_payment(order_id=order_id, provider="stripe", provider_payment_id="pi_x",
                                amount_cents=-5, currency="eur", source="t")


def test_seed_creates_pending_orders_once(ctx):
    made = services.seed_demo_data(customers=2, products=3, orders=4)
    ctx.commit()
    assert made == {"customers": 2, "products": 3, "orders": 4}
    assert _count(ctx, Order, status="pending") == 4
    assert services.seed_demo_data() == {"customers": 0, "products": 0, "orders": 0}
