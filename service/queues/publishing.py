"""The one way jobs reach a queue: never past the depth bound, never raising.

A queue at its bound gets nothing more: the caller keeps the work durable in the
database (webhook events stay `received`, other jobs stay in the outbox) and the relay
publishes it once the queue drains.

A job is pushed by one Lua script that reads the queue's depth and pushes only below
the gate, so the bound holds exactly however many publish at once, and a publish costs
one round trip. The script can set one more key in the same trip (intake marks the
event's de-duplication key `stored` this way). The message is built by Celery and
Kombu (see `message`); workers consume it like any other. The gate stops `QUEUE_PUBLISH_HEADROOM` short of
`QUEUE_DEPTH_MAX`, which leaves room for Celery's own retry messages.
"""

from __future__ import annotations

import logging
import os
import time

import redis
from celery.utils.nodenames import anon_nodename
from flask import current_app
from kombu import serialization
from kombu.entity import PERSISTENT_DELIVERY_MODE
from kombu.transport.redis import Channel as RedisChannel
from kombu.utils import json as kombu_json
from kombu.utils.uuid import uuid

from service.queues.depth import ENQUEUED_AT_HEADER, depth, queue_keys

log = logging.getLogger(__name__)

SENT, FULL, BROKER_DOWN = "sent", "full", "broker_down"

# KEYS: the queue's lists (the first is where a priority-0 message goes), then
# optionally a key to set. ARGV: gate, message, then that key's value and ttl.
_PUSH_BELOW_GATE = """
local lists = #KEYS
if ARGV[3] then
  redis.call('SET', KEYS[lists], ARGV[3], 'EX', ARGV[4])
  lists = lists - 1
end
local depth = 0
for i = 1, lists do
  depth = depth + redis.call('LLEN', KEYS[i])
end
if depth >= tonumber(ARGV[1]) then
  return 0
end
redis.call('LPUSH', KEYS[1], ARGV[2])
return 1
"""

_scripts: dict[int, object] = {}


def gate(queue: str) -> int:
    """The depth from which nothing more is published to `queue`."""
    cfg = current_app.config
    return max(1, cfg["QUEUE_DEPTH_MAX"] - cfg["QUEUE_PUBLISH_HEADROOM"])


def room(queue: str) -> int | None:
    """How many jobs may be published to `queue` now; None when the broker is unreachable."""
    try:
        current = depth(current_app.extensions["redis"], queue)
    except redis.RedisError:
        return None
    return max(0, gate(queue) - current)


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
         also_set: tuple[str, str, int] | None = None) -> str:
    """Push a job unless its queue is at the gate: SENT, FULL or BROKER_DOWN. Never raises.

    `also_set` is (key, value, ttl seconds), set in the same round trip whatever the
    outcome, unless the broker is down.
    """
    client = current_app.extensions["redis"]
    keys = queue_keys(queue)
    argv = [gate(queue), message(task_name, args, queue=queue, retries=retries)]
    if also_set is not None:
        key, value, ttl = also_set
        keys.append(key)
        argv.extend([value, max(1, int(ttl))])
    try:
        pushed = _script(client)(keys=keys, args=argv)
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        log.warning("broker unavailable, job kept for the relay",
                    extra={"queue": queue, "task": task_name, "error": type(exc).__name__})
        return BROKER_DOWN
    except redis.RedisError as exc:  # Redis answered, refusing: not an outage, still kept
        log.error("broker refused the job, kept for the relay",
                  extra={"queue": queue, "task": task_name, "error": str(exc)[:200]})
        return BROKER_DOWN
    if not pushed:
        log.info("queue at its depth bound, job kept for the relay",
                 extra={"queue": queue, "task": task_name})
        return FULL
    return SENT


def publish(task_name: str, args: list, *, queue: str, retries: int = 0) -> bool:
    """Send a job; False when it was not sent (the caller keeps it for the relay)."""
    return send(task_name, args, queue=queue, retries=retries) == SENT


def _script(client: redis.Redis):
    script = _scripts.get(id(client))
    if script is None:
        script = _scripts[id(client)] = client.register_script(_PUSH_BELOW_GATE)
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
