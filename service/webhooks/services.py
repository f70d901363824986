"""What other domains may ask of the webhooks domain, without touching its models."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import func, select

from service.alerts.services import Flow, Outcomes
from service.extensions import db
from service.webhooks.models import EventStatus, WebhookEvent, WebhookFailure

OUTSTANDING = (EventStatus.RECEIVED, EventStatus.QUEUED, EventStatus.PROCESSING)
SUCCEEDED = EventStatus.DONE  # processed, or a type no handler takes


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


class WebhookPaymentEvents:
    """Figures about payment events for the escalation policy's rules, report and metrics.

    Every webhook this service takes is a payment provider's event, so "payment events"
    are all stored webhook events.
    """

    def flow(self, *, now: datetime, window: timedelta) -> Flow:
        since = now - window
        arrived = db.session.scalar(select(func.count()).select_from(WebhookEvent).where(
            WebhookEvent.received_at > since, WebhookEvent.received_at <= now)) or 0
        finished = db.session.scalar(select(func.count()).select_from(WebhookEvent).where(
            WebhookEvent.status.in_(SUCCEEDED), WebhookEvent.processed_at > since,
            WebhookEvent.processed_at <= now)) or 0
        outstanding, oldest = db.session.execute(
            select(func.count(), func.min(WebhookEvent.received_at))
            .where(WebhookEvent.status.in_(OUTSTANDING), WebhookEvent.received_at <= now)).one()
        last_finished = db.session.scalar(select(func.max(WebhookEvent.processed_at)).where(
            WebhookEvent.status.in_(SUCCEEDED), WebhookEvent.processed_at <= now))
        return Flow(arrived=arrived, finished=finished, outstanding=outstanding or 0,
                    oldest_outstanding_at=oldest, last_finished_at=last_finished)

    def latest_outcomes(self, count: int, *, now: datetime) -> list[tuple[int, bool, datetime]]:
        rows = db.session.execute(
            select(WebhookEvent.id, WebhookEvent.status, WebhookEvent.received_at)
            .where(WebhookEvent.status.in_((EventStatus.PROCESSED, EventStatus.FAILED)),
                   WebhookEvent.received_at <= now)
            .order_by(WebhookEvent.id.desc()).limit(count)).all()
        return [(pk, status == EventStatus.FAILED, received) for pk, status, received in rows]

    def last_stored_at(self, *, now: datetime) -> datetime | None:
        return db.session.scalar(select(func.max(WebhookEvent.received_at))
                                 .where(WebhookEvent.received_at <= now))

    def outcomes(self, *, since: datetime, until: datetime) -> Outcomes:
        counts = dict(db.session.execute(
            select(WebhookEvent.status, func.count())
            .where(WebhookEvent.received_at > since, WebhookEvent.received_at <= until)
            .group_by(WebhookEvent.status)).all())
        return Outcomes(succeeded=sum(counts.get(s, 0) for s in SUCCEEDED),
                        failed=counts.get(EventStatus.FAILED, 0),
                        outstanding=sum(counts.get(s, 0) for s in OUTSTANDING))
