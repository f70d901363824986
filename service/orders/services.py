"""The one place where orders, payments and refunds change.

Every money movement goes through a function here. Each is idempotent on the provider's
own id (a payment once per provider payment id, a refund once per provider refund id),
locks the order row so concurrent events on one order apply one after the other, and
leaves the commit to its caller, so the change and the event that caused it land in one
transaction.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import DateTime, func, select

from service import fastsql
from service.clock import utcnow
from service.extensions import db
from service.orders import states
from service.orders.exceptions import InvalidAmount, OrderNotFound
from service.orders.models import (
    Customer,
    Fulfilment,
    Notification,
    Order,
    OrderItem,
    OrderStatusChange,
    Payment,
    PaymentMethod,
    Product,
    Refund,
)
from service.queues import outbox


@dataclass(frozen=True)
class Outcome:
    """What a domain call did: whether it was new, and the order's status after it."""

    order_id: int
    created: bool
    status: str
    refused: str | None = None


def record_payment(
    *, order_id: int, provider: str, provider_payment_id: str, amount_cents: int,
    currency: str, source: str,
) -> Outcome:
    """Record a successful payment and move the order to paid when that is a forward move.

    The busiest money path (every successful payment webhook), so it is written as a few
    plain statements rather than through the ORM, whose bookkeeping cost several times
    the round trips here: lock the order, insert the payment unless known (a known one
    that had failed now succeeded), record the move, and add the follow-up jobs.
    """
    _check_amount(amount_cents)
    now = utcnow()
    locked = fastsql.run(_LOCK_ORDER, {"order_id": order_id}).rows
    if not locked:
        raise OrderNotFound(f"order {order_id} does not exist")
    status = locked[0][0]
    payment = {"order_id": order_id, "provider": provider,
               "provider_payment_id": provider_payment_id, "amount_cents": amount_cents,
               "currency": currency.upper(), "now": now}
    created = bool(fastsql.run(_INSERT_PAYMENT, payment).rows)
    if not created:
        fastsql.run(_REVIVE_FAILED_PAYMENT, payment)
    if status == states.PAID:
        return Outcome(order_id, created, status, None)
    refused = _record_paid(order_id, status, source=source, now=now)
    if refused:
        return Outcome(order_id, created, status, refused)
    # Follow-up work is committed with the payment. The relay publishes it: these jobs
    # are rate limited anyway, so publishing them on the payment's hot path would only
    # lengthen it.
    outbox.add_jobs([("orders.fulfil", [order_id]), ("orders.send_confirmation", [order_id])],
                    queue="orders")
    return Outcome(order_id, created, states.PAID, None)


_LOCK_ORDER = fastsql.Statement("SELECT status FROM orders WHERE id = :order_id",
                                for_update=True)
_INSERT_PAYMENT = fastsql.Statement(
    "INSERT INTO payments (order_id, provider, provider_payment_id, status, amount_cents,"
    " currency, created_at, updated_at)"
    " VALUES (:order_id, :provider, :provider_payment_id, 'succeeded', :amount_cents,"
    " :currency, :now, :now)"
    " ON CONFLICT (provider, provider_payment_id) DO NOTHING RETURNING id",
    now=DateTime(),
)
_REVIVE_FAILED_PAYMENT = fastsql.Statement(
    "UPDATE payments SET status = 'succeeded', amount_cents = :amount_cents,"
    " updated_at = :now"
    " WHERE provider = :provider AND provider_payment_id = :provider_payment_id"
    " AND status = 'failed'",
    now=DateTime(),
)
_INSERT_MOVE = fastsql.Statement(
    "INSERT INTO order_status_changes (order_id, from_status, to_status, applied, reason,"
    " source, created_at)"
    " VALUES (:order_id, :from_status, :to_status, :applied, :reason, :source, :now)",
    now=DateTime(),
)
_APPLY_PAID = fastsql.Statement(
    "UPDATE orders SET status = 'paid', updated_at = :now, paid_at = COALESCE(paid_at, :now)"
    " WHERE id = :order_id",
    now=DateTime(),
)


