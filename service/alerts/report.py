"""The responders' report: incidents per severity with MTTA and MTTR, and the goals.

Counted over incidents opened in the period. MTTA is the mean time from opening to the
first acknowledgement (incidents resolved without one are not in it); MTTR the mean time
from opening to resolution. The P1 goal is met when the P1 MTTR is under
ALERT_MTTR_GOAL_SECONDS (30 min) and no P1 still open has been open longer than that;
the webhook goal when at least ALERT_SUCCESS_TARGET of the events received in the period
that finished, finished successfully.
"""

from __future__ import annotations

from datetime import datetime
from statistics import mean

from flask import current_app
from sqlalchemy import select

from service.alerts.models import SEVERITIES, Incident, IncidentStatus
from service.alerts.services import payment_events
from service.extensions import db


def _seconds(pairs) -> float | None:
    values = [(end - start).total_seconds() for start, end in pairs if end is not None]
    return round(mean(values), 1) if values else None


def incident_report(*, since: datetime, until: datetime) -> dict:
    config = current_app.config
    rows = db.session.scalars(select(Incident).where(Incident.opened_at >= since,
                                                     Incident.opened_at <= until)).all()
    severities = {}
    for sev in SEVERITIES:
        mine = [i for i in rows if i.severity == sev]
        severities[sev] = {
            "incidents": len(mine),
            "acknowledged": sum(1 for i in mine if i.acknowledged_at is not None),
            "resolved": sum(1 for i in mine if i.status == IncidentStatus.RESOLVED),
            "open": sum(1 for i in mine if i.status != IncidentStatus.RESOLVED),
            "mtta_seconds": _seconds((i.opened_at, i.acknowledged_at) for i in mine),
            "mttr_seconds": _seconds((i.opened_at, i.resolved_at) for i in mine),
        }

    goal = config["ALERT_MTTR_GOAL_SECONDS"].get("P1", 1800)
    p1 = severities["P1"]
    overdue = [i.id for i in rows if i.severity == "P1" and i.status != IncidentStatus.RESOLVED
               and (until - i.opened_at).total_seconds() >= goal]
    p1_met = (p1["mttr_seconds"] is None or p1["mttr_seconds"] < goal) and not overdue

    target = config["ALERT_SUCCESS_TARGET"]
    seen = payment_events(current_app).outcomes(since=since, until=until)
    ratio = seen.success_ratio
    return {
        "since": since.isoformat() + "Z",
        "until": until.isoformat() + "Z",
        "severities": severities,
        "goals": {
            "p1_mttr": {"goal_seconds": goal, "mttr_seconds": p1["mttr_seconds"],
                        "resolved": p1["resolved"], "open_past_goal": overdue, "met": p1_met},
            "webhook_success": {"target": target,
                                "ratio": None if ratio is None else round(ratio, 6),
                                "succeeded": seen.succeeded, "failed": seen.failed,
                                "outstanding": seen.outstanding,
                                # No finished event: nothing failed, the goal holds.
                                "met": ratio is None or ratio >= target},
        },
    }
