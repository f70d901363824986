"""The one place where orders, payments and refunds change.

Every money movement goes through a function here. Each is idempotent on the provider's
own id (a payment once per provider payment id, a refund once per provider refund id),
locks the order row so concurrent events on one order apply one after the other, and
leaves the commit to its caller, so the change and the event that caused it land in one
transaction. What the facts mean (is the order paid, may it ship, how much may still be
refunded) is decided by the pure functions of `money`.

The changes an auditor asks about (refunds, stock adjustments, payment-method changes)
write their audit row here too, in the same transaction (`service.audit.services.record`):
each public function is marked `@critical(action)` or `@not_critical(why)`, and a test
keeps every one marked.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import DateTime, func, select
from sqlalchemy.exc import IntegrityError

from service import fastsql
from service.alerts.services import raise_signal
from service.audit import services as audit
from service.audit.actor import Actor
from service.audit.registry import critical, not_critical
from service.clock import utcnow
from service.extensions import db
from service.orders import money, states
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
from service.orders.money import PaymentStatus, RefundStatus
from service.queues import outbox


@dataclass(frozen=True)
class Outcome:
    """What a domain call did: whether it was new, and the order's status after it."""

    order_id: int
    created: bool
    status: str
    refused: str | None = None


@not_critical("a provider capture: its record is the stored webhook event and the payments "
              "row; auditing it would serialise the busiest path")
def record_payment(
    *, order_id: int, provider: str, provider_payment_id: str, amount_cents: int,
    currency: str, source: str,
) -> Outcome:
    """Record a successful payment once, and let the money rule decide what it does.

    The order is paid only when its counted payments, in its own currency, reach its
    total; several partial payments that get there pay it once. An underpayment or a
    payment in another currency is recorded with a status that says so (`underpaid`,
    `currency_mismatch`) and raises a P1 signal; an overpayment pays the order and raises
    a P2. Fulfilment is requested when the order is first covered, unless it was wholly
    refunded first (`money.may_fulfil`).

    The busiest money path (every successful payment webhook), so it is written as a few
    plain statements rather than through the ORM, whose bookkeeping cost several times
    the round trips here: lock the order (the lock's read returns its running sums
    current), insert the payment unless known (a known one that had failed now
    succeeded), write the order's new sums and status, record the move, add follow-ups.
    """
    amount = money.checked_minor_units(amount_cents)
    currency = money.currency_code(currency)
    now = utcnow()
    order = _lock(order_id)
    decision = money.judge_payment(order.settlement, order_currency=order.currency,
                                   amount=amount, currency=currency,
                                   was_covered=order.paid_at is not None)
    payment = {"order_id": order_id, "provider": provider,
               "provider_payment_id": provider_payment_id, "amount_cents": amount,
               "currency": currency, "status": decision.status, "now": now}
    created = bool(fastsql.run(_INSERT_PAYMENT, payment).rows) or \
        bool(fastsql.run(_REVIVE_FAILED_PAYMENT, payment).rows)
    if not created:
        return Outcome(order_id, False, order.status)
    after = money.Settlement(order.total, order.paid + (amount if decision.counted else 0),
                             order.refunded)
    target = money.status_for(order.status, after)
    refused = states.refusal(order.status, target) if target != order.status else None
    status = order.status if refused or target == order.status else target
    fastsql.run(_UPDATE_ORDER_PAID, {
        "order_id": order_id, "paid": after.paid, "status": status, "now": now,
        "paid_at": now if decision.newly_covered else order.paid_at})
    if target != order.status:
        _insert_move(order_id, order.status, target, refused=refused,
                     reason="payment succeeded", source=source, now=now)
    elif decision.newly_covered and status != states.PAID:
        # The payment asked for `paid` and the order is past it (refunded first): say so.
        refused = states.refusal(status, states.PAID)
        _insert_move(order_id, status, states.PAID, refused=refused,
                     reason="payment succeeded", source=source, now=now)
    if decision.newly_covered:
        if order.paid:
            fastsql.run(_SETTLE_UNDERPAID, {"order_id": order_id, "now": now})
        if money.may_fulfil(after, status):
            # Follow-up work is committed with the payment. The relay publishes it: these
            # jobs are rate limited anyway, so publishing them on the payment's hot path
            # would only lengthen it.
            outbox.add_jobs([("orders.fulfil", [order_id]),
                             ("orders.send_confirmation", [order_id])], queue="orders")
    if decision.signal is not None:
        _signal(decision.signal, source, {
            "order_id": order_id, "provider": provider, "payment_id": provider_payment_id,
            "amount": amount, "currency": currency, "order_total": order.total,
            "order_currency": order.currency, "paid": after.paid,
            "shortfall": after.shortfall, "overpaid": after.overpaid})
    return Outcome(order_id, True, status, refused)


