"""A burst of concurrent, duplicated deliveries through gunicorn, processed by a real worker.

Providers deliver at least once, often several times at nearly the same moment. Every
copy must be answered 200; exactly one copy per event is stored, and each event changes
its order exactly once.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from sqlalchemy import text

from service.extensions import db
from tests.support.db import scalar
from tests.support.events import make_orders, payment_intent, stripe_event, stripe_headers
from tests.support.processes import start_gunicorn, start_worker
from tests.support.waiting import wait_until

EVENTS = 200
COPIES = 5
SENDERS = 64


def statuses() -> dict[str, int]:
    with db.engine.connect() as conn:
        return dict(conn.execute(text(
            "SELECT status, count(*) FROM webhook_events GROUP BY status")).all())


@pytest.fixture
def stack(clean, tmp_path):
    """gunicorn (3 workers x 8 threads) and one worker (4 processes, with the relay)."""
    web, base = start_gunicorn(tmp_path, workers=3, threads=8)
    try:
        worker = start_worker(tmp_path, concurrency=4, beat=True)
    except BaseException:
        web.stop()
        raise
    yield base, web, worker
    worker.stop()
    web.stop()


def test_concurrent_duplicate_deliveries_are_stored_and_applied_exactly_once(stack, ctx):
    base, web, worker = stack
    order_ids = make_orders(EVENTS, total_cents=1000)
    bodies = [stripe_event("payment_intent.succeeded", payment_intent(order_id, amount=1000))[0]
              for order_id in order_ids]
    deliveries = bodies * COPIES
    random.Random(20260101).shuffle(deliveries)
    local = threading.local()

    def send(body: bytes) -> tuple[int, str | None]:
        if not hasattr(local, "session"):
            local.session = requests.Session()
        response = local.session.post(base + "/webhooks/stripe", data=body,
                                      headers=stripe_headers(body), timeout=30)
        try:
            return response.status_code, response.json().get("status")
        except ValueError:
            return response.status_code, response.text[:200]

    began = time.monotonic()
    with ThreadPoolExecutor(max_workers=SENDERS) as pool:
        answers = Counter(pool.map(send, deliveries))
    sent_in = time.monotonic() - began

    assert answers == {(200, "stored"): EVENTS, (200, "duplicate"): EVENTS * (COPIES - 1)}, (
        f"{answers} after {sent_in:.1f}s\n{web.log()[-3000:]}")
    wait_until(lambda: statuses() == {"processed": EVENTS}, 120,
               lambda: f"all {EVENTS} events to be processed (now {statuses()})",
               logs=[worker])

    assert scalar("SELECT count(*) FROM webhook_events") == EVENTS
    assert scalar("SELECT count(DISTINCT event_id) FROM webhook_events") == EVENTS
    assert scalar("SELECT count(*) FROM payments") == EVENTS
    assert scalar("SELECT count(DISTINCT order_id) FROM payments") == EVENTS
    assert scalar("SELECT count(*) FROM orders WHERE status = 'paid'") == EVENTS
    assert scalar("SELECT count(*) FROM order_status_changes WHERE from_status = 'pending' "
                  "AND to_status = 'paid' AND applied") == EVENTS
    assert scalar("SELECT count(*) FROM order_status_changes") == EVENTS
    assert scalar("SELECT count(*) FROM webhook_failures") == 0
    assert scalar("SELECT max(attempts) FROM webhook_events") == 1
