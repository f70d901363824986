"""Queue health: depth, age, throughput, consumers, failures, slow jobs and limiter state.

Everything is read with a handful of O(1) Redis calls and indexed counts, so a report
stays fast however many jobs are queued.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Protocol

from flask import Flask, current_app
from sqlalchemy import func, select

from service.celery_app import queues
from service.clock import iso, utcnow
from service.extensions import db
from service.queues.depth import depths, oldest_wait_seconds
from service.queues.hooks import CONSUMERS_KEY, DONE_KEY, FAILED_KEY, HEARTBEAT_SECONDS
from service.queues.models import OutboxJob, SlowJob
from service.queues.publishing import gate
from service.queues.ratelimit import rate_limit_of

OK, WARNING, CRITICAL = "ok", "warning", "critical"
_BACKLOGS = "racine.queue_backlogs"
_PAUSES = "racine.queue_pauses"


class QueueBacklog(Protocol):
    """What a domain that keeps a queue's work in tables of its own tells queue health."""

    def waiting(self) -> int:
        """Jobs stored in the database and not on the queue (the relay will publish them)."""

    def failures_since(self, since: datetime) -> int:
        """Jobs of the queue that failed since `since` (instead of the workers' count)."""


def register_backlog(app: Flask, queue: str, backlog: QueueBacklog) -> None:
    """Let queue health count `queue`'s work that waits in another domain's tables;
    called from that domain's `init_app`, so this package imports none of its models."""
    app.extensions.setdefault(_BACKLOGS, {})[queue] = backlog


class QueuePause(Protocol):
    """What a domain whose queue can be paused tells queue health."""

    def pause_state(self) -> dict | None:
        """None while the queue's work runs; else when, by whom and why it was paused
        (`paused_at`, `paused_by`, `reason`)."""


def register_pause(app: Flask, queue: str, pause: QueuePause) -> None:
    """Let queue health show `queue` as paused while `pause` says so; called from the
    init_app of the domain that owns the flag."""
    app.extensions.setdefault(_PAUSES, {})[queue] = pause


EXIT_CODES = {OK: 0, WARNING: 1, CRITICAL: 2}
_RANK = {OK: 0, WARNING: 1, CRITICAL: 2}


@dataclass
class QueueReport:
    name: str
    status: str
    depth: int
    oldest_wait_seconds: float | None
    jobs_per_minute: float
    consumers: int
    failures_last_hour: int
    slow_jobs_last_hour: int
    waiting_in_database: int
    limiter: dict | None
    reasons: list[str] = field(default_factory=list)
    # A paused queue's jobs run and skip their work (the ERP sync): not a fault in itself,
    # so the status is judged as for any queue.
    paused: bool = False
    pause: dict | None = None


def queue_health() -> dict:
    """The whole report: overall status, thresholds, and one entry per queue."""
    started = time.monotonic()
    cfg = current_app.config
    client = current_app.extensions["redis"]
    now = time.time()
    minute = int(now // 60)
    hour_ago = utcnow() - timedelta(hours=1)
    queue_depths = depths(client, queues(current_app))

    pipe = client.pipeline(transaction=False)
    for name in queues(current_app):
        for m in range(minute - 4, minute + 1):
            pipe.get(DONE_KEY.format(queue=name, minute=m))
        for m in range(minute - 59, minute + 1):
            pipe.get(FAILED_KEY.format(queue=name, minute=m))
        pipe.zcount(CONSUMERS_KEY.format(queue=name), now - 3 * HEARTBEAT_SECONDS, "+inf")
    raw = pipe.execute()

    slow = dict(db.session.execute(
        select(SlowJob.queue, func.count()).where(SlowJob.created_at >= hour_ago)
        .group_by(SlowJob.queue)).all())
    outbox_waiting = dict(db.session.execute(
        select(OutboxJob.queue, func.count()).where(OutboxJob.status == "pending")
        .group_by(OutboxJob.queue)).all())
    backlogs = current_app.extensions.get(_BACKLOGS, {})
    pauses = current_app.extensions.get(_PAUSES, {})

    reports = []
    per_queue = 5 + 60 + 1
    for index, name in enumerate(queues(current_app)):
        chunk = raw[index * per_queue:(index + 1) * per_queue]
        done = sum(int(v or 0) for v in chunk[:5])
        failed = sum(int(v or 0) for v in chunk[5:65])
        consumers = int(chunk[65])
        waiting = outbox_waiting.get(name, 0)
        backlog = backlogs.get(name)
        if backlog is not None:
            failed = backlog.failures_since(hour_ago)
            waiting += backlog.waiting()
        report = QueueReport(
            name=name, status=OK, depth=queue_depths[name],
            oldest_wait_seconds=_round(oldest_wait_seconds(client, name, now=now)),
            jobs_per_minute=round(done / 5, 1), consumers=consumers,
            failures_last_hour=failed, slow_jobs_last_hour=slow.get(name, 0),
            waiting_in_database=waiting, limiter=_limiter_state(name),
        )
        if name in pauses:
            report.pause = pauses[name].pause_state()
            report.paused = report.pause is not None
        _judge(report, cfg)
        reports.append(report)
    overall = max((r.status for r in reports), key=_RANK.__getitem__, default=OK)
    return {
        "status": overall,
        "generated_at": iso(utcnow()),
        "thresholds": {"depth_alert": cfg["QUEUE_DEPTH_ALERT"], "depth_max": cfg["QUEUE_DEPTH_MAX"]},
        "queues": [asdict(r) for r in reports],
        "elapsed_ms": round((time.monotonic() - started) * 1000, 1),
    }


def _judge(report: QueueReport, cfg) -> None:
    if report.depth > cfg["QUEUE_DEPTH_MAX"] or report.depth >= gate(report.name):
        report.reasons.append(f"depth {report.depth} at its bound ({cfg['QUEUE_DEPTH_MAX']}); "
                              "new work waits in the database")
    if report.depth > 0 and report.consumers == 0:
        report.reasons.append("jobs waiting and no worker consuming")
    if report.reasons:
        report.status = CRITICAL
    elif report.depth > cfg["QUEUE_DEPTH_ALERT"]:
        report.status = WARNING
        report.reasons.append(f"depth {report.depth} above {cfg['QUEUE_DEPTH_ALERT']}")


def _limiter_state(queue: str) -> dict | None:
    limit = rate_limit_of(queue)
    if limit is None:
        return None
    return current_app.extensions["rate_limiter"].state(*limit)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)
