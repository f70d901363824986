"""`/metrics` gauges of the escalation policy, registered by its `init_app`: incidents
open or acknowledged by severity, and the webhook success ratio over the last hour (the
99.9 % goal's figure)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from datetime import timedelta

from flask import Flask
from prometheus_client.core import GaugeMetricFamily, Metric
from sqlalchemy import func, select

from service.alerts.models import SEVERITIES, Incident, IncidentStatus
from service.alerts.services import payment_events
from service.clock import utcnow
from service.extensions import db


class IncidentCollector:
    """A prometheus_client collector, read at each scrape (two indexed queries).

    The read runs in an app context of its own, so in a session of its own that is closed
    as soon as it is done, whether the scrape comes from a request or not.
    """

    def __init__(self, *, app: Flask):
        self._app = app

    def collect(self) -> Iterator[Metric]:
        with self._app.app_context():
            active = dict(db.session.execute(
                select(Incident.severity, func.count())
                .where(Incident.status.in_(IncidentStatus.ACTIVE))
                .group_by(Incident.severity)).all())
            now = utcnow()
            ratio = payment_events(self._app).outcomes(since=now - timedelta(hours=1),
                                                       until=now).success_ratio
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
