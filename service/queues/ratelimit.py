"""Global rate limits for jobs, shared by every worker on every host through Redis.

The window itself is kept by the `limits` library (moving window, Redis storage). A job
that finds its window full is not slept on and not dropped: it goes back to the outbox,
due at a slot reserved for it, spaced `period / limit` after the last one reserved, so
a backlog is spread evenly over the windows to come instead of every waiting job waking
at once.

Two parts: `RateLimiter`, the edge that talks to Redis (kept in
`app.extensions["rate_limiter"]`), and `rate_limited`, the task decorator that asks it
and puts a limited job back in the outbox. A domain whose queue is rate limited says so
with `register_rate_limit`: the outbox relay then publishes to that queue no more than
its window allows now (a job published past it would only come back to the outbox), and
queue health shows the window.
"""

from __future__ import annotations

import functools
import logging
import time
from datetime import timedelta

import redis
from celery.exceptions import Ignore
from flask import Flask, current_app
from limits import RateLimitItem, parse
from limits.storage import RedisStorage
from limits.strategies import MovingWindowRateLimiter

from service.clock import utcnow
from service.queues import outbox

log = logging.getLogger(__name__)

_RESERVE = """
local last = tonumber(redis.call('GET', KEYS[1]) or '0')
local earliest = tonumber(ARGV[1])
local interval = tonumber(ARGV[2])
local now = tonumber(ARGV[3])
local keep = tonumber(ARGV[4])
local slot = math.max(earliest, last + interval)
-- Kept until well after the last reserved slot, however far ahead the backlog reaches.
redis.call('SET', KEYS[1], tostring(slot), 'PX', math.ceil((slot - now + keep) * 1000))
return tostring(slot)
"""


_RATE_LIMITS = "queue_rate_limits"


def register_rate_limit(app: Flask, queue: str, *, key: str, setting: str) -> None:
    """Jobs of `queue` run within the global rate `app.config[setting]`, counted as `key`
    (the key its tasks give `rate_limited`)."""
    app.extensions.setdefault(_RATE_LIMITS, {})[queue] = (key, setting)


def rate_limit_of(queue: str) -> tuple[str, str] | None:
    """(limiter key, rate) of a rate-limited queue; None for a queue without a limit."""
    registered = current_app.extensions.get(_RATE_LIMITS, {}).get(queue)
    if registered is None:
        return None
    key, setting = registered
    return key, current_app.config[setting]


class RateLimiter:
    def __init__(self, *, client: redis.Redis, redis_url: str, prefix: str = "racine:ratelimit"):
        self._client = client
        self._prefix = prefix
        self._limiter = MovingWindowRateLimiter(RedisStorage(redis_url, key_prefix=prefix))
        self._reserve = client.register_script(_RESERVE)

    def acquire(self, key: str, rate: str | RateLimitItem) -> float:
        """0.0 when the job may run now (its hit is counted), else seconds until its slot."""
        item = parse(rate) if isinstance(rate, str) else rate
        if self._limiter.hit(item, key):
            return 0.0
        now = time.time()
        stats = self._limiter.get_window_stats(item, key)
        earliest = max(now, float(stats.reset_time))
        interval = item.get_expiry() / item.amount
        slot = float(self._reserve(keys=[f"{self._prefix}:slots:{key}"],
                                   args=[repr(earliest), repr(interval), repr(now),
                                         item.get_expiry()]))
        return max(0.05, slot - now)

    def state(self, key: str, rate: str) -> dict:
        """Hits left in the current window and when it resets, for queue health."""
        item = parse(rate)
        try:
            stats = self._limiter.get_window_stats(item, key)
        except redis.RedisError:
            return {"rate": rate, "remaining": None, "reset_in_seconds": None}
        return {"rate": rate, "remaining": stats.remaining,
                "reset_in_seconds": round(max(0.0, stats.reset_time - time.time()), 1)}


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
