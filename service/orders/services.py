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
from service.audit import services as audit
from service.audit.actor import Actor
from service.audit.registry import critical, not_critical
from service.db_types import utcnow
from service.extensions import db
from service.orders import states
from service.orders.exceptions import (
    CustomerNotFound,
    IdempotencyConflict,
    InsufficientStock,
    InvalidAmount,
    InvalidChange,
    OrderNotFound,
    PaymentMethodConflict,
    PaymentMethodNotFound,
    ProductNotFound,
)
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
    StockAdjustment,
)
from service.queues import outbox


@dataclass(frozen=True)
class Outcome:
    """What a domain call did: whether it was new, and the order's status after it."""

    order_id: int
    created: bool
    status: str
    refused: str | None = None


@not_critical("a provider capture: its record is the stored webhook event and the payments row; "
              "auditing it would serialise the busiest path")
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


@not_critical("a declined attempt moves no money; the webhook event is its record")
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


@critical("order.refund")
def record_refund(
    *, order_id: int, provider: str, provider_refund_id: str, amount_cents: int,
    currency: str, source: str, provider_payment_id: str | None = None,
    actor: Actor | None = None, reason: str | None = None, details: dict | None = None,
) -> Outcome:
    """Record a refund once, then move the order to partially refunded or refunded.

    A new refund writes its `order.refund` audit row, with the provider as actor unless
    an operator's `actor` is given; one already recorded (the provider's webhook for a
    refund an operator made) changes nothing and writes nothing.
    """
    _check_amount(amount_cents)
    order = _lock_order(order_id)
    existing = db.session.scalar(
        select(Refund).where(
            Refund.provider == provider, Refund.provider_refund_id == provider_refund_id
        )
    )
    created = existing is None
    before = {"status": order.status, "refunded_cents": refunded_cents(order.id)}
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
    if created:
        audit.record(action="order.refund", entity_type="order", entity_id=order.id,
                     actor=actor or Actor.system(provider), before=before,
                     after={"status": order.status, "refunded_cents": refunded},
                     reason=reason, details={
                         "amount_cents": amount_cents, "currency": currency.upper(),
                         "provider": provider, "provider_refund_id": provider_refund_id,
                         "provider_payment_id": provider_payment_id, "source": source,
                         **(details or {})})
    return Outcome(order.id, created, order.status, refused)


@not_critical("a provider dispute notice moves no money by itself; the webhook event is its record")
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


@not_critical("hands a paid order to fulfilment; changes neither money nor stock")
def request_fulfilment(order_id: int) -> bool:
    """Hand a paid order to fulfilment, once; False when already requested or not paid."""
    order = _lock_order(order_id)
    if order.status not in (states.PAID, states.PARTIALLY_REFUNDED):
        return False
    if db.session.scalar(select(Fulfilment.id).where(Fulfilment.order_id == order_id)):
        return False
    db.session.add(Fulfilment(order_id=order_id, status="requested"))
    return True


@not_critical("records a message sent")
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


@not_critical("reads")
def order_id_for_payment(provider: str, provider_payment_id: str) -> int | None:
    """The order a provider payment belongs to, when it has been recorded."""
    return db.session.scalar(
        select(Payment.order_id).where(
            Payment.provider == provider, Payment.provider_payment_id == provider_payment_id
        )
    )


@not_critical("reads")
def refunded_cents(order_id: int) -> int:
    return db.session.scalar(
        select(func.coalesce(func.sum(Refund.amount_cents), 0)).where(Refund.order_id == order_id)
    )


@not_critical("creates a pending order; no money moves until it is paid")
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


@not_critical("demo data for an empty database")
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


# ---- stock ---------------------------------------------------------------------------

MAX_STOCK_DELTA = 1_000_000


@dataclass(frozen=True)
class StockOutcome:
    adjustment: dict
    created: bool  # False when an idempotency key replayed an earlier adjustment


@critical("product.stock_adjust")
def adjust_stock(*, product_id: int, delta: int, reason: str, actor: Actor,
                 idempotency_key: str | None = None) -> StockOutcome:
    """Change a product's stock by `delta`, never below zero; the caller commits.

    The one way stock changes by hand or by the ERP sync. With `idempotency_key`, a
    repeat of the same adjustment returns the first one and changes nothing; the same
    key with another product or delta is an IdempotencyConflict.
    """
    if isinstance(delta, bool) or not isinstance(delta, int) or delta == 0 or \
            abs(delta) > MAX_STOCK_DELTA:
        raise InvalidChange(f"delta must be a non-zero integer within ±{MAX_STOCK_DELTA}")
    reason = _required_reason(reason)
    # The product lock also serialises two requests racing with one idempotency key.
    product = db.session.scalar(select(Product).where(Product.id == product_id)
                                .with_for_update().execution_options(populate_existing=True))
    if product is None:
        raise ProductNotFound(f"product {product_id} does not exist")
    if idempotency_key:
        earlier = db.session.scalar(select(StockAdjustment).where(
            StockAdjustment.idempotency_key == idempotency_key))
        if earlier is not None:
            if (earlier.product_id, earlier.delta) != (product_id, delta):
                raise IdempotencyConflict("this idempotency key was used for another adjustment")
            return StockOutcome(earlier.to_dict(), created=False)
    before = product.stock
    after = before + delta
    if after < 0:
        raise InsufficientStock(f"product {product.sku} has {before} in stock; "
                                f"{delta} would take it below zero")
    product.stock = after
    adjustment = StockAdjustment(product_id=product.id, delta=delta, stock_before=before,
                                 stock_after=after, reason=reason, actor=actor.label[:255],
                                 idempotency_key=idempotency_key or None)
    db.session.add(adjustment)
    db.session.flush()
    audit.record(action="product.stock_adjust", entity_type="product", entity_id=product.id,
                 actor=actor, before={"stock": before}, after={"stock": after}, reason=reason,
                 details={"sku": product.sku, "delta": delta, "adjustment_id": adjustment.id,
                          "idempotency_key": idempotency_key})
    return StockOutcome(adjustment.to_dict(), created=True)


