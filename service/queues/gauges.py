"""Queue gauges for /metrics: depth and oldest wait per queue (Flower has neither)."""

from __future__ import annotations

import time

from flask import current_app

from service.celery_app import queues
from service.queues.depth import depths, oldest_wait_seconds


def queue_gauges() -> list[str]:
    client = current_app.extensions["redis"]
    now = time.time()
    lines = ["# HELP racine_queue_depth_jobs Jobs waiting in each queue.",
             "# TYPE racine_queue_depth_jobs gauge"]
    for name, count in depths(client, queues(current_app)).items():
        lines.append(f'racine_queue_depth_jobs{{queue="{name}"}} {count}')
    lines += ["# HELP racine_queue_oldest_wait_seconds Age of the oldest waiting job.",
              "# TYPE racine_queue_oldest_wait_seconds gauge"]
    for name in queues(current_app):
        age = oldest_wait_seconds(client, name, now=now)
        lines.append(f'racine_queue_oldest_wait_seconds{{queue="{name}"}} {age or 0:.3f}')
    return lines