@dataclass(frozen=True)
class LockedOrder:
    """An order row read under its lock: what the money rule needs."""

    id: int
    status: str
    total: int
    currency: str
    paid: int
    refunded: int
    paid_at: object

    @property
    def settlement(self) -> money.Settlement:
        return money.Settlement(self.total, self.paid, self.refunded)


def _lock(order_id: int) -> LockedOrder:
    rows = fastsql.run(_LOCK_ORDER, {"order_id": order_id}).rows
    if not rows:
        raise OrderNotFound(f"order {order_id} does not exist")
    return LockedOrder(order_id, *rows[0])


# FOR UPDATE returns the row as the transaction that held the lock left it (PostgreSQL
# re-reads a locked row once it is free), so the running sums are current: a statement
# that summed the payments table here would read them as of before the wait.
_LOCK_ORDER = fastsql.Statement(
    "SELECT status, total_cents, currency, paid_cents, refunded_cents, paid_at"
    " FROM orders WHERE id = :order_id", for_update=True)
_INSERT_PAYMENT = fastsql.Statement(
    "INSERT INTO payments (order_id, provider, provider_payment_id, status, amount_cents,"
    " currency, created_at, updated_at)"
    " VALUES (:order_id, :provider, :provider_payment_id, :status, :amount_cents,"
    " :currency, :now, :now)"
    " ON CONFLICT (provider, provider_payment_id) DO NOTHING RETURNING id",
    now=DateTime(),
)
_REVIVE_FAILED_PAYMENT = fastsql.Statement(
    "UPDATE payments SET status = :status, amount_cents = :amount_cents,"
    " currency = :currency, updated_at = :now"
    " WHERE provider = :provider AND provider_payment_id = :provider_payment_id"
    " AND order_id = :order_id AND status = 'failed' RETURNING id",
    now=DateTime(),
)
_UPDATE_ORDER_PAID = fastsql.Statement(
    "UPDATE orders SET paid_cents = :paid, status = :status, paid_at = :paid_at,"
    " updated_at = :now WHERE id = :order_id",
    now=DateTime(), paid_at=DateTime(),
)
_SETTLE_UNDERPAID = fastsql.Statement(
    "UPDATE payments SET status = 'succeeded', updated_at = :now"
    " WHERE order_id = :order_id AND status = 'underpaid'",
    now=DateTime(),
)
_INSERT_MOVE = fastsql.Statement(
    "INSERT INTO order_status_changes (order_id, from_status, to_status, applied, reason,"
    " source, created_at)"
    " VALUES (:order_id, :from_status, :to_status, :applied, :reason, :source, :now)",
    now=DateTime(),
)


def _insert_move(order_id: int, current: str, target: str, *, refused: str | None,
                 reason: str, source: str, now) -> None:
    fastsql.run(_INSERT_MOVE, {"order_id": order_id, "from_status": current,
                               "to_status": target, "applied": refused is None,
                               "reason": refused or reason, "source": source[:255],
                               "now": now})


def _signal(signal: money.Signal, source: str, details: dict) -> None:
    raise_signal(severity=signal.severity, kind=signal.kind, source=source, details=details)


