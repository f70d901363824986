"""Reading what `/metrics` exposes, parsed as Prometheus parses it."""

from __future__ import annotations

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from service import metrics


def samples(text: str, name: str) -> dict[tuple, float]:
    """{sorted (label, value) pairs: value} of the samples called `name`."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                found[tuple(sorted(sample.labels.items()))] = sample.value
    return found


def scraped(app, *, flush_own: bool = False) -> str:
    """What `/metrics` of `app` shows, read from Redis; this process's own counts are
    added first only with `flush_own`."""
    if flush_own:
        metrics.flush(app.extensions["redis"])
    return generate_latest(metrics.registry(app)).decode()
