"""The inbox of provider events and the failures table."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Index, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from service.clock import iso, utcnow
from service.db_types import BigId
from service.extensions import db


class EventStatus:
    """Life of an inbox row; `received` and `queued` are outstanding work."""

    RECEIVED = "received"  # stored, not known to be on the broker
    QUEUED = "queued"  # published to the broker
    PROCESSING = "processing"  # a worker holds the lease
    PROCESSED = "processed"
    IGNORED = "ignored"  # a type no handler is registered for
    FAILED = "failed"  # permanent error or retries exhausted; see webhook_failures

    ALL = (RECEIVED, QUEUED, PROCESSING, PROCESSED, IGNORED, FAILED)
    DONE = (PROCESSED, IGNORED)


class WebhookEvent(db.Model):
    __tablename__ = "webhook_events"
    __table_args__ = (
        UniqueConstraint("provider", "event_id"),
        Index("ix_webhook_events_status_received_at", "status", "received_at"),
        Index("ix_webhook_events_processed_at", "processed_at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    provider: Mapped[str] = mapped_column(String(16))
    event_id: Mapped[str] = mapped_column(String(255))
    event_type: Mapped[str] = mapped_column(String(128))
    payload: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), default=EventStatus.RECEIVED)
    attempts: Mapped[int] = mapped_column(default=0)
    request_id: Mapped[str | None] = mapped_column(String(64))
    received_at: Mapped[datetime] = mapped_column(default=utcnow)
    queued_at: Mapped[datetime | None]
    lease_token: Mapped[str | None] = mapped_column(String(32))
    lease_expires_at: Mapped[datetime | None]
    processed_at: Mapped[datetime | None]
    last_error: Mapped[str | None] = mapped_column(Text)
    # Attempts allowed in all (WEBHOOK_MAX_ATTEMPTS when unset); a manual replay grants
    # a fresh allowance on top of what was spent.
    attempt_limit: Mapped[int | None]
    # When `webhooks purge` removed the payload's personal data.
    redacted_at: Mapped[datetime | None]

    failure: Mapped[WebhookFailure | None] = relationship(back_populates="event")

    def to_dict(self, *, with_payload: bool = False) -> dict:
        data = {
            "id": self.id,
            "provider": self.provider,
            "event_id": self.event_id,
            "event_type": self.event_type,
            "status": self.status,
            "attempts": self.attempts,
            "received_at": iso(self.received_at),
            "queued_at": iso(self.queued_at),
            "processed_at": iso(self.processed_at),
            "last_error": self.last_error,
        }
        if with_payload:
            data["payload"] = self.payload
        return data


class PayPalTransmission(db.Model):
    """Each PayPal transmission id seen, with the SHA-256 of the body it came with.

    PayPal signs only a CRC32 of the body, and CRC32 twins are easy to make: a captured
    transmission replayed with another body is refused for as long as this row lives,
    which is for ever (not only while a cache remembers it).
    """

    __tablename__ = "paypal_transmissions"

    transmission_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    body_sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class WebhookFailure(db.Model):
    """One row per event that failed permanently or ran out of retries."""

    __tablename__ = "webhook_failures"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    event_pk: Mapped[int] = mapped_column(
        ForeignKey("webhook_events.id", ondelete="CASCADE"), unique=True
    )
    provider: Mapped[str] = mapped_column(String(16))
    event_type: Mapped[str] = mapped_column(String(128))
    payload: Mapped[str] = mapped_column(Text)
    error_message: Mapped[str] = mapped_column(Text)
    retry_count: Mapped[int] = mapped_column(default=0)
    last_retry_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    resolved_at: Mapped[datetime | None]

    event: Mapped[WebhookEvent] = relationship(back_populates="failure")

    def to_dict(self) -> dict:
        return {
            "id": self.id,
            "event_pk": self.event_pk,
            "provider": self.provider,
            "event_type": self.event_type,
            "error_message": self.error_message,
            "retry_count": self.retry_count,
            "last_retry_at": iso(self.last_retry_at),
            "created_at": iso(self.created_at),
            "resolved_at": iso(self.resolved_at),
        }
