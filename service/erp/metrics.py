"""`/metrics` of the ERP sync: runs by outcome, the pause flag, the last success's age."""

from __future__ import annotations

import math
from collections.abc import Iterator

from flask import Flask
from prometheus_client.core import GaugeMetricFamily, Metric
from sqlalchemy import func, select

from service.clock import utcnow
from service.erp.models import ErpSyncRun, ErpSyncState, RunStatus
from service.extensions import db
from service.metrics import SharedCounter

SYNC_RUNS = SharedCounter("racine_erp_sync_runs", "ERP stock sync runs by outcome "
                          "(succeeded, failed, skipped).", ("status",))


class ErpSyncCollector:
    """Read at each scrape (two indexed queries), in an app context of its own."""

    def __init__(self, *, app: Flask):
        self._app = app

    def collect(self) -> Iterator[Metric]:
        with self._app.app_context():
            state = db.session.get(ErpSyncState, 1)
            last = db.session.scalar(select(func.max(ErpSyncRun.finished_at))
                                     .where(ErpSyncRun.status == RunStatus.SUCCEEDED))
        yield GaugeMetricFamily("racine_erp_sync_paused", "1 while the ERP stock sync is "
                                "paused.", value=1 if state is not None and state.paused else 0)
        yield GaugeMetricFamily(
            "racine_erp_sync_last_success_age_seconds",
            "Seconds since the last successful ERP stock sync finished (NaN: none yet).",
            value=math.nan if last is None else (utcnow() - last).total_seconds())
