"""Queue samples: one row per queue and minute, with the depth, oldest wait and last
minute's throughput read from the real Redis broker; a week later they are gone."""

from __future__ import annotations

import json
import time
from datetime import timedelta

from service.celery_app import queues
from service.clock import utcnow
from service.extensions import db
from service.queues.depth import ENQUEUED_AT_HEADER
from service.queues.hooks import DONE_KEY
from service.queues.models import QueueSample
from service.queues.samples import record_samples, samples
from tests.support.db import rows


def _queue_message(client, queue: str, enqueued_at: float) -> None:
    client.lpush(queue, json.dumps({"headers": {ENQUEUED_AT_HEADER: enqueued_at}, "body": ""}))


def test_each_queue_gets_one_sample_a_minute_with_depth_wait_and_throughput(ctx, clean):
    client = clean.extensions["redis"]
    now = time.time()
    _queue_message(client, "orders", now - 90)
    _queue_message(client, "orders", now - 10)
    client.set(DONE_KEY.format(queue="webhooks", minute=int(now // 60) - 1), 42)

    first = record_samples()
    db.session.commit()
    again = record_samples()
    db.session.commit()

    assert first.recorded == len(queues(clean)) and again.recorded == 0
    by_queue = {s["queue"]: s for s in samples(since=utcnow() - timedelta(minutes=2))}
    assert set(by_queue) == set(queues(clean))
    assert by_queue["orders"]["depth"] == 2
    assert 85 <= by_queue["orders"]["oldest_wait_seconds"] <= 150
    assert by_queue["webhooks"]["jobs_per_minute"] == 42.0
    assert by_queue["erp"]["depth"] == 0 and by_queue["erp"]["oldest_wait_seconds"] is None


def test_samples_older_than_the_retention_are_deleted(ctx, clean):
    now = utcnow().replace(second=0, microsecond=0)
    for age in (timedelta(days=8), timedelta(days=6, hours=23)):
        db.session.add(QueueSample(queue="orders", sampled_at=now - age, depth=1,
                                   oldest_wait_seconds=None, jobs_per_minute=0.0))
    db.session.commit()

    run = record_samples(now=now)
    db.session.commit()

    assert run.deleted == 1
    kept = rows("SELECT sampled_at FROM queue_samples WHERE queue = 'orders' ORDER BY sampled_at")
    assert [r["sampled_at"] for r in kept] == [now - timedelta(days=6, hours=23), now]


def test_beat_schedules_the_sampler_every_minute(clean):
    entry = clean.extensions["celery"].conf.beat_schedule["queue-samples"]

    assert (entry["task"], entry["schedule"]) == ("queues.record_samples", 60.0)
