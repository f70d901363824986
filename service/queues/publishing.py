"""The one way jobs reach a queue: never past the depth bound, never raising.

A queue at its bound gets nothing more: the caller keeps the work durable in the
database (webhook events stay `received`, other jobs stay in the outbox) and the relay
publishes it once the queue drains.

Jobs are pushed by one Lua script that reads the queue's depth and pushes only below the
gate, so the bound holds exactly however many publish at once, and a publish costs one
round trip. The depth is weighted (`depth.depths`): a message carrying N events (the
webhooks batch job) counts N, through the queue's weight counter, from its publish until
its task calls `release`. `send_batch` pushes several messages in the same call, as many
as fit, in order. The script can set one more key in the same trip (intake marks the
event's de-duplication key `stored` this way). The message is built by Celery and Kombu
(see `message`); workers consume it like any other. The gate stops
`QUEUE_PUBLISH_HEADROOM` short of `QUEUE_DEPTH_MAX`, which leaves room for Celery's own
retry messages; `below=` asks for a lower mark (intake publishes directly only while the
queue is nearly empty).
"""

from __future__ import annotations

import logging
import os
import time
from typing import NamedTuple

import redis
from celery.utils.nodenames import anon_nodename
from flask import current_app
from kombu import serialization
from kombu.entity import PERSISTENT_DELIVERY_MODE
from kombu.transport.redis import Channel as RedisChannel
from kombu.utils import json as kombu_json
from kombu.utils.uuid import uuid

from service.queues.depth import ENQUEUED_AT_HEADER, depth, queue_keys, weight_key

log = logging.getLogger(__name__)

SENT, FULL, BROKER_DOWN = "sent", "full", "broker_down"

# A weight counter left by a task that never released (its message lost with the broker's
# data) goes when the queue has seen no batch publish for this long.
WEIGHT_TTL_SECONDS = 3600

# KEYS: the queue's lists (the first is where a priority-0 message goes), its weight
# counter, then optionally a key to set. ARGV: gate, number of lists, number of
# messages, the weight counter's ttl, then each message and its weight, then optionally
# that key's value and ttl. Pushes messages in order while the weighted depth stays
# within the gate; returns how many it pushed.
_PUSH_BELOW_GATE = """
local lists = tonumber(ARGV[2])
local count = tonumber(ARGV[3])
local tail = 4 + 2 * count
if ARGV[tail + 1] then
  redis.call('SET', KEYS[lists + 2], ARGV[tail + 1], 'EX', ARGV[tail + 2])
end
local depth = math.max(0, tonumber(redis.call('GET', KEYS[lists + 1]) or '0'))
for i = 1, lists do
  depth = depth + redis.call('LLEN', KEYS[i])
end
local gate = tonumber(ARGV[1])
local pushed = 0
local extra = 0
for n = 1, count do
  local weight = tonumber(ARGV[4 + 2 * n])
  if depth + weight > gate then
    break
  end
  redis.call('LPUSH', KEYS[1], ARGV[3 + 2 * n])
  depth = depth + weight
  extra = extra + weight - 1
  pushed = pushed + 1
end
if extra > 0 then
  redis.call('INCRBY', KEYS[lists + 1], extra)
  redis.call('EXPIRE', KEYS[lists + 1], ARGV[4])
end
return pushed
"""
_RELEASE = """
local left = redis.call('DECRBY', KEYS[1], ARGV[1])
if left <= 0 then
  redis.call('DEL', KEYS[1])
end
return left
"""


class Job(NamedTuple):
    """A task message to publish, and how many events it carries (its weight)."""

    task_name: str
    args: list
    weight: int = 1
    retries: int = 0


_scripts: dict[tuple[int, str], object] = {}


def gate(queue: str, below: int | None = None) -> int:
    """The depth from which nothing more is published to `queue` (or `below`, if lower)."""
    cfg = current_app.config
    limit = max(1, cfg["QUEUE_DEPTH_MAX"] - cfg["QUEUE_PUBLISH_HEADROOM"])
    return limit if below is None else max(0, min(limit, below))


def room(queue: str, below: int | None = None) -> int | None:
    """How many events may be published to `queue` now; None when the broker is unreachable."""
    try:
        current = depth(current_app.extensions["redis"], queue)
    except redis.RedisError:
        return None
    return max(0, gate(queue, below) - current)


