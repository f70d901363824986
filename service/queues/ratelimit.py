"""Global rate limits for jobs, shared by every worker on every host through Redis.

The window itself is kept by the `limits` library (moving window, Redis storage). A job
that finds its window full is not slept on and not dropped: it is published again with
a countdown to a slot reserved for it, spaced `period / limit` after the last one
reserved, so a backlog is spread evenly over the windows to come instead of every
waiting job waking at once.
"""

from __future__ import annotations

import time

import redis
from limits import RateLimitItem, parse
from limits.storage import RedisStorage
from limits.strategies import MovingWindowRateLimiter

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
