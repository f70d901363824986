"""Celery tasks of the escalation policy (queue `default`)."""

from __future__ import annotations

from celery import shared_task

from service.alerts import incidents, notify


@shared_task(name="alerts.evaluate", ignore_result=True)
def evaluate() -> dict:
    """Beat, every ALERT_EVALUATE_INTERVAL_SECONDS: the rules on the real clock."""
    return incidents.evaluate().as_dict()


@shared_task(name="alerts.deliver", ignore_result=True, acks_late=True)
def deliver(delivery_id: int) -> str:
    """Send one notice through one channel to one recipient; retries go through the outbox."""
    return notify.deliver(delivery_id).status
