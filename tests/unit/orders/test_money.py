"""The money rule as pure functions: conversions, what a payment does, refunds, fulfilment."""

from __future__ import annotations

import pytest

from service.orders import money, states
from service.orders.exceptions import InvalidAmount
from service.orders.money import PaymentStatus, RefundStatus, Settlement

# ---- amounts and currencies ----------------------------------------------------------


@pytest.mark.parametrize(("amount", "currency", "minor"), [
    (1050, "EUR", 1050),
    (5000, "JPY", 5000),  # zero-decimal: Stripe's unit is the yen
    (5000, "KRW", 5000),
    (5120, "KWD", 5120),  # three-decimal: fils on both sides
    (50000, "ISK", 500),  # Stripe writes ISK with two decimals; the krona has none
    (700, "MGA", 70000),  # Stripe zero-decimal, ISO two
    (0, "usd", 0),
])
def test_stripe_amounts_become_iso_minor_units(amount, currency, minor):
    assert money.from_stripe(amount, currency) == minor


def test_a_stripe_amount_that_is_not_whole_in_the_currency_is_refused():
    with pytest.raises(InvalidAmount, match="whole number of ISK"):
        money.from_stripe(50050, "ISK")


@pytest.mark.parametrize(("value", "currency", "minor"), [
    ("10.50", "EUR", 1050),
    ("10.5", "EUR", 1050),
    ("10", "EUR", 1000),
    ("10.500", "EUR", 1050),  # extra zeros say nothing more
    ("1000", "JPY", 1000),
    ("1000.00", "JPY", 1000),
    ("1.234", "KWD", 1234),
    ("1000", "HUF", 100000),  # PayPal writes HUF without decimals; ISO has two
    ("0.01", "USD", 1),
])
def test_decimal_strings_become_iso_minor_units(value, currency, minor):
    assert money.from_decimal_string(value, currency) == minor


@pytest.mark.parametrize(("value", "currency"), [
    ("10.505", "EUR"),  # finer than a cent
    ("1.5", "JPY"),  # the yen has no fraction
    ("1.2345", "KWD"),
    ("1e999990", "EUR"),  # exponent notation: refused before any arithmetic
    ("1E5", "EUR"),
    ("-5.00", "EUR"),
    ("+5.00", "EUR"),
    (" 5.00", "EUR"),
    ("5.", "EUR"),
    (".5", "EUR"),
    ("NaN", "EUR"),
    ("Infinity", "EUR"),
    ("9" * 17, "EUR"),  # longer than any amount
    ("", "EUR"),
    (5, "EUR"),  # a number, not PayPal's string
    (None, "EUR"),
])
def test_malformed_or_absurd_decimal_strings_are_refused(value, currency):
    with pytest.raises(InvalidAmount):
        money.from_decimal_string(value, currency)


@pytest.mark.parametrize("amount", [-1, money.MAX_MINOR_UNITS + 1, 10.0, True, "100", None])
def test_minor_unit_amounts_are_bounded_integers(amount):
    with pytest.raises(InvalidAmount):
        money.from_stripe(amount, "EUR")


@pytest.mark.parametrize("raw", ["eu", "euro", "E1R", "", None, 978, "€ur"])
def test_currency_codes_are_three_letters(raw):
    with pytest.raises(InvalidAmount):
        money.currency_code(raw)


def test_to_decimal_string_reads_minor_units_back():
    assert money.to_decimal_string(1050, "EUR") == "10.50"
    assert money.to_decimal_string(1000, "JPY") == "1000"
    assert money.to_decimal_string(1234, "KWD") == "1.234"


# ---- payments ------------------------------------------------------------------------

def judge(total: int, *, paid: int = 0, amount: int, currency: str = "EUR",
          was_covered: bool = False) -> money.PaymentDecision:
    return money.judge_payment(Settlement(total, paid, 0), order_currency="EUR", amount=amount,
                               currency=currency, was_covered=was_covered)


def test_exact_payment_covers_the_order_quietly():
    decision = judge(1000, amount=1000)
    assert (decision.status, decision.counted, decision.newly_covered, decision.signal) == (
        PaymentStatus.SUCCEEDED, True, True, None)


def test_underpayment_counts_but_does_not_cover_and_is_a_p1():
    decision = judge(1000, amount=999)
    assert (decision.status, decision.counted, decision.newly_covered) == (
        PaymentStatus.UNDERPAID, True, False)
    assert decision.signal == money.Signal("P1", "payment_underpaid")


def test_payment_in_another_currency_never_counts_and_is_a_p1():
    decision = judge(1000, amount=5000, currency="USD")
    assert (decision.status, decision.counted, decision.newly_covered) == (
        PaymentStatus.CURRENCY_MISMATCH, False, False)
    assert decision.signal == money.Signal("P1", "payment_currency_mismatch")


def test_overpayment_covers_the_order_and_is_a_p2():
    decision = judge(1000, amount=1200)
    assert (decision.status, decision.newly_covered) == (PaymentStatus.SUCCEEDED, True)
    assert decision.signal == money.Signal("P2", "payment_overpaid")