def _record_paid(order_id: int, current: str, *, source: str, now) -> str | None:
    """`_move` to paid for an order row locked and read without the ORM; sets paid_at."""
    refused = states.refusal(current, states.PAID)
    fastsql.run(_INSERT_MOVE, {"order_id": order_id, "from_status": current,
                               "to_status": states.PAID, "applied": refused is None,
                               "reason": refused or "payment succeeded", "source": source[:255],
                               "now": now})
    if refused is None:
        fastsql.run(_APPLY_PAID, {"order_id": order_id, "now": now})
    return refused


def record_payment_failure(
    *, order_id: int, provider: str, provider_payment_id: str, amount_cents: int,
    currency: str, reason: str, source: str,
) -> Outcome:
    """Record a failed or denied payment attempt; only a pending order becomes failed."""
    _check_amount(amount_cents)
    order = _lock_order(order_id)
    payment = _find_payment(provider, provider_payment_id)
    created = payment is None
    if payment is None:
        db.session.add(Payment(
            order_id=order.id, provider=provider, provider_payment_id=provider_payment_id,
            status="failed", amount_cents=amount_cents, currency=currency.upper(),
        ))
    refused = _move(order, states.FAILED, source=source, reason=reason[:200])
    return Outcome(order.id, created, order.status, refused)


def record_refund(
    *, order_id: int, provider: str, provider_refund_id: str, amount_cents: int,
    currency: str, source: str, provider_payment_id: str | None = None,
) -> Outcome:
    """Record a refund once, then move the order to partially refunded or refunded."""
    _check_amount(amount_cents)
    order = _lock_order(order_id)
    existing = db.session.scalar(
        select(Refund).where(
            Refund.provider == provider, Refund.provider_refund_id == provider_refund_id
        )
    )
    created = existing is None
    if created:
        db.session.add(Refund(
            order_id=order.id, provider=provider, provider_refund_id=provider_refund_id,
            provider_payment_id=provider_payment_id, amount_cents=amount_cents,
            currency=currency.upper(),
        ))
        db.session.flush()
    refunded = refunded_cents(order.id)
    target = states.REFUNDED if refunded >= order.total_cents else states.PARTIALLY_REFUNDED
    refused = None
    if order.status != target:
        refused = _move(order, target, source=source, reason=f"refunded {refunded} cents")
    return Outcome(order.id, created, order.status, refused)


def record_dispute(
    *, order_id: int, provider: str, provider_payment_id: str | None, source: str,
) -> Outcome:
    """Mark the order disputed (and its payment, when known)."""
    order = _lock_order(order_id)
    if provider_payment_id:
        payment = _find_payment(provider, provider_payment_id)
        if payment is not None:
            payment.status = "disputed"
    before = order.status
    refused = _move(order, states.DISPUTED, source=source, reason="dispute opened")
    return Outcome(order.id, before != order.status, order.status, refused)


def request_fulfilment(order_id: int) -> bool:
    """Hand a paid order to fulfilment, once; False when already requested or not paid."""
    order = _lock_order(order_id)
    if order.status not in (states.PAID, states.PARTIALLY_REFUNDED):
        return False
    if db.session.scalar(select(Fulfilment.id).where(Fulfilment.order_id == order_id)):
        return False
    db.session.add(Fulfilment(order_id=order_id, status="requested"))
    return True


def send_order_notification(order_id: int, *, kind: str, notifier) -> bool:
    """Send one notification of `kind` per order; False when it was already sent.

    The row is written before sending and committed after: a failed send rolls it back
    and the job retries; a crash after sending may send it twice, never zero times.
    """
    order = _lock_order(order_id)
    if db.session.scalar(select(Notification.id).where(Notification.order_id == order_id,
                                                       Notification.kind == kind)):
        return False
    db.session.add(Notification(order_id=order_id, kind=kind, channel=notifier.channel))
    db.session.flush()
    notifier.send(order_id=order_id, kind=kind,
                  payload={"status": order.status, "total_cents": order.total_cents,
                           "currency": order.currency})
    return True


