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
from tests.support.processes import start_gunicorn, start_worker, stop_all
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
    stop_all([worker, web])


def test_concurrent_duplicate_deliveries_are_stored_and_applied_exactly_once(stack, ctx):
    base, web, worker = stack
    order_ids = make_orders(EVENTS, total_cents=1000)
    bodies = [stripe_event("payment_intent.succeeded", payment_intent(order_id, amount=1000))[0]
              for order_id in order_ids]
    deliveries = bodies * COPIES
    random.Random(20260101).shuffle(deliveries)
    local = threading.local()

    dropped = Counter()

    def post(body: bytes) -> requests.Response:
        # A kept-alive connection the server closes just as the next request goes out
        # is dropped without an answer (the HTTP keep-alive race). A provider treats a
        # delivery with no answer as failed and delivers it again; so does this sender,
        # on a new connection. Only "closed without any response" is retried: every
        # answer the server did give is counted as given.
        for attempt in range(3):
            if not hasattr(local, "session") or attempt:
                local.session = requests.Session()
            try:
                return local.session.post(base + "/webhooks/stripe", data=body,
                                          headers=stripe_headers(body), timeout=30)
            except requests.ConnectionError:
                dropped["no answer"] += 1
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def send(body: bytes) -> tuple[int, str | None]:
        response = post(body)
        try:
            return response.status_code, response.json().get("status")
        except ValueError:
            return response.status_code, response.text[:200]

    began = time.monotonic()
    with ThreadPoolExecutor(max_workers=SENDERS) as pool:
        answers = Counter(pool.map(send, deliveries))
    sent_in = time.monotonic() - began

    # Each delivery has exactly one answer, a redelivered one included: its first copy
    # was never read by the server, so it is stored or a duplicate like any other.
    assert answers == {(200, "stored"): EVENTS, (200, "duplicate"): EVENTS * (COPIES - 1)}, (
        f"{answers} ({dropped['no answer']} redelivered) after {sent_in:.1f}s\n"
        f"{web.log()[-3000:]}")
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