def test_the_partial_payment_that_reaches_the_total_covers_the_order():
    assert judge(1000, paid=400, amount=600).newly_covered


def test_a_payment_after_the_order_was_covered_does_not_cover_it_again():
    decision = judge(1000, paid=1000, amount=100, was_covered=True)
    assert not decision.newly_covered
    assert decision.signal == money.Signal("P2", "payment_overpaid")


# ---- refunds -------------------------------------------------------------------------

@pytest.mark.parametrize(("current", "incoming", "after"), [
    (RefundStatus.PENDING, RefundStatus.SUCCEEDED, RefundStatus.SUCCEEDED),
    (RefundStatus.PENDING, RefundStatus.CANCELED, RefundStatus.CANCELED),
    (RefundStatus.SUCCEEDED, RefundStatus.FAILED, RefundStatus.FAILED),
    (RefundStatus.SUCCEEDED, RefundStatus.PENDING, RefundStatus.SUCCEEDED),  # a late event
    (RefundStatus.FAILED, RefundStatus.SUCCEEDED, RefundStatus.FAILED),
    (RefundStatus.CANCELED, RefundStatus.PENDING, RefundStatus.CANCELED),
    (RefundStatus.EXCEEDS_CAPTURE, RefundStatus.SUCCEEDED, RefundStatus.EXCEEDS_CAPTURE),
    (RefundStatus.SUPERSEDED, RefundStatus.SUCCEEDED, RefundStatus.SUPERSEDED),
])
def test_refund_statuses_only_move_forward(current, incoming, after):
    assert money.refund_status_after(current, incoming) == after


def test_a_cumulative_figure_adds_only_what_is_not_counted_yet():
    assert money.cumulative_delta(1000, 400) == 600
    assert money.cumulative_delta(400, 1000) == 0  # an older event, overtaken
    assert money.cumulative_delta(1000, 1000) == 0  # the same figure twice


def test_a_real_refund_is_the_unidentified_cumulative_money_first_oldest_first():
    assert money.identified(400, [400]) == [400]
    assert money.identified(300, [400]) == [300]  # 100 of the figure stays unnamed
    assert money.identified(600, [400]) == [400]  # 200 is new money
    assert money.identified(500, [400, 300]) == [400, 100]
    assert money.identified(500, []) == []


def test_a_refund_beyond_what_may_still_be_refunded_is_refused():
    decision = money.judge_refund(order_currency="EUR", currency="EUR", amount=700,
                                  status=RefundStatus.SUCCEEDED, room=600)
    assert decision == money.RefundDecision(RefundStatus.EXCEEDS_CAPTURE,
                                            money.Signal("P1", "refund_exceeds_capture"))
    # A pending refund takes nothing yet; an unbounded room (no payment known) lets it in.
    assert money.judge_refund(order_currency="EUR", currency="EUR", amount=700,
                              status=RefundStatus.PENDING, room=600).status == "pending"
    assert money.judge_refund(order_currency="EUR", currency="EUR", amount=700,
                              status=RefundStatus.SUCCEEDED, room=None).status == "succeeded"


def test_a_refund_in_another_currency_is_refused():
    decision = money.judge_refund(order_currency="EUR", currency="GBP", amount=1,
                                  status=RefundStatus.SUCCEEDED, room=None)
    assert decision.status == RefundStatus.CURRENCY_MISMATCH
    assert decision.signal == money.Signal("P1", "refund_currency_mismatch")


# ---- the order's status and fulfilment ------------------------------------------------

@pytest.mark.parametrize(("settlement", "status"), [
    (Settlement(1000, 0, 0), states.PENDING),
    (Settlement(1000, 600, 0), states.PENDING),
    (Settlement(1000, 1000, 0), states.PAID),
    (Settlement(1000, 1000, 300), states.PARTIALLY_REFUNDED),
    (Settlement(1000, 0, 300), states.PARTIALLY_REFUNDED),  # the refund overtook the payment
    (Settlement(1000, 0, 1000), states.REFUNDED),
    (Settlement(1000, 1200, 1200), states.REFUNDED),
    (Settlement(1000, 1200, 1000), states.PARTIALLY_REFUNDED),
])
def test_status_follows_the_facts(settlement, status):
    assert money.status_for(states.PENDING, settlement) == status


@pytest.mark.parametrize(("settlement", "status", "allowed"), [
    (Settlement(1000, 1000, 0), states.PAID, True),
    (Settlement(1000, 1000, 400), states.PARTIALLY_REFUNDED, True),
    (Settlement(1000, 1000, 1000), states.REFUNDED, False),
    (Settlement(1000, 600, 0), states.PENDING, False),
    (Settlement(1000, 1000, 0), states.DISPUTED, False),
])
def test_goods_leave_only_for_covered_orders_not_wholly_refunded(settlement, status, allowed):
    assert money.may_fulfil(settlement, status) is allowed
