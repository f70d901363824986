"""`/metrics` gauges of the escalation policy: active incidents by severity, and the
webhook success ratio over the last hour."""

from __future__ import annotations

import logging
from datetime import timedelta

from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError

from service.alerts.models import SEVERITIES, Incident, IncidentStatus
from service.db_types import utcnow
from service.extensions import db
from service.webhooks import stats

log = logging.getLogger(__name__)


def alert_gauges() -> list[str]:
    try:
        active = dict(db.session.execute(
            select(Incident.severity, func.count())
            .where(Incident.status.in_(IncidentStatus.ACTIVE)).group_by(Incident.severity)).all())
        now = utcnow()
        ratio = stats.outcomes(since=now - timedelta(hours=1), until=now).success_ratio
        db.session.rollback()
    except SQLAlchemyError:
        db.session.rollback()
        log.warning("alert gauges unavailable: database error")
        return []
    lines = ["# HELP racine_alerts_open_incidents Incidents open or acknowledged, by severity.",
             "# TYPE racine_alerts_open_incidents gauge"]
    lines += [f'racine_alerts_open_incidents{{severity="{sev}"}} {active.get(sev, 0)}'
              for sev in SEVERITIES]
    lines += ["# HELP racine_webhooks_success_ratio Events received in the last hour that "
              "finished successfully, of those that finished (NaN when none finished).",
              "# TYPE racine_webhooks_success_ratio gauge",
              f"racine_webhooks_success_ratio {'NaN' if ratio is None else f'{ratio:.6f}'}"]
    return lines
