"""`GET /metrics`, rendered by prometheus_client from what each domain registers.

A domain registers its metrics in its `init_app` with `register(app, ...)`; two kinds:

- `SharedCounter`: counted in whichever process the event happens (a gunicorn worker, a
  Celery pool process) and summed over all of them. Each process counts in memory and
  adds its counts to one Redis hash about once a second (`service.counting`), and
  whatever it still holds when it exits; a scrape, answered by any web process, reads the
  hash. Declare it once at module level, count with `.inc(**labels)`.
- Any prometheus_client collector (an object whose `collect()` yields metric families),
  run at scrape time: gauges read from Redis or the database (queue depth, open
  incidents). A collector that meets a Redis or database error is left out of that
  scrape instead of failing it.

prometheus_client writes the exposition format (names, types, label escaping).

`/metrics` answers only a bearer of `METRICS_TOKEN`; without one it is closed in
production and open in development.
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Iterable

import redis
from flask import Blueprint, Flask, Response, current_app, jsonify, request
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from sqlalchemy.exc import SQLAlchemyError

from service.counting import BufferedCounts

log = logging.getLogger(__name__)

COUNTERS_KEY = "racine:metrics:shared-counters"
_EXTENSION = "racine.metrics"

bp = Blueprint("metrics", __name__)


def _add_to_hash(pipe, field: str, amount: int) -> None:
    pipe.hincrby(COUNTERS_KEY, field, amount)


_counts = BufferedCounts(_add_to_hash, name="racine-metrics")


def _client() -> redis.Redis:
    return current_app.extensions["redis"]


class SharedCounter:
    """A counter summed over every process of the service, through Redis.

    `name` is the metric's name without `_total` (prometheus_client adds it, as the
    exposition format wants for counters): `racine_<domain>_<thing>`.
    """

    def __init__(self, name: str, documentation: str, labelnames: Iterable[str] = ()):
        self.name = name.removesuffix("_total")
        self.documentation = documentation
        self.labelnames = tuple(labelnames)

    def inc(self, amount: int = 1, **labels: str) -> None:
        """Count `amount` with these label values; needs an app context, never raises
        for Redis (the count waits for the next flush)."""
        if set(labels) != set(self.labelnames):
            raise ValueError(f"{self.name} takes labels {self.labelnames}, got {tuple(labels)}")
        _counts.add(self._field([str(labels[name]) for name in self.labelnames]), amount,
                    _client)

    def _field(self, values: list[str]) -> str:
        return json.dumps([self.name, values], separators=(",", ":"))

    def family(self, samples: dict[tuple[str, ...], int]) -> CounterMetricFamily:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for values, amount in sorted(samples.items()):
            family.add_metric(list(values), amount)
        return family


class SharedCounters:
    """The collector over the Redis hash: one family per registered SharedCounter."""

    def __init__(self, *, client: redis.Redis):
        self._client = client
        self.counters: dict[str, SharedCounter] = {}

    def add(self, counter: SharedCounter) -> None:
        known = self.counters.get(counter.name)
        if known is not None and known is not counter:
            raise ValueError(f"metric {counter.name} registered twice")
        self.counters[counter.name] = counter

    def collect(self) -> Iterable[Metric]:
        samples: dict[str, dict[tuple[str, ...], int]] = {name: {} for name in self.counters}
        for raw_field, raw_value in self._client.hgetall(COUNTERS_KEY).items():
            try:
                name, values = json.loads(raw_field)
            except (ValueError, TypeError):
                continue  # not a field this version writes
            if name in samples and len(values) == len(self.counters[name].labelnames):
                samples[name][tuple(values)] = int(raw_value)
        for name, counter in self.counters.items():
            yield counter.family(samples[name])


class _Guarded:
    """A collector that yields nothing, rather than failing the scrape, when its store
    is unreachable."""

    def __init__(self, collector):
        self._collector = collector

    def collect(self) -> Iterable[Metric]:
        try:
            families = list(self._collector.collect())
        except (redis.RedisError, SQLAlchemyError) as exc:
            log.warning("metrics collector failed", extra={
                "reason": type(self._collector).__name__, "error": type(exc).__name__})
            return []
        return families


def _state(app: Flask) -> tuple[CollectorRegistry, SharedCounters]:
    state = app.extensions.get(_EXTENSION)
    if state is None:
        shared = SharedCounters(client=app.extensions["redis"])
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Guarded(shared))
        state = app.extensions[_EXTENSION] = (registry, shared)
    return state


def register(app: Flask, *metrics) -> None:
    """Expose `metrics` (SharedCounters or collectors) at this app's `/metrics`."""
    registry, shared = _state(app)
    for metric in metrics:
        if isinstance(metric, SharedCounter):
            shared.add(metric)
        else:
            registry.register(_Guarded(metric))


def registry(app: Flask) -> CollectorRegistry:
    return _state(app)[0]


def flush(client: redis.Redis) -> None:
    """Add this process's counts to Redis now (before a scrape reads them)."""
    _counts.flush(client)


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
    encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
    return Response(encoder(registry(current_app)), content_type=content_type)


def init_app(app: Flask) -> None:
    _counts.every = app.config["METRICS_FLUSH_SECONDS"]
    _state(app)
    app.register_blueprint(bp)
