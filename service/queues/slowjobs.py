"""Slow-job detection: every task's runtime, and a record plus a P3 signal past a threshold."""

from __future__ import annotations

import json
import logging
from datetime import datetime

from flask import current_app

from service.alerts.services import raise_signal
from service.extensions import db
from service.queues.models import SlowJob

log = logging.getLogger(__name__)


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
    """Add a slow_jobs row and a P3 signal past the task's threshold; the caller commits."""
    threshold = threshold_for(task)
    if runtime <= threshold:
        return None
    job = SlowJob(task_name=task.name, task_id=task_id, queue=queue, runtime_seconds=runtime,
                  threshold_seconds=threshold, worker=worker, started_at=started_at,
                  args_summary=summarise_args(args, kwargs))
    db.session.add(job)
    raise_signal(severity="P3", kind="slow_job", source=task.name,
                 details={"task_id": task_id, "queue": queue,
                          "runtime_seconds": round(runtime, 3), "threshold_seconds": threshold})
    log.warning("slow job", extra={"task": task.name, "task_id": task_id, "queue": queue,
                                   "duration_ms": round(runtime * 1000)})
    return job
