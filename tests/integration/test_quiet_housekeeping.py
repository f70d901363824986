"""What `make run` shows: housekeeping says something only when it moved something."""

from __future__ import annotations

import logging
import time

import pytest
from sqlalchemy import text

from service.webhooks.relay import relay_pending
from tests.support.events import stripe_event, stripe_headers
from tests.support.processes import start_worker
from tests.support.waiting import wait_until


@pytest.fixture
def service_log(caplog):
    """The `service` loggers' records (they do not propagate to the root logger)."""
    logger = logging.getLogger("service")
    logger.addHandler(caplog.handler)
    caplog.set_level(logging.INFO)
    yield caplog
    logger.removeHandler(caplog.handler)


def test_a_relay_pass_with_nothing_to_publish_logs_nothing(ctx, service_log):
    report = relay_pending()

    assert (report.found, report.enqueued) == (0, 0)
    assert service_log.records == []


def test_a_relay_pass_that_publishes_says_how_many(ctx, service_log, client):
    body, _ = stripe_event("payment_intent.succeeded", {"id": "pi_relay_log"})
    assert client.post("/webhooks/stripe", data=body, headers=stripe_headers(body)).status_code == 200
    # As after a failed publish: the row waits as `received`, old enough for the relay.
    ctx.execute(text("UPDATE webhook_events SET status = 'received', queued_at = NULL,"
                     " received_at = received_at - interval '1 minute'"))
    ctx.commit()
    service_log.clear()

    relay_pending()

    assert [(r.levelname, r.getMessage(), r.count) for r in service_log.records] == \
        [("INFO", "relay published stored events", 1)]


def test_an_idle_worker_with_beat_does_not_log_its_housekeeping(clean, tmp_path):
    worker = start_worker(tmp_path, queues="webhooks,default", concurrency=1)
    try:
        body, _ = stripe_event("test.unhandled", {"id": "obj_quiet"})
        assert clean.test_client().post("/webhooks/stripe", data=body,
                                        headers=stripe_headers(body)).status_code == 200
        wait_until(lambda: "webhooks.process_event" in worker.log() and
                   "succeeded" in worker.log(), 30, "the event handled", logs=[worker])
        time.sleep(3)  # three relay intervals in the tests' settings
        log = worker.log()
    finally:
        worker.stop()

    assert "Task webhooks.process_event[" in log
    routine = [line for line in log.splitlines()
               if "Task webhooks.relay_pending[" in line or "Task queues.relay_outbox[" in line
               or "Sending due task" in line]
    assert routine == []