def message(task_name: str, args: list, *, queue: str, retries: int = 0) -> str:
    """A task message for `task_name(*args)`, stored as Kombu's Redis transport stores it.

    Celery builds the message itself (`app.amqp.create_task_message`: protocol 2 headers,
    properties and body) and Kombu serialises the body; what is added here is the
    envelope Kombu's virtual transport wraps it in on publish (`prepare_message`, then
    the base64 body and delivery info), with the enqueue stamp queue health reads. The
    contract test publishes one task this way and through Celery's own `send_task`, and
    checks that the two are the same shape and that a worker consumes both.
    """
    celery = current_app.extensions["celery"]
    task_id = uuid()
    headers, properties, body, _ = celery.amqp.create_task_message(
        task_id, task_name, args, {}, retries=retries, argsrepr=repr(args)[:1024],
        kwargsrepr="{}", origin=_origin(), ignore_result=None)
    content_type, content_encoding, data = serialization.dumps(
        body, serializer=celery.conf.task_serializer)
    headers[ENQUEUED_AT_HEADER] = time.time()
    properties.update(
        delivery_mode=PERSISTENT_DELIVERY_MODE, priority=RedisChannel.default_priority,
        delivery_info={"exchange": "", "routing_key": queue},
        body_encoding=RedisChannel.body_encoding, delivery_tag=uuid(),
    )
    return kombu_json.dumps({
        "body": RedisChannel.codecs[RedisChannel.body_encoding].encode(data),
        "content-encoding": content_encoding,
        "content-type": content_type,
        "headers": headers,
        "properties": properties,
    })


def send(task_name: str, args: list, *, queue: str, retries: int = 0,
         also_set: tuple[str, str, int] | None = None, below: int | None = None) -> str:
    """Push a job unless its queue is at the gate: SENT, FULL or BROKER_DOWN. Never raises.

    `also_set` is (key, value, ttl seconds), set in the same round trip whatever the
    outcome, unless the broker is down. `below`: publish only while the depth is under
    this lower mark.
    """
    return _push([Job(task_name, args, 1, retries)], queue=queue, also_set=also_set,
                 below=below)[1]


def send_batch(jobs: list[Job], *, queue: str, below: int | None = None) -> int | None:
    """Push `jobs` in order, in one round trip, as many as fit under the gate.

    How many were pushed (a prefix of `jobs`), or None when the broker is unreachable.
    Never raises. Each job counts its weight in the queue's depth until its task calls
    `release(queue, weight)`.
    """
    if not jobs:
        return 0
    sent, outcome = _push(jobs, queue=queue, below=below)
    return None if outcome == BROKER_DOWN else sent


def release(queue: str, weight: int) -> None:
    """A batch job of `weight` events is done (or given up): its weight leaves the depth.

    Called once per message when its task ends, whatever the outcome. Never raises: should
    the broker be unreachable, the counter keeps the weight, which lowers the room left
    (the bound still holds) until the counter expires with no batch published.
    """
    if weight <= 1:
        return
    client = current_app.extensions["redis"]
    try:
        _script(client, _RELEASE)(keys=[weight_key(queue)], args=[weight - 1])
    except redis.RedisError as exc:
        log.warning("queue weight not released", extra={"queue": queue,
                                                        "error": type(exc).__name__})


def _push(jobs: list[Job], *, queue: str, also_set: tuple[str, str, int] | None = None,
          below: int | None = None) -> tuple[int, str]:
    client = current_app.extensions["redis"]
    lists = queue_keys(queue)
    keys = [*lists, weight_key(queue)]
    argv: list = [gate(queue, below), len(lists), len(jobs), WEIGHT_TTL_SECONDS]
    for job in jobs:
        argv.extend([message(job.task_name, job.args, queue=queue, retries=job.retries),
                     max(1, int(job.weight))])
    if also_set is not None:
        key, value, ttl = also_set
        keys.append(key)
        argv.extend([value, max(1, int(ttl))])
    try:
        pushed = int(_script(client, _PUSH_BELOW_GATE)(keys=keys, args=argv))
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        log.warning("broker unavailable, job kept for the relay",
                    extra={"queue": queue, "task": jobs[0].task_name,
                           "error": type(exc).__name__})
        return 0, BROKER_DOWN
    except redis.RedisError as exc:  # Redis answered, refusing: not an outage, still kept
        log.error("broker refused the job, kept for the relay",
                  extra={"queue": queue, "task": jobs[0].task_name, "error": str(exc)[:200]})
        return 0, BROKER_DOWN
    if pushed < len(jobs):
        log.info("queue at its depth bound, job kept for the relay",
                 extra={"queue": queue, "task": jobs[0].task_name})
        return pushed, FULL
    return pushed, SENT


def publish(task_name: str, args: list, *, queue: str, retries: int = 0) -> bool:
    """Send a job; False when it was not sent (the caller keeps it for the relay)."""
    return send(task_name, args, queue=queue, retries=retries) == SENT


def _script(client: redis.Redis, source: str):
    script = _scripts.get((id(client), source))
    if script is None:
        script = _scripts[(id(client), source)] = client.register_script(source)
    return script


_origins: dict[int, str] = {}


def _origin() -> str:
    """Celery's name for a publisher that is not a worker (`gen<pid>@<host>`), once per
    process: it asks the system for the host name each time."""
    pid = os.getpid()
    origin = _origins.get(pid)
    if origin is None:
        origin = _origins[pid] = anon_nodename()
    return origin