@not_critical("a declined attempt moves no money; the webhook event is its record")
def record_payment_failure(
    *, order_id: int, provider: str, provider_payment_id: str, amount_cents: int,
    currency: str, reason: str, source: str,
) -> Outcome:
    """Record a failed or denied payment attempt; only a pending order becomes failed."""
    amount = money.checked_minor_units(amount_cents)
    currency = money.currency_code(currency)
    order = _lock_order(order_id)
    payment = _find_payment(provider, provider_payment_id)
    created = payment is None
    if payment is None:
        db.session.add(Payment(
            order_id=order.id, provider=provider, provider_payment_id=provider_payment_id,
            status=PaymentStatus.FAILED, amount_cents=amount, currency=currency,
        ))
    refused = _move(order, states.FAILED, source=source, reason=reason[:200])
    return Outcome(order.id, created, order.status, refused)


@dataclass(frozen=True)
class RefundFact:
    """One provider refund as an event reports it (amount in minor units of `currency`)."""

    provider_refund_id: str
    amount_cents: int
    currency: str
    status: str = RefundStatus.SUCCEEDED


@dataclass(frozen=True)
class CumulativeRefund:
    """A provider's cumulative refunded figure for one payment (Stripe's
    `amount_refunded`), for events that carry no refund list. `key` names the payment
    in the provider's terms (the charge id) for the refund rows it produces."""

    key: str
    total_cents: int
    currency: str


@critical("order.refund")
def apply_refunds(
    *, order_id: int, provider: str, provider_payment_id: str | None, source: str,
    refunds: Sequence[RefundFact] = (), cumulative: CumulativeRefund | None = None,
    captured_cents: int | None = None, actor: Actor | None = None, reason: str | None = None,
    details: dict | None = None,
) -> Outcome:
    """The one place refunds change: each refund once, with its status, under the lock.

    Webhooks call it with the provider's refund list or its cumulative figure; an admin
    refund (`refunds.refund_order`) with the one RefundFact the provider answered. Under
    the order's lock, a cumulative figure becomes the delta over what is already counted
    for that payment, so two events processed at the same moment on two workers never
    count the same money twice. Only succeeded refunds count; a refund that fails later
    stops counting. A refund in another currency, or one that would take more than was
    captured (the payment's amount, else the provider's `captured_cents`; and never more
    than the order's paid sum minus what is refunded), is recorded as refused and raises
    a P1 signal.

    Audit: a call that records or changes any refund writes one `order.refund` row in
    the same transaction, with the order's status and refunded sum before and after,
    each changed refund's status before and after, and as actor the operator (`actor`)
    or else the provider (`system:<provider>`). The provider's own report of a refund an
    operator made finds it recorded by its refund id (or, for a cumulative figure,
    counted for its payment) and changes and writes nothing. An operator's call always
    writes its row, even when the provider's webhook recorded the refund first.
    """
    order = _lock_order(order_id)
    facts = [_checked_fact(fact) for fact in refunds]
    synthetic = None
    if cumulative is not None:
        total = money.checked_minor_units(cumulative.total_cents)
        delta = money.cumulative_delta(total, _counted_refunds(provider, provider_payment_id))
        if delta:
            synthetic = _checked_fact(RefundFact(
                _cumulative_id(provider, f"{cumulative.key}{_CUMULATIVE}{total}"),
                delta, cumulative.currency))
            facts.append(synthetic)
    before = {"status": order.status, "refunded_cents": order.refunded_cents}
    changes = []
    for fact in facts:
        changes += _apply_refund(order, fact, provider=provider,
                                 provider_payment_id=provider_payment_id,
                                 captured_cents=captured_cents, source=source,
                                 real=fact is not synthetic)
    settlement = _settlement(order)
    refused = _move(order, money.status_for(order.status, settlement), source=source,
                    reason=f"refunded {settlement.refunded} of {settlement.paid}")
    if changes or actor is not None:
        after = {"status": order.status, "refunded_cents": order.refunded_cents}
        audit.record(
            action="order.refund", entity_type="order", entity_id=order.id,
            actor=actor or Actor.system(provider),
            before={**before, "refunds": {c.provider_refund_id: c.before for c in changes}},
            after={**after, "refunds": {c.provider_refund_id: c.after for c in changes}},
            reason=reason, details={
                "provider": provider, "provider_payment_id": provider_payment_id,
                "source": source[:255], "refunds": [c.as_dict() for c in changes],
                **({"already_recorded": [f.provider_refund_id for f in facts]}
                   if not changes and facts else {}),
                **(details or {})})
    return Outcome(order.id, bool(changes), order.status, refused)


