"""Provider signature verification: the only code that decides whether a body is genuine."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

import stripe

from service.webhooks.exceptions import MalformedEvent, SignatureError

MAX_EVENT_ID_LENGTH = 255
MAX_EVENT_TYPE_LENGTH = 128


@dataclass(frozen=True)
class VerifiedEvent:
    """A genuine provider event: its id, its type, the raw body and the parsed body."""

    provider: str
    event_id: str
    event_type: str
    body: str
    data: dict


class Verifier(Protocol):
    provider: str

    def verify(self, body: bytes, headers: Mapping[str, str]) -> VerifiedEvent:
        """Return the verified event or raise SignatureError / MalformedEvent."""


def decode_body(body: bytes) -> str:
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MalformedEvent("body is not UTF-8") from exc


def parse_event(provider: str, text: str, *, type_field: str) -> VerifiedEvent:
    """Parse a verified body and check it names an event id and type."""
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise MalformedEvent("body is not valid JSON") from exc
    if not isinstance(data, dict):
        raise MalformedEvent("body is not a JSON object")
    event_id = data.get("id")
    event_type = data.get(type_field)
    if not isinstance(event_id, str) or not event_id.strip():
        raise MalformedEvent("event id is missing")
    if not isinstance(event_type, str) or not event_type.strip():
        raise MalformedEvent(f"event {type_field} is missing")
    if len(event_id) > MAX_EVENT_ID_LENGTH or len(event_type) > MAX_EVENT_TYPE_LENGTH:
        raise MalformedEvent("event id or type is too long")
    return VerifiedEvent(provider, event_id, event_type, text, data)


class StripeVerifier:
    """Stripe's own verifier, trying each configured secret so secrets can be rotated."""

    provider = "stripe"

    def __init__(self, *, secrets: list[str], tolerance: int = 300):
        if not secrets:
            raise ValueError("STRIPE_WEBHOOK_SECRET is empty")
        self._secrets = list(secrets)
        self._tolerance = tolerance

    def verify(self, body: bytes, headers: Mapping[str, str]) -> VerifiedEvent:
        text = decode_body(body)
        header = headers.get("Stripe-Signature")
        if not header:
            raise SignatureError("missing Stripe-Signature header")
        reason = "signature does not match"
        for secret in self._secrets:
            try:
                stripe.WebhookSignature.verify_header(text, header, secret, self._tolerance)
            except stripe.SignatureVerificationError as exc:
                reason = _stripe_reason(str(exc))
                if reason != "signature does not match":
                    # A stale or malformed header fails the same way under every secret.
                    break
                continue
            return parse_event(self.provider, text, type_field="type")
        raise SignatureError(reason)


def _stripe_reason(message: str) -> str:
    lowered = message.lower()
    if "tolerance" in lowered:
        return "timestamp outside the tolerance window"
    if "unable to extract" in lowered:
        return "malformed Stripe-Signature header"
    return "signature does not match"
