"""Queue gauges for /metrics: depth and oldest wait per queue (Flower has neither)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

import redis
from prometheus_client.core import GaugeMetricFamily, Metric

from service.queues.depth import depths, oldest_wait_seconds


class QueueGauges:
    """A prometheus_client collector reading every declared queue from the broker."""

    def __init__(self, *, client: redis.Redis, queues: Callable[[], Iterable[str]]):
        self._client = client
        self._queues = queues

    def collect(self) -> Iterable[Metric]:
        names = list(self._queues())
        now = time.time()
        depth = GaugeMetricFamily("racine_queue_depth_jobs", "Jobs waiting in each queue.",
                                  labels=("queue",))
        for name, count in depths(self._client, names).items():
            depth.add_metric([name], count)
        wait = GaugeMetricFamily("racine_queue_oldest_wait_seconds",
                                 "Age of the oldest waiting job (0 when the queue is empty).",
                                 labels=("queue",))
        for name in names:
            wait.add_metric([name], round(oldest_wait_seconds(self._client, name, now=now) or 0, 3))
        return [depth, wait]
