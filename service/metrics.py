"""Counters shared by every process (gunicorn workers, Celery pool processes) via Redis,
rendered as Prometheus text at `GET /metrics`.

Each process counts in memory and adds its counts to a Redis hash about once a second
(`service.counting`), so counting costs no round trip on the hot path; a scrape reads
the hash.
"""

from __future__ import annotations

import hmac

import redis
from flask import Blueprint, Flask, Response, current_app, jsonify, request

from service.counting import BufferedCounts

COUNTERS_KEY = "racine:metrics:counters"

_HELP = {
    "racine_webhooks_deliveries_total": "Webhook deliveries by provider and outcome.",
    "racine_webhooks_events_total": "Event processing attempts by outcome.",
}

bp = Blueprint("metrics", __name__)


def _field(name: str, labels: dict[str, str]) -> str:
    inner = ",".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
    return f"{name}{{{inner}}}"


def _add_to_hash(pipe, field: str, amount: int) -> None:
    pipe.hincrby(COUNTERS_KEY, field, amount)


_counts = BufferedCounts(_add_to_hash, name="racine-metrics")


def _client() -> redis.Redis:
    return current_app.extensions["redis"]


def increment(name: str, amount: int = 1, **labels: str) -> None:
    _counts.add(_field(name, labels), amount, _client)


def flush(client: redis.Redis) -> None:
    """Add this process's counts to Redis now (before a scrape reads them)."""
    _counts.flush(client)


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


@bp.before_request
def _require_token():
    """`/metrics` answers only a bearer of METRICS_TOKEN (counts and queue figures tell an
    outsider how busy the shop is). Without a token it is closed, except in development."""
    token = current_app.config.get("METRICS_TOKEN")
    if not token:
        if current_app.config.get("RACINE_ENV") == "development":
            return None
        response = jsonify(error="metrics_disabled",
                           reason="set METRICS_TOKEN to open /metrics to a bearer of it")
        response.status_code = 403
        return response
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and hmac.compare_digest(
            given.strip().encode("utf-8", "replace"), token.encode("utf-8")):
        return None
    response = jsonify(error="unauthorized", reason="a valid bearer token is required")
    response.status_code = 401
    response.headers["WWW-Authenticate"] = 'Bearer realm="metrics"'
    return response


@bp.get("/metrics")
def metrics():
    flush(current_app.extensions["redis"])
    return Response(render(current_app.extensions["redis"]),
                    mimetype="text/plain; version=0.0.4")


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)
