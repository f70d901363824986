"""Errors raised by the orders domain."""


class OrdersError(Exception):
    """Base class for errors of the orders domain."""


class OrderNotFound(OrdersError):
    """No order matches the reference an event carries."""


class InvalidAmount(OrdersError):
    """An amount is negative or not a whole number of cents."""
