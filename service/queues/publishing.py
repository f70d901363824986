"""The one way jobs reach a queue: never past the depth bound, never raising.

A queue at its bound gets nothing more: the caller keeps the work durable in the
database (webhook events stay `received`, other jobs stay in the outbox) and the relay
publishes it once the queue drains. Publishers check depth and then push, so several
publishing at once could overshoot the bound by as many as are publishing; the gate
therefore stops `QUEUE_PUBLISH_HEADROOM` short of `QUEUE_DEPTH_MAX`.
"""

from __future__ import annotations

import logging
import time

import redis
from flask import current_app

from service.queues.depth import depth

log = logging.getLogger(__name__)


def gate(queue: str) -> int:
    """The depth from which nothing more is published to `queue`."""
    cfg = current_app.config
    return max(1, cfg["QUEUE_DEPTH_MAX"] - cfg["QUEUE_PUBLISH_HEADROOM"])


# Per process: the last depth read per queue, when, and how many published since.
_recent: dict[tuple[int, str], list] = {}
_FRESH_SECONDS = 0.1


def room(queue: str) -> int | None:
    """How many jobs may be published to `queue` now; None when the broker is unreachable."""
    client = current_app.extensions["redis"]
    try:
        current = depth(client, queue)
    except redis.RedisError:
        _recent.pop((id(client), queue), None)
        return None
    _recent[(id(client), queue)] = [time.monotonic(), current, 0]
    return max(0, gate(queue) - current)


def _surely_has_room(queue: str) -> bool:
    """True when a depth read a moment ago was far below the gate.

    Saves the depth read on the hot path of a queue that is nowhere near its bound: in
    the tenth of a second a reading is trusted, the queue cannot climb from half the gate
    to the gate (that would take thousands of publishes a second), and what this
    process published since is counted on top.
    """
    seen = _recent.get((id(current_app.extensions["redis"]), queue))
    if seen is None or time.monotonic() - seen[0] > _FRESH_SECONDS:
        return False
    seen[2] += 1
    return seen[1] + seen[2] < gate(queue) // 2


SENT, FULL, BROKER_DOWN = "sent", "full", "broker_down"


def send(task_name: str, args: list, *, queue: str, check_room: bool = True,
         retries: int = 0) -> str:
    """Send a job: SENT, FULL (queue at its bound) or BROKER_DOWN. Never raises."""
    if check_room and not _surely_has_room(queue):
        available = room(queue)
        if available is None:
            log.warning("broker unavailable, job kept for the relay",
                        extra={"queue": queue, "task": task_name})
            return BROKER_DOWN
        if available <= 0:
            log.info("queue at its depth bound, job kept for the relay",
                     extra={"queue": queue, "task": task_name})
            return FULL
    try:
        current_app.extensions["celery"].send_task(task_name, args=args, queue=queue, retry=False,
                                                   retries=retries)
    except Exception as exc:  # any broker failure: the caller keeps the job
        log.warning("broker unavailable, job kept for the relay",
                    extra={"queue": queue, "task": task_name, "error": type(exc).__name__})
        return BROKER_DOWN
    return SENT


def publish(task_name: str, args: list, *, queue: str, check_room: bool = True,
            retries: int = 0) -> bool:
    """Send a job; False when it was not sent (the caller keeps it for the relay)."""
    return send(task_name, args, queue=queue, check_room=check_room, retries=retries) == SENT
