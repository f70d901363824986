"""Errors raised while taking in and processing provider events."""


class WebhookError(Exception):
    """Base class for errors of the webhooks domain."""


class RejectedDelivery(WebhookError):
    """A delivery the endpoint refuses; `reason` is safe to return and log."""

    status_code = 400
    code = "rejected"
    retry_after: int | None = None

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class SignatureError(RejectedDelivery):
    """The signature is missing, malformed, stale, or does not match."""

    code = "bad_signature"


class MalformedEvent(RejectedDelivery):
    """The body is not JSON, or lacks the event id or type."""

    code = "malformed_event"


class VerificationUnavailable(RejectedDelivery):
    """The delivery could not be checked now (a certificate host down, the transmission
    log unreachable): 503, so the provider delivers it again later."""

    status_code = 503
    code = "verification_unavailable"
    retry_after = 30


class StorageUnavailable(WebhookError):
    """The database could not store the event; the provider must deliver it again."""


class ProcessingError(WebhookError):
    """Base class for errors raised while a worker applies an event."""


class TransientError(ProcessingError):
    """May succeed later (a lock, a lost connection): retried with backoff."""


class PermanentError(ProcessingError):
    """Will fail again however often it is tried: goes straight to the failures table."""


class OrderNotYetKnown(TransientError):
    """The event names an order that does not exist yet: tried again a few times
    (ORDER_WAIT_RETRIES), as the order's own commit may still be in flight."""
