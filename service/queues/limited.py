"""The `rate_limited` task decorator: a limited job comes back later, never never."""

from __future__ import annotations

import functools
import logging
from datetime import timedelta

from celery.exceptions import Ignore
from flask import current_app

from service.db_types import utcnow
from service.queues import outbox

log = logging.getLogger(__name__)


def rate_limited(key: str, setting: str):
    """Run the task only within the global rate `app.config[setting]` for `key`.

    A limited run puts the same job back in the outbox, due at the slot reserved for it,
    with its retry count unchanged (a wait is not a failure), and ends as ignored. The
    job waits in the database, not in a worker's memory: the relay publishes it when it
    is due and its queue has room (the base task commits it as the run ends with Ignore),
    so a backlog of limited jobs counts against nothing
    and survives any worker. The task must be bound and take positional arguments only.
    """
    def decorate(func):
        @functools.wraps(func)
        def run(task, *args, **kwargs):
            if kwargs:
                raise TypeError(f"{task.name}: rate-limited tasks take positional arguments only")
            limiter = current_app.extensions["rate_limiter"]
            wait = limiter.acquire(key, current_app.config[setting])
            if wait <= 0:
                return func(task, *args)
            request = task.request
            outbox.add_jobs([(task.name, list(args))], queue=_queue_of(task),
                            available_at=utcnow() + timedelta(seconds=wait),
                            retries=request.retries or 0)
            log.info("rate limited, job back in the outbox", extra={
                "task": task.name, "task_id": request.id, "countdown": round(wait, 2)})
            raise Ignore()
        return run
    return decorate


def _queue_of(task) -> str:
    delivery = task.request.delivery_info or {}
    return delivery.get("routing_key") or task.queue or "default"
