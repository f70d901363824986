"""Test-only handlers and tasks for the queue-protection tests.

Loaded by workers through WEBHOOK_HANDLER_MODULES
("tests.support.test_handlers,tests.support.queue_handlers"): importing the module at app
creation registers the handler and the `shared_task`s with the worker's Celery app.
"""

from __future__ import annotations

import time

from celery import shared_task
from flask import current_app

from service.webhooks.handlers import handles

HANDLED_KEY = "test:handled"


@handles("stripe", "test.counted")
def counted(event: dict, source: str):
    """Count each run of the handler per event id, so a second run shows up as a 2."""
    current_app.extensions["redis"].hincrby(HANDLED_KEY, event["id"], 1)


@shared_task(name="tests.sleep", ignore_result=True)
def sleep(seconds: float, *_ids, **_details) -> float:
    """Sleep `seconds`; the other arguments only feed the slow-job args summary."""
    time.sleep(float(seconds))
    return float(seconds)


@shared_task(name="tests.fail", ignore_result=True)
def fail() -> None:
    """Fail at once, for the per-queue failure counters."""
    raise ValueError("test job failed on purpose")


RECORDED_KEY = "test:recorded"


@shared_task(name="tests.record", ignore_result=True)
def record(*args) -> None:
    """Note the arguments of each run, so a test sees which messages a worker consumed."""
    import json

    current_app.extensions["redis"].rpush(RECORDED_KEY, json.dumps(list(args)))


@shared_task(name="tests.touch_database", ignore_result=True)
def touch_database() -> None:
    """Open this pool process's database connection (a warm-up before a measurement)."""
    from sqlalchemy import text

    from service.extensions import db

    db.session.execute(text("SELECT 1"))
