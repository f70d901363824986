"""Worker hooks (receivers of Celery's own signals): enqueue stamps, throughput counts,
consumers, slow jobs. ("Signal" alone, in this service, means an alert signal.)

Connected once per app by `connect(app)`. Everything here is best effort: a failure
to count or record must never fail the job itself.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from datetime import timedelta

from celery import signals
from flask import Flask

from service.clock import utcnow
from service.counting import BufferedCounts
from service.extensions import db
from service.queues.depth import ENQUEUED_AT_HEADER
from service.queues.slowjobs import record_if_slow, threshold_for

log = logging.getLogger(__name__)

DONE_KEY = "racine:queue:done:{queue}:{minute}"
FAILED_KEY = "racine:queue:failed:{queue}:{minute}"
CONSUMERS_KEY = "racine:queue:consumers:{queue}"
HEARTBEAT_SECONDS = 10

_started: dict[str, float] = {}
_announced: list[tuple[str, list[str]]] = []


def connect(app: Flask) -> None:
    client = app.extensions["redis"]
    _counts.every = app.config["METRICS_FLUSH_SECONDS"]

    @signals.before_task_publish.connect(weak=False)
    def _stamp(headers=None, **_kwargs):
        if headers is not None and ENQUEUED_AT_HEADER not in headers:
            headers[ENQUEUED_AT_HEADER] = time.time()

    @signals.task_prerun.connect(weak=False)
    def _start(task_id=None, **_kwargs):
        _started[task_id] = time.monotonic()

    @signals.task_postrun.connect(weak=False)
    def _finish(task_id=None, task=None, args=None, kwargs=None, state=None, **_kwargs):
        began = _started.pop(task_id, None)
        if began is None or task is None:
            return
        runtime = time.monotonic() - began
        queue = _queue_of(task)
        if state not in ("RETRY", "IGNORED"):  # not retries, nor jobs a rate limit put back
            _count(client, DONE_KEY, queue)
        if runtime <= threshold_for(task, app.config):
            return
        try:
            with app.app_context():
                record_if_slow(task=task, task_id=task_id, queue=queue,
                               worker=task.request.hostname,
                               started_at=utcnow() - timedelta(seconds=runtime),
                               runtime=runtime, args=args, kwargs=kwargs)
                # After the task's own transaction: a hook of its own, committed here.
                db.session.commit()
        except Exception as exc:
            log.warning("slow job not recorded", extra={"task": task.name,
                                                        "error": type(exc).__name__})

    @signals.task_failure.connect(weak=False)
    def _failed(sender=None, **_kwargs):
        if sender is not None:
            _count(client, FAILED_KEY, _queue_of(sender))

    @signals.worker_ready.connect(weak=False)
    def _announce(sender=None, **_kwargs):
        consumer = sender
        try:
            queues = [q.name for q in consumer.task_consumer.queues]
        except AttributeError:
            return
        hostname = getattr(consumer, "hostname", None) or socket.gethostname()
        thread = threading.Thread(target=_heartbeat, args=(client, hostname, queues),
                                  name="racine-queue-heartbeat", daemon=True)
        thread.start()
        _announced[:] = [(hostname, queues)]

    @signals.worker_shutdown.connect(weak=False)
    def _withdraw(**_kwargs):
        for hostname, queues in _announced:
            try:
                for queue in queues:
                    client.zrem(CONSUMERS_KEY.format(queue=queue), hostname)
            except Exception:
                pass


def _queue_of(task) -> str:
    delivery = getattr(task.request, "delivery_info", None) or {}
    return delivery.get("routing_key") or "unknown"


def _add_with_expiry(pipe, key: str, amount: int) -> None:
    pipe.incrby(key, amount)
    pipe.expire(key, 2 * 3600)


# A task costs no round trip for its count (see `service.counting`).
_counts = BufferedCounts(_add_with_expiry, timer=True, name="racine-queue-counts")


def _count(client, key_format: str, queue: str) -> None:
    key = key_format.format(queue=queue, minute=int(time.time() // 60))
    _counts.add(key, 1, lambda: client)


def _heartbeat(client, hostname: str, queues: list[str]) -> None:
    """Say which queues this worker consumes, so queue health can count consumers."""
    while True:
        try:
            now = time.time()
            pipe = client.pipeline(transaction=False)
            for queue in queues:
                key = CONSUMERS_KEY.format(queue=queue)
                pipe.zadd(key, {hostname: now})
                pipe.zremrangebyscore(key, 0, now - 3 * HEARTBEAT_SECONDS)
            pipe.execute()
        except Exception:
            pass
        time.sleep(HEARTBEAT_SECONDS)
