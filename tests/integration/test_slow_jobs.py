"""Slow-job detection in a real worker: a record and a P3 signal past the threshold only.

The worker runs the test task `tests.sleep` (tests/support/queue_handlers.py) with a
0.2 s threshold for it (SLOW_JOB_OVERRIDES); everything else keeps the default. With one
pool process jobs run in the order sent, so once the slow job's record exists, the fast
job sent before it has finished, signals and all.
"""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from service.clock import utcnow
from tests.support.db import rows
from tests.support.processes import start_worker
from tests.support.waiting import wait_until

THRESHOLD = 0.2
CUSTOMER_EMAIL = "jane.doe+slow@example.com"


@pytest.fixture
def worker(clean, tmp_path):
    proc = start_worker(tmp_path, queues="default", concurrency=1, beat=False, name="slowjobs",
                        env={"SLOW_JOB_OVERRIDES": f"tests.sleep={THRESHOLD}",
                             "WEBHOOK_HANDLER_MODULES":
                                 "tests.support.test_handlers,tests.support.queue_handlers"})
    yield proc
    proc.stop()


def test_task_over_its_threshold_leaves_a_slow_job_record_and_a_p3_signal_and_fast_one_none(
        worker, ctx, clean):
    celery = clean.extensions["celery"]
    sent_at = utcnow()

    fast = celery.send_task("tests.sleep", args=[0.0, 31337, CUSTOMER_EMAIL], queue="default")
    slow = celery.send_task("tests.sleep", args=[0.5, 4242, CUSTOMER_EMAIL],
                            kwargs={"customer_id": 77, "contact": CUSTOMER_EMAIL},
                            queue="default")

    recorded = wait_until(lambda: rows("SELECT * FROM slow_jobs"), 20,
                          "a slow_jobs row", logs=(worker,))

    assert len(recorded) == 1, recorded
    job = recorded[0]
    assert (job["task_name"], job["task_id"], job["queue"]) == ("tests.sleep", slow.id, "default")
    assert job["runtime_seconds"] >= 0.5
    assert job["threshold_seconds"] == THRESHOLD
    assert job["worker"].startswith("slowjobs-"), job["worker"]
    assert sent_at - timedelta(seconds=1) <= job["started_at"] <= utcnow()
    summary = json.loads(job["args_summary"])
    assert summary["args"][1] == 4242
    assert summary["kwargs"]["customer_id"] == 77
    assert CUSTOMER_EMAIL not in job["args_summary"]
    assert "@" not in job["args_summary"]

    signals = rows("SELECT * FROM alert_signals")
    assert len(signals) == 1, signals
    signal = signals[0]
    assert (signal["severity"], signal["kind"], signal["source"]) == ("P3", "slow_job", "tests.sleep")
    details = json.loads(signal["details"])
    assert details["task_id"] == slow.id
    assert details["queue"] == "default"
    assert details["threshold_seconds"] == THRESHOLD
    assert details["runtime_seconds"] >= 0.5
    assert CUSTOMER_EMAIL not in signal["details"]

    # The fast job ran first, in the same pool process, and left nothing.
    wait_until(lambda: f"[{fast.id}] succeeded" in worker.log(), 5, "the fast job", logs=(worker,))
    assert not rows("SELECT id FROM slow_jobs WHERE task_id = :t", t=fast.id)