@not_critical("reads products")
def find_product(ref: str | int) -> Product:
    """A product by id or SKU."""
    text_ref = str(ref).strip()
    product = db.session.scalar(select(Product).where(Product.sku == text_ref))
    if product is None and text_ref.isdigit():
        product = db.session.get(Product, int(text_ref))
    if product is None:
        raise ProductNotFound(f"no product {text_ref!r}")
    return product


# ---- payment methods -----------------------------------------------------------------

@dataclass(frozen=True)
class PaymentMethodChange:
    customer_id: int
    payment_methods: list[dict]
    payment_method_id: int | None


@critical("payment_method.add")
def add_payment_method(*, customer_id: int, provider: str, provider_ref: str,
                       brand: str | None, last4: str | None, make_default: bool, actor: Actor,
                       reason: str | None = None) -> PaymentMethodChange:
    """Add a payment method to a customer (the default when asked, or when it is the first)."""
    customer = _lock_customer(customer_id)
    before = _payment_methods(customer.id)
    if db.session.scalar(select(PaymentMethod.id).where(PaymentMethod.provider == provider,
                                                        PaymentMethod.provider_ref == provider_ref)):
        raise PaymentMethodConflict(f"{provider} payment method {provider_ref} is already known")
    make_default = make_default or not before
    if make_default:
        _clear_default(customer.id)
    method = PaymentMethod(customer_id=customer.id, provider=provider, provider_ref=provider_ref,
                           brand=brand, last4=last4, is_default=make_default)
    db.session.add(method)
    db.session.flush()
    return _record_method_change("payment_method.add", customer.id, method.id, before, actor,
                                 reason)


@critical("payment_method.set_default")
def set_default_payment_method(*, customer_id: int, payment_method_id: int, actor: Actor,
                               reason: str | None = None) -> PaymentMethodChange:
    """Make one of the customer's payment methods the default."""
    customer = _lock_customer(customer_id)
    before = _payment_methods(customer.id)
    method = _customer_method(customer.id, payment_method_id)
    if method.is_default:
        raise PaymentMethodConflict(f"payment method {payment_method_id} is already the default")
    _clear_default(customer.id)
    method.is_default = True
    db.session.flush()
    return _record_method_change("payment_method.set_default", customer.id, method.id, before,
                                 actor, reason)


@critical("payment_method.remove")
def remove_payment_method(*, customer_id: int, payment_method_id: int, actor: Actor,
                          reason: str | None = None) -> PaymentMethodChange:
    """Remove a payment method. The default goes only when it is the last one: set
    another default first, so a customer with methods always has a default."""
    customer = _lock_customer(customer_id)
    before = _payment_methods(customer.id)
    method = _customer_method(customer.id, payment_method_id)
    if method.is_default and len(before) > 1:
        raise PaymentMethodConflict("this is the default payment method; make another one "
                                    "the default before removing it")
    db.session.delete(method)
    db.session.flush()
    return _record_method_change("payment_method.remove", customer.id, payment_method_id,
                                 before, actor, reason)


@not_critical("reads payment methods")
def payment_methods_of(customer_id: int) -> list[dict]:
    if db.session.get(Customer, customer_id) is None:
        raise CustomerNotFound(f"customer {customer_id} does not exist")
    return _payment_methods(customer_id)


def _lock_customer(customer_id: int) -> Customer:
    customer = db.session.scalar(select(Customer).where(Customer.id == customer_id)
                                 .with_for_update())
    if customer is None:
        raise CustomerNotFound(f"customer {customer_id} does not exist")
    return customer


def _customer_method(customer_id: int, payment_method_id: int) -> PaymentMethod:
    method = db.session.get(PaymentMethod, payment_method_id)
    if method is None or method.customer_id != customer_id:
        raise PaymentMethodNotFound(
            f"customer {customer_id} has no payment method {payment_method_id}")
    return method


def _clear_default(customer_id: int) -> None:
    for method in db.session.scalars(select(PaymentMethod).where(
            PaymentMethod.customer_id == customer_id, PaymentMethod.is_default.is_(True))):
        method.is_default = False
    db.session.flush()


def _payment_methods(customer_id: int) -> list[dict]:
    # Provider, brand, last 4 digits and the default flag: what changed, no more.
    return [{"id": m.id, "provider": m.provider, "brand": m.brand, "last4": m.last4,
             "is_default": m.is_default}
            for m in db.session.scalars(select(PaymentMethod).where(
                PaymentMethod.customer_id == customer_id).order_by(PaymentMethod.id))]


def _record_method_change(action: str, customer_id: int, method_id: int, before: list[dict],
                          actor: Actor, reason: str | None) -> PaymentMethodChange:
    after = _payment_methods(customer_id)
    audit.record(action=action, entity_type="customer", entity_id=customer_id, actor=actor,
                 before={"payment_methods": before}, after={"payment_methods": after},
                 reason=reason, details={"payment_method_id": method_id})
    return PaymentMethodChange(customer_id, after, method_id)


def _required_reason(reason: str | None) -> str:
    reason = (reason or "").strip()
    if not reason or len(reason) > 500:
        raise InvalidChange("a reason of 1 to 500 characters is required")
    return reason
