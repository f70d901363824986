"""Reading queue depth and age straight from the Redis broker.

Kombu's Redis transport keeps a queue as a list, plus one list per priority step
(`<name><separator><step>`, Kombu's own separator and steps). Messages are pushed on the
left and taken from the right, so the oldest waiting message is at index -1.

A queue's depth counts events, not messages: a message that carries N events (the
webhooks batch job) counts N. So the depth is the sum of the lists plus the queue's
weight counter (`weight_key`), which holds what batch messages carry beyond their one
list entry, from their publish until their task ends (`publishing.release`).
"""

from __future__ import annotations

import json
import time

import redis
from kombu.transport.redis import Channel as RedisChannel

PRIORITY_SEPARATOR = RedisChannel.sep
# Step 0 is the plain list.
PRIORITY_STEPS = tuple(step for step in RedisChannel.priority_steps if step)
ENQUEUED_AT_HEADER = "racine_enqueued_at"


def queue_keys(name: str) -> list[str]:
    return [name, *(f"{name}{PRIORITY_SEPARATOR}{step}" for step in PRIORITY_STEPS)]


def weight_key(name: str) -> str:
    """The counter of events that batch messages of `name` carry beyond one each."""
    return f"racine:queue:weight:{name}"


def depths(client: redis.Redis, names: list[str] | tuple[str, ...]) -> dict[str, int]:
    """Weighted depth of each queue (events waiting or in a running batch), in one round trip."""
    pipe = client.pipeline(transaction=False)
    for name in names:
        for key in queue_keys(name):
            pipe.llen(key)
        pipe.get(weight_key(name))
    counts = pipe.execute()
    per_queue = len(PRIORITY_STEPS) + 2
    result = {}
    for i, name in enumerate(names):
        chunk = counts[i * per_queue:(i + 1) * per_queue]
        result[name] = sum(chunk[:-1]) + max(0, int(chunk[-1] or 0))
    return result


def depth(client: redis.Redis, name: str) -> int:
    return depths(client, [name])[name]


def oldest_wait_seconds(client: redis.Redis, name: str, *, now: float | None = None) -> float | None:
    """Seconds the oldest waiting message has been queued; None when the queue is empty."""
    now = time.time() if now is None else now
    pipe = client.pipeline(transaction=False)
    for key in queue_keys(name):
        pipe.lindex(key, -1)
    oldest = None
    for raw in pipe.execute():
        if raw is None:
            continue
        stamped = _enqueued_at(raw)
        if stamped is not None and (oldest is None or stamped < oldest):
            oldest = stamped
    return None if oldest is None else max(0.0, now - oldest)


def _enqueued_at(raw: bytes) -> float | None:
    try:
        headers = json.loads(raw).get("headers") or {}
        return float(headers[ENQUEUED_AT_HEADER])
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