@dataclass(frozen=True)
class _RefundChange:
    provider_refund_id: str
    amount_cents: int
    currency: str
    before: str | None
    after: str

    def as_dict(self) -> dict:
        return {"provider_refund_id": self.provider_refund_id,
                "amount_cents": self.amount_cents, "currency": self.currency,
                "status_before": self.before, "status": self.after}


def _checked_fact(fact: RefundFact) -> RefundFact:
    if fact.status not in RefundStatus.PROVIDER:
        raise InvalidAmount("refund status is not one the provider uses")
    return RefundFact(fact.provider_refund_id, money.checked_minor_units(fact.amount_cents),
                      money.currency_code(fact.currency), fact.status)


def _apply_refund(order: Order, fact: RefundFact, *, provider: str,
                  provider_payment_id: str | None, captured_cents: int | None,
                  source: str, real: bool) -> list[_RefundChange]:
    """Record or update one refund; what changed (nothing, the refund, and for a real
    refund that starts counting the cumulative figures' rows it identifies)."""
    refund = db.session.scalar(select(Refund).where(
        Refund.provider == provider, Refund.provider_refund_id == fact.provider_refund_id))
    current = None if refund is None else refund.status
    status = fact.status if current is None else money.refund_status_after(current, fact.status)
    if status == current:
        return []
    if current == RefundStatus.SUCCEEDED:
        # A refund that failed after it succeeded gives its money back to the order.
        order.refunded_cents -= refund.amount_cents
    unidentified = []
    if real and status == RefundStatus.SUCCEEDED:
        unidentified = _unidentified_refunds(provider, provider_payment_id)
    taken = money.identified(fact.amount_cents, [r.amount_cents for r in unidentified])
    decision = money.judge_refund(
        order_currency=order.currency, currency=fact.currency, amount=fact.amount_cents,
        status=status, room=_refund_room(order, provider, provider_payment_id, captured_cents,
                                         freed=sum(taken)))
    if refund is None:
        refund = Refund(order_id=order.id, provider=provider,
                        provider_refund_id=fact.provider_refund_id,
                        provider_payment_id=provider_payment_id,
                        amount_cents=fact.amount_cents, currency=fact.currency)
        db.session.add(refund)
    refund.status = decision.status
    changes = [_RefundChange(fact.provider_refund_id, refund.amount_cents, refund.currency,
                             current, refund.status)]
    if decision.status == RefundStatus.SUCCEEDED:
        order.refunded_cents += fact.amount_cents
        for row, take in zip(unidentified, taken, strict=True):
            if take:
                changes += _supersede(order, row, take)
    db.session.flush()
    if decision.signal is not None:
        settlement = _settlement(order)
        _signal(decision.signal, source, {
            "order_id": order.id, "provider": provider, "refund_id": fact.provider_refund_id,
            "payment_id": provider_payment_id, "amount": fact.amount_cents,
            "currency": fact.currency, "order_currency": order.currency,
            "paid": settlement.paid, "refunded": settlement.refunded,
            "captured": captured_cents})
    return changes


# A cumulative figure's refund rows are named `<charge>:cumulative:<figure>` (with `:<n>`
# when the figure is counted again, see `_cumulative_id`); what a real refund leaves of
# one, `...:rest:<amount>`.
_CUMULATIVE = ":cumulative:"
_REST = ":rest:"


