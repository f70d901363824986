"""The money rule, as pure functions: amounts, currencies, and what payment facts decide.

Nothing here touches the database. `services` reads the facts under the order's lock,
asks these functions what they mean, and writes the answer; the unit tests ask them
directly.

Amounts are integers of the currency's minor unit as ISO 4217 defines it (cents for EUR,
yen for JPY, fils for KWD). Providers write amounts their own way: Stripe in its own
minor units (ISK with two decimals although the krona has none), PayPal as decimal
strings. The converters below are the only way in, and they refuse what they cannot
convert exactly: money is never rounded silently.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal

from service.orders import states
from service.orders.exceptions import InvalidAmount

# ISO 4217 exponents other than 2.
_ISO_EXPONENTS = {
    **dict.fromkeys(("BIF", "CLP", "DJF", "GNF", "ISK", "JPY", "KMF", "KRW", "PYG", "RWF",
                     "UGX", "UYI", "VND", "VUV", "XAF", "XOF", "XPF"), 0),
    **dict.fromkeys(("BHD", "IQD", "JOD", "KWD", "LYD", "OMR", "TND"), 3),
    **dict.fromkeys(("CLF", "UYW"), 4),
}
# Stripe's own minor units: its "zero-decimal" and "three-decimal" currencies; every other
# currency (ISK, HUF and TWD included) is written with two decimals in its API.
_STRIPE_EXPONENTS = {
    **dict.fromkeys(("BIF", "CLP", "DJF", "GNF", "JPY", "KMF", "KRW", "MGA", "PYG", "RWF",
                     "UGX", "VND", "VUV", "XAF", "XOF", "XPF"), 0),
    **dict.fromkeys(("BHD", "JOD", "KWD", "OMR", "TND"), 3),
}

# The largest amount accepted, in minor units: far above any real payment, far below
# where integer columns or JSON numbers lose precision (2**53).
MAX_MINOR_UNITS = 10**15
# A decimal amount as PayPal writes it: digits, an optional fraction, no sign, no
# exponent, bounded in length before any arithmetic (`1e999990` costs nothing here).
_DECIMAL_AMOUNT = re.compile(r"(\d{1,16})(?:\.(\d{1,8}))?")
_CURRENCY = re.compile(r"[A-Za-z]{3}")


def currency_code(raw: object) -> str:
    """An ISO 4217 code from a provider (`eur`, `EUR`), upper case; InvalidAmount if not one."""
    if not isinstance(raw, str) or not _CURRENCY.fullmatch(raw):
        raise InvalidAmount("currency is not a three-letter code")
    return raw.upper()


def exponent(currency: str) -> int:
    """Digits after the decimal point in `currency` (ISO 4217)."""
    return _ISO_EXPONENTS.get(currency.upper(), 2)


def checked_minor_units(amount: object) -> int:
    """An amount already in minor units: a non-negative integer within the bound."""
    if isinstance(amount, bool) or not isinstance(amount, int):
        raise InvalidAmount("amount is not an integer")
    if not 0 <= amount <= MAX_MINOR_UNITS:
        raise InvalidAmount("amount is out of range")
    return amount


def from_stripe(amount: object, currency: str) -> int:
    """Stripe's integer amount in its own minor units -> ISO minor units of `currency`."""
    amount = checked_minor_units(amount)
    shift = exponent(currency) - _STRIPE_EXPONENTS.get(currency.upper(), 2)
    if shift >= 0:
        return checked_minor_units(amount * 10**shift)
    whole, rest = divmod(amount, 10**-shift)
    if rest:
        raise InvalidAmount(f"amount is not a whole number of {currency.upper()} units")
    return whole


def to_stripe(amount: int, currency: str) -> int:
    """ISO minor units -> Stripe's integer amount (the inverse of `from_stripe`)."""
    shift = _STRIPE_EXPONENTS.get(currency.upper(), 2) - exponent(currency)
    if shift >= 0:
        return amount * 10**shift
    whole, rest = divmod(amount, 10**-shift)
    if rest:
        raise InvalidAmount(f"amount cannot be written in Stripe's {currency.upper()} units")
    return whole


