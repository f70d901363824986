"""Celery tasks of the escalation policy (queue `default`)."""

from __future__ import annotations

from celery import shared_task

from service.alerts import incidents, notify, outage
from service.extensions import db


@shared_task(name="alerts.evaluate", ignore_result=True)
def evaluate() -> dict:
    """Beat, every ALERT_EVALUATE_INTERVAL_SECONDS: the rules on the real clock; with the
    database unreachable, a direct P0 page instead."""
    try:
        return incidents.evaluate().as_dict()
    except Exception as exc:
        if not outage.is_database_unreachable(exc):
            raise
        try:
            db.session.rollback()
        except Exception:  # the connection is gone; the session is discarded below anyway
            db.session.invalidate()
        return outage.page_database_unreachable(error=type(exc).__name__)


@shared_task(name="alerts.deliver", ignore_result=True, acks_late=True)
def deliver(delivery_id: int) -> str:
    """Send one notice through one channel to one recipient; retries go through the outbox."""
    return notify.deliver(delivery_id).status
