"""`GET /metrics`: counts from every process, batched in memory, rendered by prometheus_client."""

from __future__ import annotations

import uuid

import pytest
import requests

from service import metrics
from service.webhooks.metrics import DELIVERIES
from tests.support.db import scalar
from tests.support.events import make_order, payment_intent, stripe_event, stripe_headers
from tests.support.metrics import samples, scraped
from tests.support.processes import start_gunicorn, start_worker
from tests.support.waiting import wait_until


def counter(text: str, name: str, **labels: str) -> float:
    return samples(text, name).get(tuple(sorted(labels.items())), 0)


def test_deliveries_are_counted_by_outcome_without_a_round_trip_each(client, clean):
    name = "racine_webhooks_deliveries_total"
    before = client.get("/metrics").get_data(as_text=True)
    body, _ = stripe_event("payment_intent.succeeded", {"id": "pi_metrics"})
    for _ in range(3):  # one stored, two redeliveries
        assert client.post("/webhooks/stripe", data=body,
                           headers=stripe_headers(body)).status_code == 200
    forged = client.post("/webhooks/stripe", data=body,
                         headers=stripe_headers(body, secret="whsec_wrong"))
    assert forged.status_code == 400

    response = client.get("/metrics")

    assert response.status_code == 200
    assert response.mimetype == "text/plain"
    after = response.get_data(as_text=True)
    assert "# TYPE racine_webhooks_deliveries_total counter" in after
    delta = {outcome: counter(after, name, outcome=outcome, provider="stripe")
             - counter(before, name, outcome=outcome, provider="stripe")
             for outcome in ("stored", "duplicate", "bad_signature")}
    assert delta == {"stored": 1, "duplicate": 2, "bad_signature": 1}


def test_queue_gauges_are_exposed_per_declared_queue(client, clean):
    text = client.get("/metrics").get_data(as_text=True)

    depths = samples(text, "racine_queue_depth_jobs")
    assert {dict(labels)["queue"] for labels in depths} == {"webhooks", "orders", "erp", "default"}
    assert set(depths.values()) == {0}
    assert "# TYPE racine_queue_oldest_wait_seconds gauge" in text


def test_label_values_are_escaped_as_the_exposition_format_requires(client, clean):
    awkward = 'say "hi"\\ then\nbreak'
    counted = metrics.SharedCounter(f"racine_test_{uuid.uuid4().hex[:8]}", "A test counter.",
                                    ("note",))
    metrics.register(clean, counted)
    with clean.app_context():
        counted.inc(2, note=awkward)

    text = client.get("/metrics").get_data(as_text=True)

    assert samples(text, counted.name + "_total") == {(("note", awkward),): 2.0}


def test_a_counter_refuses_labels_it_was_not_declared_with(clean):
    with clean.app_context(), pytest.raises(ValueError, match="takes labels"):
        DELIVERIES.inc(provider="stripe")


def test_the_same_metric_name_cannot_be_registered_twice(clean):
    twin = metrics.SharedCounter(DELIVERIES.name, "Another counter by the same name.",
                                 ("provider", "outcome"))
    with pytest.raises(ValueError, match="registered twice"):
        metrics.register(clean, twin)


def test_a_collector_whose_store_is_down_is_left_out_not_the_scrape(build_app):
    # Nothing listens on port 1: the shared counters and the queue gauges both fail.
    down = build_app({"REDIS_URL": "redis://127.0.0.1:1/0"})

    response = down.test_client().get("/metrics")

    assert response.status_code == 200
    text = response.get_data(as_text=True)
    assert "racine_queue_depth_jobs" not in text
    assert "racine_webhooks_deliveries_total{" not in text


# -- counts buffered in a process reach Redis when that process exits ------------------

SLOW_FLUSH = {"METRICS_FLUSH_SECONDS": "3600", "LOG_LEVEL": "WARNING"}


def test_a_gunicorn_worker_adds_its_buffered_counts_when_it_exits(clean, tmp_path):
    stored = (("outcome", "stored"), ("provider", "stripe"))
    web, base = start_gunicorn(tmp_path, workers=1, threads=1, env=SLOW_FLUSH)
    try:
        for _ in range(4):
            body, _ = stripe_event("payment_intent.succeeded", {"id": "pi_exit"})
            assert requests.post(base + "/webhooks/stripe", data=body,
                                 headers=stripe_headers(body), timeout=10).ok
        # Nothing is added before the flush interval, an hour here.
        assert stored not in samples(scraped(clean), "racine_webhooks_deliveries_total")
    finally:
        web.stop()

    assert samples(scraped(clean), "racine_webhooks_deliveries_total")[stored] == 4


def test_a_celery_pool_process_adds_its_buffered_counts_when_the_worker_stops(ctx, clean,
                                                                            tmp_path):
    order_ids = [make_order() for _ in range(3)]
    worker = start_worker(tmp_path, queues="webhooks", concurrency=1, beat=False,
                          env=SLOW_FLUSH)
    try:
        client = clean.test_client()
        for order_id in order_ids:
            body, _ = stripe_event("payment_intent.succeeded", payment_intent(order_id))
            assert client.post("/webhooks/stripe", data=body,
                               headers=stripe_headers(body)).status_code == 200
        wait_until(lambda: scalar("SELECT count(*) FROM orders WHERE status = 'paid'") == 3,
                   30, "three paid orders", logs=[worker])
        assert (("outcome", "processed"),) not in samples(scraped(clean),
                                                          "racine_webhooks_events_total")
    finally:
        worker.stop()

    assert samples(scraped(clean), "racine_webhooks_events_total")[(("outcome", "processed"),)] == 3