def from_decimal_string(value: object, currency: str) -> int:
    """A decimal string (`"10.50"`, `"1000"`) -> ISO minor units of `currency`.

    Refuses, cheaply, anything that is not a plain bounded decimal, and a fraction finer
    than the currency's minor unit (`"1.005"` EUR) unless its extra digits are zeros.
    """
    if not isinstance(value, str):
        raise InvalidAmount("amount value is not a decimal string")
    match = _DECIMAL_AMOUNT.fullmatch(value)
    if match is None:
        raise InvalidAmount("amount value is not a plain decimal number")
    digits = exponent(currency)
    whole, fraction = match[1], (match[2] or "")
    if fraction[digits:].strip("0"):
        raise InvalidAmount(f"amount has more decimals than {currency.upper()} allows")
    fraction = fraction[:digits].ljust(digits, "0")
    return checked_minor_units(int(whole + fraction))


def to_decimal_string(amount: int, currency: str) -> str:
    """ISO minor units -> the decimal string a person reads (`1050` EUR -> `"10.50"`)."""
    digits = exponent(currency)
    return str((Decimal(amount) / (10**digits)).quantize(Decimal(1).scaleb(-digits)))


# ---- payments ---------------------------------------------------------------------------

class PaymentStatus:
    """What a payment row says about the money it records."""

    SUCCEEDED = "succeeded"  # counts toward its order, which it helped cover
    UNDERPAID = "underpaid"  # counts, but its order is not covered yet
    CURRENCY_MISMATCH = "currency_mismatch"  # not the order's currency: never counts
    FAILED = "failed"
    DISPUTED = "disputed"  # counted still: the money stays until the dispute is lost

    COUNTED = (SUCCEEDED, UNDERPAID, DISPUTED)


@dataclass(frozen=True)
class Settlement:
    """An order's money, as its counted payments and refunds state it."""

    total: int
    paid: int
    refunded: int

    @property
    def covered(self) -> bool:
        return self.paid >= self.total and self.paid > 0

    @property
    def shortfall(self) -> int:
        return max(self.total - self.paid, 0)

    @property
    def overpaid(self) -> int:
        return max(self.paid - self.total, 0)

    @property
    def fully_refunded(self) -> bool:
        """Everything received was given back (or, before any payment arrived, at least
        the order's total: a refund can overtake the payment it refunds)."""
        return self.refunded > 0 and self.refunded >= (self.paid if self.paid else self.total)

    @property
    def refundable(self) -> int | None:
        """What may still be refunded; None while no payment is known to bound it."""
        return max(self.paid - self.refunded, 0) if self.paid else None


@dataclass(frozen=True)
class Signal:
    severity: str
    kind: str


@dataclass(frozen=True)
class PaymentDecision:
    """What a new successful payment does to its order."""

    status: str
    counted: bool
    newly_covered: bool
    signal: Signal | None


def judge_payment(before: Settlement, *, order_currency: str, amount: int, currency: str,
                  was_covered: bool) -> PaymentDecision:
    """Decide a new successful payment of `amount` `currency` against the order `before` it.

    Only money in the order's currency counts; the order is covered once counted money
    reaches its total, once (`was_covered`: it was covered before, perhaps by a payment
    since disputed); an underpayment and a currency mismatch are P1 signals, an
    overpayment a P2.
    """
    if currency.upper() != order_currency.upper():
        return PaymentDecision(PaymentStatus.CURRENCY_MISMATCH, False, False,
                               Signal("P1", "payment_currency_mismatch"))
    after = Settlement(before.total, before.paid + amount, before.refunded)
    if not after.covered:
        return PaymentDecision(PaymentStatus.UNDERPAID, True, False,
                               Signal("P1", "payment_underpaid"))
    signal = Signal("P2", "payment_overpaid") if after.overpaid and amount else None
    return PaymentDecision(PaymentStatus.SUCCEEDED, True, not was_covered, signal)


# ---- refunds ----------------------------------------------------------------------------

