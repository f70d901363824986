"""Slow-job detection: every task's runtime, and past a threshold a record, handed to the
listeners other domains registered (the escalation policy raises a P3 signal from it)."""

from __future__ import annotations

import json
import logging
from datetime import datetime
from typing import Protocol

from flask import Flask, current_app
from sqlalchemy import select

from service.extensions import db
from service.queues.models import SlowJob

log = logging.getLogger(__name__)

_LISTENERS = "racine.slow_job_listeners"


class SlowJobListener(Protocol):
    def __call__(self, *, task_name: str, details: dict) -> None:
        """Told of a slow job inside the transaction that records it (ids only in
        `details`: task id, queue, runtime and threshold in seconds)."""


def on_slow_job(app: Flask, listener: SlowJobListener) -> None:
    """Tell `listener` of every slow job; called from another domain's `init_app`, so this
    package imports none of the domains that care."""
    app.extensions.setdefault(_LISTENERS, []).append(listener)


def threshold_for(task, config=None) -> float:
    """`slow_after` on the task wins, then SLOW_JOB_OVERRIDES, then SLOW_JOB_SECONDS."""
    explicit = getattr(task, "slow_after", None)
    if explicit:
        return float(explicit)
    config = config or current_app.config
    return float(config["SLOW_JOB_OVERRIDES"].get(task.name, config["SLOW_JOB_SECONDS"]))


def summarise_args(args, kwargs) -> str:
    """Shapes and ids, never values that could be personal: ints kept, other values typed."""
    def shape(value):
        if isinstance(value, bool) or value is None:
            return value
        if isinstance(value, int):
            return value
        return f"<{type(value).__name__}>"
    summary = {"args": [shape(a) for a in (args or [])],
               "kwargs": {k: shape(v) for k, v in (kwargs or {}).items()}}
    return json.dumps(summary)[:255]


def record_if_slow(*, task, task_id: str, queue: str | None, worker: str | None,
                   started_at: datetime, runtime: float, args, kwargs) -> SlowJob | None:
    """Add a slow_jobs row past the task's threshold and tell the listeners; the caller
    commits."""
    threshold = threshold_for(task)
    if runtime <= threshold:
        return None
    job = SlowJob(task_name=task.name, task_id=task_id, queue=queue, runtime_seconds=runtime,
                  threshold_seconds=threshold, worker=worker, started_at=started_at,
                  args_summary=summarise_args(args, kwargs))
    db.session.add(job)
    details = {"task_id": task_id, "queue": queue, "runtime_seconds": round(runtime, 3),
               "threshold_seconds": threshold}
    for listener in current_app.extensions.get(_LISTENERS, ()):
        listener(task_name=task.name, details=details)
    log.warning("slow job", extra={"task": task.name, "task_id": task_id, "queue": queue,
                                   "duration_ms": round(runtime * 1000)})
    return job


def recent_slow_jobs(*, since: datetime, queue: str | None = None, limit: int = 50) -> list[dict]:
    """Slow jobs recorded since `since`, slowest first (for the queue overload runbook)."""
    query = select(SlowJob).where(SlowJob.created_at >= since)
    if queue is not None:
        query = query.where(SlowJob.queue == queue)
    return [job.to_dict() for job in db.session.scalars(
        query.order_by(SlowJob.runtime_seconds.desc()).limit(limit))]
