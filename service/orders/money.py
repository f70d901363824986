"""Amounts in minor units, as providers write them."""

from decimal import Decimal

# Currencies without minor units (ISO 4217 exponent 0) that PayPal may send.
ZERO_DECIMAL_CURRENCIES = frozenset({"JPY", "HUF", "TWD", "KRW", "CLP", "VND", "ISK"})


def exponent(currency: str) -> int:
    return 0 if currency.upper() in ZERO_DECIMAL_CURRENCIES else 2


def to_decimal_string(amount_cents: int, currency: str) -> str:
    """`1234, "EUR"` -> `"12.34"`; `1234, "JPY"` -> `"1234"`."""
    places = exponent(currency)
    return str((Decimal(amount_cents) / (10 ** places)).quantize(Decimal(1).scaleb(-places)))