class RefundStatus:
    """Provider refund statuses, the two this service gives a refund it refuses, and the
    one it gives a cumulative figure's money once real refunds name it."""

    PENDING = "pending"
    REQUIRES_ACTION = "requires_action"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"
    CURRENCY_MISMATCH = "currency_mismatch"  # refused: not the order's currency
    EXCEEDS_CAPTURE = "exceeds_capture"  # refused: more than was captured
    # A cumulative figure's money that real refunds of the same payment have since named:
    # it counts through them now, never again by itself.
    SUPERSEDED = "superseded"

    PROVIDER = (PENDING, REQUIRES_ACTION, SUCCEEDED, FAILED, CANCELED)
    REFUSED = (CURRENCY_MISMATCH, EXCEEDS_CAPTURE)


# Which later status a refund may take. A refund that succeeded can still fail (the bank
# returns it); a failed or canceled one never comes back; an older event's status (a
# late "pending") never overwrites a newer one.
_REFUND_MOVES = {
    RefundStatus.PENDING: {RefundStatus.REQUIRES_ACTION, RefundStatus.SUCCEEDED,
                           RefundStatus.FAILED, RefundStatus.CANCELED},
    RefundStatus.REQUIRES_ACTION: {RefundStatus.PENDING, RefundStatus.SUCCEEDED,
                                   RefundStatus.FAILED, RefundStatus.CANCELED},
    RefundStatus.SUCCEEDED: {RefundStatus.FAILED},
}


def refund_status_after(current: str, incoming: str) -> str:
    """The status a known refund takes when an event reports `incoming`."""
    return incoming if incoming in _REFUND_MOVES.get(current, ()) else current


def cumulative_delta(cumulative: int, already: int) -> int:
    """New money in a provider's cumulative refunded figure, given what is counted already.

    Read under the order's lock, so two events carrying the same figure (or an older,
    smaller one) find it counted and add nothing.
    """
    return max(cumulative - already, 0)


def identified(amount: int, unidentified: list[int]) -> list[int]:
    """How much of each cumulative figure's money not yet identified (oldest first) a real
    refund of `amount` that starts counting turns out to be.

    A cumulative figure names no refund, so the first real refunds of the same payment
    that count are taken to be its money: the payment then counts the larger of the
    figure and its real refunds, never their sum.
    """
    taken = []
    for part in unidentified:
        take = min(part, amount)
        amount -= take
        taken.append(take)
    return taken


@dataclass(frozen=True)
class RefundDecision:
    status: str
    signal: Signal | None


def judge_refund(*, order_currency: str, currency: str, amount: int, status: str,
                 room: int | None) -> RefundDecision:
    """Decide a refund becoming `status`: refused when its currency is not the order's, or
    when, succeeding, it would exceed what may still be refunded (`room`; None: unbounded
    yet)."""
    if currency.upper() != order_currency.upper():
        return RefundDecision(RefundStatus.CURRENCY_MISMATCH,
                              Signal("P1", "refund_currency_mismatch"))
    if status == RefundStatus.SUCCEEDED and room is not None and amount > room:
        return RefundDecision(RefundStatus.EXCEEDS_CAPTURE, Signal("P1", "refund_exceeds_capture"))
    return RefundDecision(status, None)


# ---- the order's status and its fulfilment ----------------------------------------------

def status_for(current: str, settlement: Settlement) -> str:
    """The status the facts call for; the state machine decides whether it is applied."""
    if settlement.fully_refunded:
        return states.REFUNDED
    if settlement.refunded:
        return states.PARTIALLY_REFUNDED
    if settlement.covered:
        return states.PAID
    return current


def may_fulfil(settlement: Settlement, status: str) -> bool:
    """Whether goods may leave: covered, not wholly refunded, not under dispute.

    Decided from the facts, not from the last move: an order paid and partially refunded
    ships, whichever of the two events came first; one refunded in full before (or after)
    its payment arrived does not.
    """
    return settlement.covered and not settlement.fully_refunded and status != states.DISPUTED
