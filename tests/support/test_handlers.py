"""Handlers for event types that exist only in tests, loaded through WEBHOOK_HANDLER_MODULES.

They stand in for a provider whose events fail in controlled ways; the domain effect
they produce is a real payment through the orders service, so "exactly once" can be
counted in the database. Attempt times are kept in Redis so the test can see the
retry delays the worker chose.
"""

from __future__ import annotations

import os
import signal
import time

import redis
from flask import current_app
from sqlalchemy import text

from service.extensions import db
from service.orders import services as orders
from service.webhooks.exceptions import PermanentError, TransientError
from service.webhooks.handlers import handles


def _redis() -> redis.Redis:
    return current_app.extensions["redis"]


def _pay(obj: dict, source: str):
    return orders.record_payment(
        order_id=int(obj["order_id"]), provider="stripe",
        # 1000: make_order's default total, so the order is paid.
        provider_payment_id=obj["payment_id"], amount_cents=int(obj.get("amount", 1000)),
        currency="eur", source=source,
    )


@handles("stripe", "test.flaky")
def flaky(event: dict, source: str):
    """Fail transiently `fail_times` times, then pay the order."""
    obj = event["data"]["object"]
    key = f"test:attempts:{event['id']}"
    _redis().rpush(key, repr(time.time()))
    if _redis().llen(key) <= int(obj.get("fail_times", 0)):
        raise TransientError("simulated lock timeout")
    return _pay(obj, source)


@handles("stripe", "test.slow")
def slow(event: dict, source: str):
    """Sleep, then pay the order: a window in which a worker can be killed."""
    obj = event["data"]["object"]
    _redis().rpush(f"test:started:{event['id']}", repr(time.time()))
    time.sleep(float(obj.get("sleep", 5)))
    return _pay(obj, source)


@handles("stripe", "test.broken")
def broken(event: dict, source: str):
    """Always fail permanently: a payment event the service cannot apply."""
    raise PermanentError("simulated permanent failure")
@handles("stripe", "test.kill")
def kill(event: dict, source: str):
    """Kill the process running it outright, as an out-of-memory kill or a crash would."""
    _redis().rpush(f"test:started:{event['id']}", repr(time.time()))
    os.kill(os.getpid(), signal.SIGKILL)


@handles("stripe", "test.leaky")
def leaky(event: dict, source: str):
    """Fail with the customer's e-mail address in the error, from Python or from the
    database (which quotes the value it refused)."""
    obj = event["data"]["object"]
    if obj.get("via") == "database":
        db.session.execute(text("SELECT CAST(:value AS integer)"), {"value": obj["email"]})
    raise ValueError(f"cannot handle customer {obj['email']}")
