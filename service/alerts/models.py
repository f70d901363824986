"""Signals, the conditions the rules track, incidents, and the notices sent about them.

- `alert_signals`: symptoms raised by any domain; the evaluation consumes them and links
  each to the incident it was folded into.
- `alert_conditions`: one row per rule key while its condition holds or has just cleared,
  so a condition must hold (or stay clear) for a while before an incident opens (or
  resolves): the flap damping.
- `incidents`: at most one unresolved row per key (a partial unique index).
- `alert_notifications`: one message about an incident (opened, repeat, escalated,
  resolved, test); `alert_deliveries`: one per channel and recipient; and
  `alert_delivery_attempts`: every send and its outcome.
"""

from __future__ import annotations

import json
from datetime import datetime

from sqlalchemy import ForeignKey, Index, String, Text, text
from sqlalchemy.orm import Mapped, mapped_column

from service.clock import iso, utcnow
from service.db_types import BigId
from service.extensions import db

SEVERITIES = ("P0", "P1", "P2", "P3")


class AlertSignal(db.Model):
    __tablename__ = "alert_signals"
    __table_args__ = (Index("ix_alert_signals_consumed_at_created_at", "consumed_at", "created_at"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    severity: Mapped[str] = mapped_column(String(4))  # P0 .. P3
    kind: Mapped[str] = mapped_column(String(64), index=True)  # e.g. slow_job, webhook_failure
    source: Mapped[str] = mapped_column(String(255))  # what raised it: a task name, an event
    details: Mapped[str] = mapped_column(Text, default="{}")  # JSON, no personal data
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    consumed_at: Mapped[datetime | None]
    incident_id: Mapped[int | None] = mapped_column(
        BigId, ForeignKey("incidents.id", ondelete="SET NULL"), index=True)

    def to_dict(self) -> dict:
        return {"id": self.id, "severity": self.severity, "kind": self.kind,
                "source": self.source, "details": self.details,
                "created_at": iso(self.created_at), "consumed_at": iso(self.consumed_at),
                "incident_id": self.incident_id}


class IncidentStatus:
    OPEN = "open"
    ACKNOWLEDGED = "acknowledged"
    RESOLVED = "resolved"

    ALL = (OPEN, ACKNOWLEDGED, RESOLVED)
    ACTIVE = (OPEN, ACKNOWLEDGED)


class AlertCondition(db.Model):
    """What a rule saw for one key, kept between evaluations."""

    __tablename__ = "alert_conditions"

    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    rule: Mapped[str] = mapped_column(String(64), index=True)
    severity: Mapped[str] = mapped_column(String(4))
    firing_since: Mapped[datetime | None]  # None while clear
    last_firing_at: Mapped[datetime | None]
    clear_since: Mapped[datetime | None]  # None while firing
    details: Mapped[str] = mapped_column(Text, default="{}")
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class Incident(db.Model):
    __tablename__ = "incidents"
    __table_args__ = (
        # One unresolved incident per key, enforced by the database itself.
        Index("uq_incidents_active_key", "key", unique=True,
              postgresql_where=text("status <> 'resolved'"),
              sqlite_where=text("status <> 'resolved'")),
        Index("ix_incidents_status_severity", "status", "severity"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    key: Mapped[str] = mapped_column(String(255))  # rule + subject
    rule: Mapped[str] = mapped_column(String(64))
    subject: Mapped[str] = mapped_column(String(128), default="")
    severity: Mapped[str] = mapped_column(String(4))
    title: Mapped[str] = mapped_column(String(255))
    details: Mapped[str] = mapped_column(Text, default="{}")  # the figures, JSON
    runbook: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), default=IncidentStatus.OPEN)
    condition_since: Mapped[datetime]  # when the condition was first seen holding
    opened_at: Mapped[datetime] = mapped_column(index=True)
    last_seen_at: Mapped[datetime]
    occurrences: Mapped[int] = mapped_column(default=1)  # evaluations that saw it
    signal_count: Mapped[int] = mapped_column(default=0)  # signals folded into it
    cleared_at: Mapped[datetime | None]  # the condition stopped holding (resolution pending)
    escalation_level: Mapped[int] = mapped_column(default=0)
    escalated_at: Mapped[datetime | None]
    last_notified_at: Mapped[datetime | None]
    notified_count: Mapped[int] = mapped_column(default=0)
    acknowledged_at: Mapped[datetime | None]
    acknowledged_by: Mapped[str | None] = mapped_column(String(128))
    acknowledge_reason: Mapped[str | None] = mapped_column(String(500))
    resolved_at: Mapped[datetime | None]
    resolved_by: Mapped[str | None] = mapped_column(String(128))
    resolve_reason: Mapped[str | None] = mapped_column(String(500))

    @property
    def figures(self) -> dict:
        return json.loads(self.details or "{}")

    def to_dict(self) -> dict:
        return {
            "id": self.id, "key": self.key, "rule": self.rule, "subject": self.subject,
            "severity": self.severity, "title": self.title, "details": self.figures,
            "runbook": self.runbook, "status": self.status,
            "condition_since": iso(self.condition_since), "opened_at": iso(self.opened_at),
            "last_seen_at": iso(self.last_seen_at), "occurrences": self.occurrences,
            "signal_count": self.signal_count, "cleared_at": iso(self.cleared_at),
            "escalation_level": self.escalation_level, "escalated_at": iso(self.escalated_at),
            "last_notified_at": iso(self.last_notified_at),
            "notified_count": self.notified_count,
            "acknowledged_at": iso(self.acknowledged_at), "acknowledged_by": self.acknowledged_by,
            "acknowledge_reason": self.acknowledge_reason,
            "resolved_at": iso(self.resolved_at), "resolved_by": self.resolved_by,
            "resolve_reason": self.resolve_reason,
        }


class AlertNotification(db.Model):
    """One message about an incident, sent through every channel its severity uses."""

    __tablename__ = "alert_notifications"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    incident_id: Mapped[int | None] = mapped_column(
        BigId, ForeignKey("incidents.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(16))  # opened, repeat, escalated, resolved, test
    severity: Mapped[str] = mapped_column(String(4))
    level: Mapped[int] = mapped_column(default=0)  # escalation level it went to
    title: Mapped[str] = mapped_column(String(255))
    body: Mapped[str] = mapped_column(Text)  # Slack and e-mail
    short_body: Mapped[str] = mapped_column(Text)  # SMS
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    def to_dict(self) -> dict:
        return {"id": self.id, "incident_id": self.incident_id, "kind": self.kind,
                "severity": self.severity, "level": self.level, "title": self.title,
                "created_at": iso(self.created_at)}


class DeliveryStatus:
    PENDING = "pending"
    SENDING = "sending"
    RETRYING = "retrying"
    SENT = "sent"
    FAILED = "failed"  # attempts exhausted

    ALL = (PENDING, SENDING, RETRYING, SENT, FAILED)


class AlertDelivery(db.Model):
    """A notification through one channel to one recipient (Slack: the webhook's channel)."""

    __tablename__ = "alert_deliveries"
    __table_args__ = (Index("ix_alert_deliveries_status_next_attempt_at", "status",
                            "next_attempt_at"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    notification_id: Mapped[int] = mapped_column(
        BigId, ForeignKey("alert_notifications.id", ondelete="CASCADE"), index=True)
    channel: Mapped[str] = mapped_column(String(16))  # slack, email, sms
    target: Mapped[str] = mapped_column(String(255), default="")  # address or phone; "" for Slack
    status: Mapped[str] = mapped_column(String(16), default=DeliveryStatus.PENDING)
    attempts: Mapped[int] = mapped_column(default=0)
    last_error: Mapped[str | None] = mapped_column(String(500))
    next_attempt_at: Mapped[datetime] = mapped_column(default=utcnow)
    lease_until: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    sent_at: Mapped[datetime | None]

    def to_dict(self) -> dict:
        return {"id": self.id, "notification_id": self.notification_id,
                "channel": self.channel, "target": self.target, "status": self.status,
                "attempts": self.attempts, "last_error": self.last_error,
                "next_attempt_at": iso(self.next_attempt_at), "created_at": iso(self.created_at),
                "sent_at": iso(self.sent_at)}


class AlertDeliveryAttempt(db.Model):
    """One send through a channel, and what came of it."""

    __tablename__ = "alert_delivery_attempts"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    delivery_id: Mapped[int] = mapped_column(
        BigId, ForeignKey("alert_deliveries.id", ondelete="CASCADE"), index=True)
    attempt: Mapped[int]
    started_at: Mapped[datetime]
    finished_at: Mapped[datetime]
    outcome: Mapped[str] = mapped_column(String(16))  # sent, failed
    error: Mapped[str | None] = mapped_column(String(500))

    def to_dict(self) -> dict:
        return {"attempt": self.attempt, "started_at": iso(self.started_at),
                "finished_at": iso(self.finished_at), "outcome": self.outcome,
                "error": self.error}