def _cumulative_id(provider: str, name: str) -> str:
    """The refund id for a cumulative figure's new money: its own name, unless a row of
    that name was superseded (its money was identified as a real refund, which then
    failed, and the provider reports the figure again: new money, counted again)."""
    candidate, n = name, 1
    while db.session.scalar(select(Refund.status).where(
            Refund.provider == provider,
            Refund.provider_refund_id == candidate)) == RefundStatus.SUPERSEDED:
        n += 1
        candidate = f"{name}:{n}"
    return candidate


def _unidentified_refunds(provider: str, provider_payment_id: str | None) -> list[Refund]:
    """The payment's counted cumulative-figure rows, oldest first: money no real refund
    has named yet (read under the order's lock)."""
    if not provider_payment_id:
        return []
    return list(db.session.scalars(select(Refund).where(
        Refund.provider == provider, Refund.provider_payment_id == provider_payment_id,
        Refund.status == RefundStatus.SUCCEEDED,
        Refund.provider_refund_id.contains(_CUMULATIVE, autoescape=True)).order_by(Refund.id)))


def _supersede(order: Order, row: Refund, take: int) -> list[_RefundChange]:
    """A cumulative figure's row, `take` of which a real refund turned out to be: it stops
    counting, and what the real refund leaves of it counts on as a new row. Amounts are
    never rewritten, so the audit row's statuses say every change."""
    row.status = RefundStatus.SUPERSEDED
    order.refunded_cents -= row.amount_cents
    changes = [_RefundChange(row.provider_refund_id, row.amount_cents, row.currency,
                             RefundStatus.SUCCEEDED, row.status)]
    rest = row.amount_cents - take
    if rest:
        # The rest of a figure only shrinks, so its name is new.
        name = f"{row.provider_refund_id.split(_REST)[0]}{_REST}{rest}"
        db.session.add(Refund(order_id=row.order_id, provider=row.provider,
                              provider_refund_id=name,
                              provider_payment_id=row.provider_payment_id, amount_cents=rest,
                              currency=row.currency, status=RefundStatus.SUCCEEDED))
        order.refunded_cents += rest
        changes.append(_RefundChange(name, rest, row.currency, None, RefundStatus.SUCCEEDED))
    return changes


def _refund_room(order: Order, provider: str, provider_payment_id: str | None,
                 captured_cents: int | None, *, freed: int = 0) -> int | None:
    """How much more may be refunded: bounded by the order's paid sum minus its refunds,
    and by the payment's capture minus that payment's refunds; None if nothing bounds it
    yet (a refund that overtook its payment, with no captured figure). `freed`: counted
    cumulative money the refund being judged turns out to be, so not taken twice."""
    rooms = []
    order_room = money.Settlement(order.total_cents, order.paid_cents,
                                  order.refunded_cents - freed).refundable
    if order_room is not None:
        rooms.append(order_room)
    cap = captured_cents
    if provider_payment_id:
        payment = _find_payment(provider, provider_payment_id)
        if payment is not None and payment.status in PaymentStatus.COUNTED:
            cap = payment.amount_cents
    if cap is not None:
        rooms.append(max(cap - _counted_refunds(provider, provider_payment_id) + freed, 0))
    return min(rooms) if rooms else None


def _counted_refunds(provider: str, provider_payment_id: str | None) -> int:
    """Succeeded refunds already counted for one payment (read under the order's lock)."""
    if not provider_payment_id:
        return 0
    # int(): PostgreSQL sums a bigint column as numeric.
    return int(db.session.scalar(
        select(func.coalesce(func.sum(Refund.amount_cents), 0)).where(
            Refund.provider == provider, Refund.provider_payment_id == provider_payment_id,
            Refund.status == RefundStatus.SUCCEEDED)))


def _settlement(order: Order) -> money.Settlement:
    return money.Settlement(order.total_cents, order.paid_cents, order.refunded_cents)


@not_critical("a dispute notice moves no money by itself; the webhook event is its "
              "record")
