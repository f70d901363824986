"""Order follow-up jobs on the `orders` queue: rate limited, retried, idempotent.

The base task (`service.celery_app.AppTask`) commits what a job did when it returns.
"""

from __future__ import annotations

from celery import shared_task
from flask import current_app
from redis import RedisError
from requests import RequestException
from sqlalchemy.exc import OperationalError

from service.orders import services
from service.queues.ratelimit import rate_limited

_RETRY = {
    "autoretry_for": (OperationalError, RedisError, RequestException, ConnectionError,
                      TimeoutError),
    "retry_backoff": 2,
    "retry_backoff_max": 300,
    "retry_jitter": True,
    "max_retries": 10,
}


@shared_task(bind=True, name="orders.fulfil", acks_late=True, reject_on_worker_lost=True,
             ignore_result=True, **_RETRY)
@rate_limited("orders", "ORDERS_RATE_LIMIT")
def fulfil(self, order_id: int) -> bool:
    """Hand a paid order to fulfilment (once)."""
    return services.request_fulfilment(order_id)


@shared_task(bind=True, name="orders.send_confirmation", acks_late=True,
             reject_on_worker_lost=True, ignore_result=True, **_RETRY)
@rate_limited("orders", "ORDERS_RATE_LIMIT")
def send_confirmation(self, order_id: int) -> bool:
    """Tell the customer their payment arrived (once)."""
    return services.send_order_notification(
        order_id, kind="payment_confirmation", notifier=current_app.extensions["order_notifier"])
