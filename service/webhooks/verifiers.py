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
# Provider events nest a handful of levels; a signed body nested deeper is refused before
# anything (the JSON parser, handlers, the payload redaction) walks it recursively.
DEFAULT_MAX_DEPTH = 32


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


def parse_event(provider: str, text: str, *, type_field: str,
                max_depth: int = DEFAULT_MAX_DEPTH) -> VerifiedEvent:
    """Parse a verified body and check it names an event id and type that can be stored."""
    try:
        data = json.loads(text)
    except RecursionError:
        raise MalformedEvent(f"body is nested deeper than {max_depth} levels") from None
    except ValueError as exc:
        raise MalformedEvent("body is not valid JSON") from exc
    if not isinstance(data, dict):
        raise MalformedEvent("body is not a JSON object")
    if nesting_exceeds(text, data, max_depth):
        raise MalformedEvent(f"body is nested deeper than {max_depth} levels")
    event_id = data.get("id")
    event_type = data.get(type_field)
    if not isinstance(event_id, str) or not event_id.strip():
        raise MalformedEvent("event id is missing")
    if not isinstance(event_type, str) or not event_type.strip():
        raise MalformedEvent(f"event {type_field} is missing")
    if len(event_id) > MAX_EVENT_ID_LENGTH or len(event_type) > MAX_EVENT_TYPE_LENGTH:
        raise MalformedEvent("event id or type is too long")
    if not storable_text(event_id) or not storable_text(event_type):
        raise MalformedEvent("event id or type holds characters that cannot be stored")
    return VerifiedEvent(provider, event_id, event_type, text, data)


def storable_text(value: str) -> bool:
    """True when `value` is printable text that PostgreSQL can store as it is.

    PostgreSQL refuses NUL in text and anything that is not valid UTF-8, such as a lone
    surrogate a JSON escape (`\\ud800`) can produce; other control characters have no
    place in an identifier either. Checked before the INSERT, so such an event is a 400
    rather than a database error the provider would retry for days.
    """
    return value.isprintable()


def nesting_exceeds(text: str, data: object, limit: int) -> bool:
    """Whether the parsed `data` is nested deeper than `limit` containers.

    Counting brackets in the raw text (at C speed) settles almost every body at once: a
    body with no more brackets than the limit cannot nest deeper. Only the rest is walked,
    without recursion.
    """
    if text.count("{") + text.count("[") <= limit:
        return False
    stack = [(data, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return True
        children = node.values() if isinstance(node, dict) else node
        stack.extend((child, depth + 1) for child in children
                     if isinstance(child, dict | list))
    return False


class StripeVerifier:
    """Stripe's own verifier, trying each configured secret so secrets can be rotated."""

    provider = "stripe"

    def __init__(self, *, secrets: list[str], tolerance: int = 300,
                 max_depth: int = DEFAULT_MAX_DEPTH):
        if not secrets:
            raise ValueError("STRIPE_WEBHOOK_SECRET is empty")
        self._secrets = list(secrets)
        self._tolerance = tolerance
        self._max_depth = max_depth

    def verify(self, body: bytes, headers: Mapping[str, str]) -> VerifiedEvent:
        text = decode_body(body)
        header = headers.get("Stripe-Signature")
        if not header:
            raise SignatureError("missing Stripe-Signature header")
        # The stripe package compares signatures with hmac.compare_digest, which raises
        # TypeError on non-ASCII text: such a header is malformed, whatever follows it.
        if not (header.isascii() and header.isprintable()):
            raise SignatureError("malformed Stripe-Signature header")
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
            except (TypeError, ValueError):
                raise SignatureError("malformed Stripe-Signature header") from None
            return parse_event(self.provider, text, type_field="type", max_depth=self._max_depth)
        raise SignatureError(reason)


def _stripe_reason(message: str) -> str:
    lowered = message.lower()
    if "tolerance" in lowered:
        return "timestamp outside the tolerance window"
    if "unable to extract" in lowered:
        return "malformed Stripe-Signature header"
    return "signature does not match"
