"""Customers, products (stock), orders, payments and refunds."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from service.clock import iso, utcnow
from service.db_types import BigId, Money
from service.extensions import db


class Customer(db.Model):
    __tablename__ = "customers"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    email: Mapped[str] = mapped_column(String(255), unique=True)
    name: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    payment_methods: Mapped[list[PaymentMethod]] = relationship(back_populates="customer")


class PaymentMethod(db.Model):
    __tablename__ = "payment_methods"
    __table_args__ = (UniqueConstraint("provider", "provider_ref"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id"), index=True)
    provider: Mapped[str] = mapped_column(String(16))
    provider_ref: Mapped[str] = mapped_column(String(255))
    brand: Mapped[str | None] = mapped_column(String(32))
    last4: Mapped[str | None] = mapped_column(String(4))
    is_default: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    customer: Mapped[Customer] = relationship(back_populates="payment_methods")


class Product(db.Model):
    __tablename__ = "products"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    sku: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(255))
    price_cents: Mapped[int]
    stock: Mapped[int] = mapped_column(default=0)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class StockAdjustment(db.Model):
    """One change of a product's stock, with the stock before and after it.

    `idempotency_key`, when the caller gives one (the ERP sync, a retried API call),
    makes a repeat of the same adjustment return the first instead of applying twice.
    """

    __tablename__ = "stock_adjustments"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    product_id: Mapped[int] = mapped_column(ForeignKey("products.id"), index=True)
    delta: Mapped[int]
    stock_before: Mapped[int]
    stock_after: Mapped[int]
    reason: Mapped[str] = mapped_column(String(500))
    actor: Mapped[str] = mapped_column(String(255))
    idempotency_key: Mapped[str | None] = mapped_column(String(255), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    def to_dict(self) -> dict:
        return {"id": self.id, "product_id": self.product_id, "delta": self.delta,
                "stock_before": self.stock_before, "stock_after": self.stock_after,
                "reason": self.reason, "actor": self.actor,
                "idempotency_key": self.idempotency_key,
                "created_at": iso(self.created_at)}


class Order(db.Model):
    __tablename__ = "orders"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id"), index=True)
    status: Mapped[str] = mapped_column(String(24), default="pending", index=True)
    currency: Mapped[str] = mapped_column(String(3), default="EUR")
    # Minor units of `currency` (ISO 4217: cents, yen, fils).
    total_cents: Mapped[int] = mapped_column(Money, default=0)
    # Running sums of the counted payments and succeeded refunds, kept under the order's
    # lock by orders.services: the lock's own read returns them current.
    paid_cents: Mapped[int] = mapped_column(Money, default=0, server_default="0")
    refunded_cents: Mapped[int] = mapped_column(Money, default=0, server_default="0")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    # When counted payments first covered the total (fulfilment is requested then, once).
    paid_at: Mapped[datetime | None]

    items: Mapped[list[OrderItem]] = relationship(back_populates="order")
    payments: Mapped[list[Payment]] = relationship(back_populates="order")
    refunds: Mapped[list[Refund]] = relationship(back_populates="order")

    def to_dict(self) -> dict:
        return {
            "id": self.id,
            "customer_id": self.customer_id,
            "status": self.status,
            "currency": self.currency,
            "total_cents": self.total_cents,
            "paid_cents": self.paid_cents,
            "refunded_cents": self.refunded_cents,
        }


class OrderItem(db.Model):
    __tablename__ = "order_items"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    order_id: Mapped[int] = mapped_column(ForeignKey("orders.id"), index=True)
    product_id: Mapped[int] = mapped_column(ForeignKey("products.id"))
    quantity: Mapped[int]
    unit_price_cents: Mapped[int]

    order: Mapped[Order] = relationship(back_populates="items")


class Payment(db.Model):
    """A provider payment (Stripe PaymentIntent, PayPal capture), recorded once."""

    __tablename__ = "payments"
    __table_args__ = (UniqueConstraint("provider", "provider_payment_id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    order_id: Mapped[int] = mapped_column(ForeignKey("orders.id"), index=True)
    provider: Mapped[str] = mapped_column(String(16))
    provider_payment_id: Mapped[str] = mapped_column(String(255))
    # money.PaymentStatus: succeeded | underpaid | currency_mismatch | failed | disputed
    status: Mapped[str] = mapped_column(String(24))
    # What the provider says was received, in minor units of `currency`.
    amount_cents: Mapped[int] = mapped_column(Money)
    currency: Mapped[str] = mapped_column(String(3))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    order: Mapped[Order] = relationship(back_populates="payments")


class Refund(db.Model):
    """A provider refund, recorded once per provider refund id."""

    __tablename__ = "refunds"
    __table_args__ = (UniqueConstraint("provider", "provider_refund_id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    order_id: Mapped[int] = mapped_column(ForeignKey("orders.id"), index=True)
    provider: Mapped[str] = mapped_column(String(16))
    provider_refund_id: Mapped[str] = mapped_column(String(255))
    provider_payment_id: Mapped[str | None] = mapped_column(String(255), index=True)
    amount_cents: Mapped[int] = mapped_column(Money)
    currency: Mapped[str] = mapped_column(String(3))
    # money.RefundStatus: only `succeeded` counts toward the order's refunded sum.
    status: Mapped[str] = mapped_column(String(24), default="succeeded",
                                        server_default="succeeded")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime | None] = mapped_column(onupdate=utcnow)

    order: Mapped[Order] = relationship(back_populates="refunds")


class RefundRequest(db.Model):
    """A refund asked by an operator: reserved (pending) before the provider is called,
    then succeeded (with the provider's refund id) or failed. One per idempotency key."""

    __tablename__ = "refund_requests"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    order_id: Mapped[int] = mapped_column(ForeignKey("orders.id"), index=True)
    idempotency_key: Mapped[str] = mapped_column(String(255), unique=True)
    fingerprint: Mapped[str] = mapped_column(String(64))
    amount_cents: Mapped[int] = mapped_column(Money)
    currency: Mapped[str] = mapped_column(String(3))
    reason: Mapped[str] = mapped_column(String(500))
    provider: Mapped[str] = mapped_column(String(16))
    provider_payment_id: Mapped[str] = mapped_column(String(255))
    status: Mapped[str] = mapped_column(String(16), index=True)  # pending|succeeded|failed
    provider_refund_id: Mapped[str | None] = mapped_column(String(255))
    error: Mapped[str | None] = mapped_column(String(500))
    actor: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    def to_dict(self) -> dict:
        return {"id": self.id, "order_id": self.order_id, "status": self.status,
                "amount_cents": self.amount_cents, "currency": self.currency,
                "reason": self.reason, "provider": self.provider,
                "provider_payment_id": self.provider_payment_id,
                "provider_refund_id": self.provider_refund_id, "error": self.error,
                "actor": self.actor, "created_at": iso(self.created_at)}


class OrderStatusChange(db.Model):
    """Every status move asked of an order, applied or refused, and why."""

    __tablename__ = "order_status_changes"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    order_id: Mapped[int] = mapped_column(ForeignKey("orders.id"), index=True)
    from_status: Mapped[str] = mapped_column(String(24))
    to_status: Mapped[str] = mapped_column(String(24))
    applied: Mapped[bool]
    reason: Mapped[str | None] = mapped_column(String(255))
    source: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Fulfilment(db.Model):
    """The order handed to fulfilment: once per order."""

    __tablename__ = "fulfilments"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    order_id: Mapped[int] = mapped_column(ForeignKey("orders.id"), unique=True)
    status: Mapped[str] = mapped_column(String(16), default="requested")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Notification(db.Model):
    """An outbound message about an order: once per (order, kind).

    `sending` while a job holds it (until `claimed_until`), then `sent`, or `failed` with
    the error class for the next try. The send itself happens between two short
    transactions, never inside one.
    """

    __tablename__ = "notifications"
    __table_args__ = (UniqueConstraint("order_id", "kind"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    order_id: Mapped[int] = mapped_column(ForeignKey("orders.id"))
    kind: Mapped[str] = mapped_column(String(32))
    channel: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16), default="sending", server_default="sent")
    attempts: Mapped[int] = mapped_column(default=0, server_default="0")
    claimed_until: Mapped[datetime | None]
    sent_at: Mapped[datetime | None]
    last_error: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