def record_dispute(
    *, order_id: int, provider: str, provider_payment_id: str | None, source: str,
) -> Outcome:
    """Mark the order disputed (and its payment, when known)."""
    order = _lock_order(order_id)
    if provider_payment_id:
        payment = _find_payment(provider, provider_payment_id)
        if payment is not None:
            payment.status = PaymentStatus.DISPUTED
    before = order.status
    refused = _move(order, states.DISPUTED, source=source, reason="dispute opened")
    return Outcome(order.id, before != order.status, order.status, refused)


@not_critical("hands a paid order to fulfilment; changes neither money nor stock")
def request_fulfilment(order_id: int) -> bool:
    """Hand an order to fulfilment, once, when the payment facts allow it.

    Decided from the facts at the time the job runs (`money.may_fulfil`), not from the
    status move that queued it: an order wholly refunded in between does not ship, and
    one partially refunded before its payment arrived does. False when not allowed or
    already requested.
    """
    order = _lock_order(order_id)
    if order.paid_at is None or not money.may_fulfil(_settlement(order), order.status):
        return False
    if db.session.scalar(select(Fulfilment.id).where(Fulfilment.order_id == order_id)):
        return False
    db.session.add(Fulfilment(order_id=order_id, status="requested"))
    return True


# A notification claimed by a job that died is claimable again after this long.
NOTIFICATION_CLAIM = timedelta(minutes=5)


@not_critical("records a message sent")
def send_order_notification(order_id: int, *, kind: str, notifier) -> bool:
    """Send one notification of `kind` per order; False when it was sent (or is being sent).

    No HTTP call is made while a lock or a transaction is held: the notification is
    claimed in one short transaction (committed here), sent with none open, and its
    outcome recorded in another. A send that fails is recorded as `failed` (with the
    error class only) and raised, so the job retries; a crash between the send and the
    record may send it twice once the claim expires, never zero times.
    """
    claimed = _claim_notification(order_id, kind, notifier.channel)
    db.session.commit()
    if claimed is None:
        return False
    notification_id, payload = claimed
    try:
        notifier.send(order_id=order_id, kind=kind, payload=payload)
    except Exception as exc:
        db.session.rollback()
        _record_notification(notification_id, status="failed", error=type(exc).__name__)
        raise
    _record_notification(notification_id, status="sent", error=None)
    return True


def _claim_notification(order_id: int, kind: str, channel: str) -> tuple[int, dict] | None:
    now = utcnow()
    order = db.session.get(Order, order_id)
    if order is None:
        raise OrderNotFound(f"order {order_id} does not exist")
    payload = {"status": order.status, "total_cents": order.total_cents,
               "currency": order.currency}
    notification = db.session.scalar(
        select(Notification).where(Notification.order_id == order_id,
                                   Notification.kind == kind).with_for_update())
    if notification is None:
        notification = Notification(order_id=order_id, kind=kind, channel=channel)
        db.session.add(notification)
        try:
            db.session.flush()
        except IntegrityError:
            # Another job claimed it between our read and our insert.
            db.session.rollback()
            return None
    elif notification.status == "sent" or (
            notification.status == "sending" and notification.claimed_until
            and notification.claimed_until > now):
        return None
    notification.status = "sending"
    notification.channel = channel
    notification.claimed_until = now + NOTIFICATION_CLAIM
    notification.attempts += 1
    db.session.flush()
    return notification.id, payload


def _record_notification(notification_id: int, *, status: str, error: str | None) -> None:
    notification = db.session.get(Notification, notification_id)
    notification.status = status
    notification.claimed_until = None
    notification.last_error = error
    if status == "sent":
        notification.sent_at = utcnow()
    db.session.commit()


@not_critical("reads")
def order_id_for_payment(provider: str, provider_payment_id: str) -> int | None:
    """The order a provider payment belongs to, when it has been recorded."""
    return db.session.scalar(
        select(Payment.order_id).where(
            Payment.provider == provider, Payment.provider_payment_id == provider_payment_id
        )
    )


