"""The `rate_limited` task decorator: a limited job comes back later, never never."""

from __future__ import annotations

import functools
import logging

from celery.exceptions import Ignore
from flask import current_app

log = logging.getLogger(__name__)

RATE_LIMITED_HEADER = "racine_rate_limited"


def rate_limited(key: str, setting: str):
    """Run the task only within the global rate `app.config[setting]` for `key`.

    A limited run republishes the same job with a countdown to its reserved slot, keeps
    its retry count (a wait is not a failure), and ends the current run as ignored.
    The task must be bound (`bind=True`).
    """
    def decorate(func):
        @functools.wraps(func)
        def run(task, *args, **kwargs):
            limiter = current_app.extensions["rate_limiter"]
            wait = limiter.acquire(key, current_app.config[setting])
            if wait <= 0:
                return func(task, *args, **kwargs)
            request = task.request
            headers = dict(request.headers or {})
            times = int(headers.get(RATE_LIMITED_HEADER) or 0) + 1
            task.apply_async(
                args=args, kwargs=kwargs, countdown=wait, retries=request.retries,
                queue=(request.delivery_info or {}).get("routing_key"),
                headers={RATE_LIMITED_HEADER: times},
            )
            log.info("rate limited, job re-queued", extra={
                "task": task.name, "task_id": request.id, "countdown": round(wait, 2),
                "count": times})
            raise Ignore()
        return run
    return decorate
