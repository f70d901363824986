"""Celery tasks of the escalation policy (queue `default`).

The base task (`service.celery_app.AppTask`) commits what a run did when it returns:
the evaluation's incidents, notices and outbox jobs together. `deliver` is the exception
and says why.
"""

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
        # Nothing of the failed evaluation stands; the page needs no database.
        try:
            db.session.rollback()
        except Exception:  # the connection is gone: drop it with the session
            db.session.invalidate()
        return outage.page_database_unreachable(error=type(exc).__name__)


@shared_task(name="alerts.deliver", ignore_result=True, acks_late=True)
def deliver(delivery_id: int) -> str:
    """Send one notice through one channel to one recipient; retries go through the outbox.

    `notify.deliver` commits on its own, on purpose: the claim stands before the provider
    is called, no transaction is open during the call, and the attempt is recorded in a
    transaction of its own right after it.
    """
    return notify.deliver(delivery_id).status
