"""What other domains may ask of the webhooks domain, without touching its models."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import func, select

from service.extensions import db
from service.webhooks.models import EventStatus, WebhookEvent, WebhookFailure


class WebhookBacklog:
    """The `webhooks` queue's work kept in the inbox, for queue health."""

    def waiting(self) -> int:
        """Stored events no message carries yet (broker down or queue full at intake)."""
        return db.session.scalar(select(func.count()).select_from(WebhookEvent)
                                 .where(WebhookEvent.status == EventStatus.RECEIVED)) or 0

    def failures_since(self, since: datetime) -> int:
        """Failure rows opened or updated since `since`."""
        return db.session.scalar(select(func.count()).select_from(WebhookFailure)
                                 .where(WebhookFailure.updated_at >= since)) or 0
