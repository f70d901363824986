"""`/metrics` gauges of the escalation policy: active incidents by severity, and the
webhook success ratio over the last hour.

`IncidentCollector` is a prometheus_client collector (to be registered with the metrics
registry where there is one); `alert_gauges` renders it for the `metrics_collectors` hook.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from datetime import timedelta

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError

from service.alerts.models import SEVERITIES, Incident, IncidentStatus
from service.db_types import utcnow
from service.extensions import db
from service.webhooks import stats

log = logging.getLogger(__name__)


class IncidentCollector:
    """Read at each scrape (two indexed queries)."""

    def collect(self) -> Iterator[Metric]:
        try:
            active = dict(db.session.execute(
                select(Incident.severity, func.count())
                .where(Incident.status.in_(IncidentStatus.ACTIVE))
                .group_by(Incident.severity)).all())
            now = utcnow()
            ratio = stats.outcomes(since=now - timedelta(hours=1), until=now).success_ratio
        finally:
            db.session.rollback()
        incidents = GaugeMetricFamily("racine_alerts_open_incidents",
                                      "Incidents open or acknowledged, by severity.",
                                      labels=["severity"])
        for severity in SEVERITIES:
            incidents.add_metric([severity], active.get(severity, 0))
        yield incidents
        yield GaugeMetricFamily(
            "racine_webhooks_success_ratio",
            "Events received in the last hour that finished successfully, of those that "
            "finished (NaN when none finished).",
            value=math.nan if ratio is None else ratio)


def alert_gauges() -> list[str]:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(IncidentCollector())
    try:
        return generate_latest(registry).decode().splitlines()
    except SQLAlchemyError:
        log.warning("alert gauges unavailable: database error")
        return []
