"""Counters shared by every process (gunicorn workers, Celery pool processes) via Redis,
rendered as Prometheus text at `GET /metrics`.

Each process counts in memory and adds its counts to a Redis hash at most once a second
(on the next increment after that), so counting costs no round trip on the hot path; a
scrape reads the hash. Counting never fails a request: when Redis is down the counts
wait for the next flush.
"""

from __future__ import annotations

import threading
import time
from collections import Counter

import redis
from flask import Blueprint, Flask, Response, current_app

COUNTERS_KEY = "racine:metrics:counters"

_HELP = {
    "racine_webhooks_deliveries_total": "Webhook deliveries by provider and outcome.",
    "racine_webhooks_events_total": "Event processing attempts by outcome.",
}

bp = Blueprint("metrics", __name__)


def _field(name: str, labels: dict[str, str]) -> str:
    inner = ",".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
    return f"{name}{{{inner}}}"


FLUSH_SECONDS = 1.0
_pending: Counter = Counter()
_lock = threading.Lock()
_last_flush = [0.0]


def increment(name: str, amount: int = 1, **labels: str) -> None:
    with _lock:
        _pending[_field(name, labels)] += amount
        due = time.monotonic() - _last_flush[0] >= FLUSH_SECONDS
    if due:
        flush(current_app.extensions["redis"])


def flush(client: redis.Redis) -> None:
    """Add this process's counts to Redis; kept for the next flush if Redis is down."""
    with _lock:
        counts = dict(_pending)
        _pending.clear()
        _last_flush[0] = time.monotonic()
    if not counts:
        return
    try:
        pipe = client.pipeline(transaction=False)
        for field, amount in counts.items():
            pipe.hincrby(COUNTERS_KEY, field, amount)
        pipe.execute()
    except redis.RedisError:
        with _lock:
            _pending.update(counts)


def render(client: redis.Redis) -> str:
    lines: list[str] = []
    try:
        counters = client.hgetall(COUNTERS_KEY)
    except redis.RedisError:
        counters = {}
    by_name: dict[str, list[str]] = {}
    for raw_field, raw_value in sorted(counters.items()):
        field = raw_field.decode()
        by_name.setdefault(field.split("{", 1)[0], []).append(f"{field} {int(raw_value)}")
    for name, help_text in _HELP.items():
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} counter")
        lines.extend(by_name.pop(name, []))
    for name, samples in by_name.items():
        lines.append(f"# TYPE {name} counter")
        lines.extend(samples)
    for collect in current_app.extensions.get("metrics_collectors", []):
        try:
            lines.extend(collect())
        except redis.RedisError:
            continue
    return "\n".join(lines) + "\n"


@bp.get("/metrics")
def metrics():
    flush(current_app.extensions["redis"])
    return Response(render(current_app.extensions["redis"]),
                    mimetype="text/plain; version=0.0.4")


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)
