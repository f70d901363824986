"""Counters shared by every process (gunicorn workers, Celery pool processes) via Redis,
rendered as Prometheus text at `GET /metrics`.

Each process increments a Redis hash; a scrape reads the hash. Counting never fails a
request: when Redis is down the increment is dropped.
"""

from __future__ import annotations

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


def increment(name: str, amount: int = 1, **labels: str) -> None:
    try:
        current_app.extensions["redis"].hincrby(COUNTERS_KEY, _field(name, labels), amount)
    except redis.RedisError:
        pass


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
    return Response(render(current_app.extensions["redis"]),
                    mimetype="text/plain; version=0.0.4")


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)
