"""Figures about the flow of provider events, for the escalation policy and its report.

Every webhook this service takes is a payment provider's event, so "payment events" here
are all stored webhook events. Each function reads with indexed queries and takes `now`
from the caller, so the rules can be evaluated on a controlled clock.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, select

from service.extensions import db
from service.webhooks.models import EventStatus, WebhookEvent

OUTSTANDING = (EventStatus.RECEIVED, EventStatus.QUEUED, EventStatus.PROCESSING)
SUCCEEDED = EventStatus.DONE  # processed, or a type no handler takes


@dataclass(frozen=True)
class Flow:
    """Arrivals and completions in a window, and the work still waiting."""

    arrived: int
    finished: int
    outstanding: int
    oldest_outstanding_at: datetime | None
    last_finished_at: datetime | None


def flow(*, now: datetime, window: timedelta) -> Flow:
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


def latest_outcomes(count: int, *, now: datetime) -> list[tuple[int, str, datetime]]:
    """The last `count` events to reach processed or failed: (id, status, received_at).

    Ignored events (types no handler takes) say nothing about payment processing and
    are left out.
    """
    rows = db.session.execute(
        select(WebhookEvent.id, WebhookEvent.status, WebhookEvent.received_at)
        .where(WebhookEvent.status.in_((EventStatus.PROCESSED, EventStatus.FAILED)),
               WebhookEvent.received_at <= now)
        .order_by(WebhookEvent.id.desc()).limit(count)).all()
    return [tuple(row) for row in rows]


def last_stored_at(*, now: datetime) -> datetime | None:
    """When the intake last stored an event (at or before `now`)."""
    return db.session.scalar(select(func.max(WebhookEvent.received_at))
                             .where(WebhookEvent.received_at <= now))


@dataclass(frozen=True)
class Outcomes:
    """Events received in a period, by how they ended."""

    succeeded: int
    failed: int
    outstanding: int

    @property
    def finished(self) -> int:
        return self.succeeded + self.failed

    @property
    def success_ratio(self) -> float | None:
        return None if not self.finished else self.succeeded / self.finished


def outcomes(*, since: datetime, until: datetime) -> Outcomes:
    counts = dict(db.session.execute(
        select(WebhookEvent.status, func.count())
        .where(WebhookEvent.received_at > since, WebhookEvent.received_at <= until)
        .group_by(WebhookEvent.status)).all())
    return Outcomes(succeeded=sum(counts.get(s, 0) for s in SUCCEEDED),
                    failed=counts.get(EventStatus.FAILED, 0),
                    outstanding=sum(counts.get(s, 0) for s in OUTSTANDING))

