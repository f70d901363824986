"""Errors raised by the orders domain."""


class OrdersError(Exception):
    """Base class for errors of the orders domain."""


class OrderNotFound(OrdersError):
    """No order matches the reference an event carries."""


class InvalidAmount(OrdersError):
    """An amount is negative or not a whole number of cents."""


class ProductNotFound(OrdersError):
    """No product with this id or SKU."""


class CustomerNotFound(OrdersError):
    """No customer with this id."""


class PaymentMethodNotFound(OrdersError):
    """No such payment method for this customer."""


class InvalidChange(OrdersError):
    """A requested change is malformed (zero delta, empty reason, ...)."""


class InsufficientStock(OrdersError):
    """The adjustment would take a product's stock below zero."""


class PaymentMethodConflict(OrdersError):
    """The payment method change contradicts the customer's current methods."""


class IdempotencyConflict(OrdersError):
    """An idempotency key was used before for a different request."""


class RefundNotAllowed(OrdersError):
    """The refund would exceed what was captured minus what is refunded or reserved."""


class RefundInProgress(OrdersError):
    """A refund with this idempotency key is still being processed."""