@not_critical("reads")
def order_to_pay(order_id: int | None = None) -> dict | None:
    """The order a test payment is for, as plain data: `order_id`, else the oldest
    pending order; None when there is none."""
    if order_id is not None:
        order = db.session.get(Order, order_id)
    else:
        order = db.session.scalar(select(Order).where(Order.status == states.PENDING)
                                  .order_by(Order.id).limit(1))
    return None if order is None else order.to_dict()


@not_critical("reads")
def order_details(order_id: int) -> dict:
    """One order as plain data (status, total, paid and refunded sums); OrderNotFound."""
    order = db.session.get(Order, order_id)
    if order is None:
        raise OrderNotFound(f"order {order_id} does not exist")
    return order.to_dict()


@not_critical("reads")
def refunded_cents(order_id: int) -> int:
    """The order's succeeded refunds, in minor units of its currency."""
    return db.session.scalar(select(Order.refunded_cents).where(Order.id == order_id)) or 0


@not_critical("reads")
def stuck_pending_orders(*, older_than: datetime, limit: int = 20,
                         with_payment: bool = False) -> dict:
    """Orders still pending that were created before `older_than`: how many, and the
    oldest `limit` of them (id, total, created at), for the payment runbook.

    `with_payment`: only those with a payment recorded (money came and the order did not
    move: short, in another currency); the others are checkouts nobody paid yet, or
    whose payment event is among the failures."""
    stuck = [Order.status == states.PENDING, Order.created_at < older_than]
    if with_payment:
        stuck.append(select(Payment.id).where(Payment.order_id == Order.id).exists())
    count = db.session.scalar(select(func.count()).select_from(Order).where(*stuck)) or 0
    oldest = db.session.execute(
        select(Order.id, Order.total_cents, Order.currency, Order.created_at)
        .where(*stuck).order_by(Order.created_at, Order.id).limit(limit)).all()
    return {"count": count, "oldest": [row._asdict() for row in oldest]}


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
    # populate_existing: the row as the lock returns it, not as this session last saw it.
    order = db.session.scalar(select(Order).where(Order.id == order_id).with_for_update()
                              .execution_options(populate_existing=True))
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

    Not for the move to paid: `record_payment` makes it, with the running sums."""
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


@dataclass(frozen=True)
class StockLevelOutcome:
    sku: str
    product_id: int
    stock_before: int
    stock_after: int
    adjustment_id: int | None  # None when the stock already was at the level

    @property
    def changed(self) -> bool:
        return self.adjustment_id is not None


@critical("product.stock_adjust")
def set_stock_level(*, sku: str, quantity: int, reason: str, actor: Actor) -> StockLevelOutcome:
    """Bring a product's stock to `quantity` (the ERP's count); the caller commits.

    The difference is computed under the product's lock and applied by `adjust_stock`,
    so a set level is an ordinary adjustment with its own audit row; a product already
    at the level is left alone (no row). Setting it again is harmless: a repeated or
    overlapping sync changes nothing the second time. Raises ProductNotFound for an
    unknown SKU and InvalidChange for a negative quantity.
    """
    if isinstance(quantity, bool) or not isinstance(quantity, int) or quantity < 0:
        raise InvalidChange(f"a stock level is a whole number >= 0, got {quantity!r}")
    product = db.session.scalar(select(Product).where(Product.sku == sku)
                                .with_for_update().execution_options(populate_existing=True))
    if product is None:
        raise ProductNotFound(f"no product {sku!r}")
    before = product.stock
    if quantity == before:
        return StockLevelOutcome(sku=sku, product_id=product.id, stock_before=before,
                                 stock_after=before, adjustment_id=None)
    outcome = adjust_stock(product_id=product.id, delta=quantity - before, reason=reason,
                           actor=actor)
    return StockLevelOutcome(sku=sku, product_id=product.id, stock_before=before,
                             stock_after=outcome.adjustment["stock_after"],
                             adjustment_id=outcome.adjustment["id"])


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