def order_id_for_payment(provider: str, provider_payment_id: str) -> int | None:
    """The order a provider payment belongs to, when it has been recorded."""
    return db.session.scalar(
        select(Payment.order_id).where(
            Payment.provider == provider, Payment.provider_payment_id == provider_payment_id
        )
    )


def order_to_pay(order_id: int | None = None) -> dict | None:
    """The order a test payment is for, as plain data: `order_id`, else the oldest
    pending order; None when there is none."""
    if order_id is not None:
        order = db.session.get(Order, order_id)
    else:
        order = db.session.scalar(select(Order).where(Order.status == states.PENDING)
                                  .order_by(Order.id).limit(1))
    return None if order is None else order.to_dict()


def refunded_cents(order_id: int) -> int:
    return db.session.scalar(
        select(func.coalesce(func.sum(Refund.amount_cents), 0)).where(Refund.order_id == order_id)
    )


def create_order(*, customer_id: int, items: list[tuple[int, int]], currency: str = "EUR") -> Order:
    """Create a pending order from (product_id, quantity) pairs at current prices."""
    order = Order(customer_id=customer_id, currency=currency, status=states.PENDING)
    db.session.add(order)
    total = 0
    for product_id, quantity in items:
        product = db.session.get(Product, product_id)
        if product is None:
            raise OrderNotFound(f"product {product_id} does not exist")
        order.items.append(
            OrderItem(product_id=product.id, quantity=quantity, unit_price_cents=product.price_cents)
        )
        total += product.price_cents * quantity
    order.total_cents = total
    db.session.flush()
    return order


def seed_demo_data(*, customers: int = 5, products: int = 8, orders: int = 20) -> dict:
    """Sample customers, products and pending orders; adds nothing when customers exist."""
    if db.session.scalar(select(func.count()).select_from(Customer)):
        return {"customers": 0, "products": 0, "orders": 0}
    made_products = []
    for n in range(1, products + 1):
        product = Product(sku=f"SKU-{n:04d}", name=f"Demo product {n}",
                          price_cents=500 + 250 * n, stock=100)
        db.session.add(product)
        made_products.append(product)
    made_customers = []
    for n in range(1, customers + 1):
        customer = Customer(email=f"customer{n}@example.test", name=f"Demo customer {n}")
        customer.payment_methods.append(
            PaymentMethod(provider="stripe", provider_ref=f"pm_demo_{n}", brand="visa",
                          last4=f"{4240 + n:04d}"[-4:], is_default=True)
        )
        db.session.add(customer)
        made_customers.append(customer)
    db.session.flush()
    for n in range(orders):
        customer = made_customers[n % len(made_customers)]
        product = made_products[n % len(made_products)]
        create_order(customer_id=customer.id, items=[(product.id, 1 + n % 3)])
    return {"customers": customers, "products": products, "orders": orders}


def _lock_order(order_id: int) -> Order:
    order = db.session.scalar(select(Order).where(Order.id == order_id).with_for_update())
    if order is None:
        raise OrderNotFound(f"order {order_id} does not exist")
    return order


def _find_payment(provider: str, provider_payment_id: str) -> Payment | None:
    return db.session.scalar(
        select(Payment).where(
            Payment.provider == provider, Payment.provider_payment_id == provider_payment_id
        )
    )


def _move(order: Order, target: str, *, source: str, reason: str) -> str | None:
    """Apply a forward move, or record the refusal; return the refusal reason if refused.

    Not for the move to paid: `record_payment` makes it with `_record_paid`, which also
    sets paid_at."""
    if order.status == target:
        return None
    refused = states.refusal(order.status, target)
    db.session.add(OrderStatusChange(
        order_id=order.id, from_status=order.status, to_status=target, applied=refused is None,
        reason=refused or reason, source=source[:255],
    ))
    if refused is None:
        order.status = target
    return refused


def _check_amount(amount_cents: int) -> None:
    if not isinstance(amount_cents, int) or amount_cents < 0:
        raise InvalidAmount(f"amount must be a non-negative integer of cents, got {amount_cents!r}")
