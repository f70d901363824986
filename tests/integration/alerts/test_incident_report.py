"""`flask incidents report` on a known set of incidents and events: counts, MTTA and MTTR
per severity, and whether the P1 MTTR goal (< 30 min) and the 99.9 % webhook success goal
were met in the period."""

from __future__ import annotations

import json
from datetime import datetime, timedelta

import pytest
from sqlalchemy import insert

from service.alerts.models import Incident
from service.clock import utcnow
from service.extensions import db
from tests.support.alerting import add_events


def _incident(severity: str, opened: datetime, *, acked: float | None = None,
              resolved: float | None = None, n: list = [0]) -> dict:  # noqa: B006  (a counter)
    n[0] += 1
    return {"key": f"report:{n[0]}", "rule": "report", "subject": "", "severity": severity,
            "title": "known incident", "details": "{}", "runbook": "",
            "status": "resolved" if resolved is not None else "acknowledged" if acked else "open",
            "condition_since": opened, "opened_at": opened, "last_seen_at": opened,
            "occurrences": 1, "signal_count": 0, "escalation_level": 0, "notified_count": 1,
            "acknowledged_at": None if acked is None else opened + timedelta(minutes=acked),
            "resolved_at": None if resolved is None else opened + timedelta(minutes=resolved)}


@pytest.fixture
def known_period(ctx):
    """Incidents and events of the last 30 days (and some older, outside the period)."""
    now = utcnow()
    day = timedelta(days=1)
    db.session.execute(insert(Incident), [
        _incident("P0", now - 10 * day, acked=4, resolved=20),
        _incident("P0", now - 5 * day, acked=2, resolved=10),
        _incident("P1", now - 9 * day, acked=5, resolved=10),
        _incident("P1", now - 8 * day, acked=5, resolved=20),
        _incident("P1", now - 7 * day, resolved=30),  # resolved by itself, never acknowledged
        _incident("P2", now - 2 * day, acked=30),
        *[_incident("P3", now - 3 * day, resolved=60) for _ in range(4)],
        _incident("P1", now - 40 * day, acked=1, resolved=600),  # before the period
    ])
    db.session.commit()
    add_events(2000, status="processed", received_at=now - 3 * day, processed_at=now - 3 * day)
    add_events(5, status="ignored", received_at=now - 3 * day, processed_at=now - 3 * day)
    add_events(1, status="failed", received_at=now - 4 * day)
    add_events(7, status="queued", received_at=now - timedelta(minutes=1))
    add_events(50, status="failed", received_at=now - 45 * day)
    return now


def test_the_report_gives_count_mtta_mttr_per_severity_and_says_both_goals_were_met(known_period, app):
    result = app.test_cli_runner().invoke(args=["incidents", "report", "--since", "30d", "--json"])

    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["severities"] == {
        "P0": {"incidents": 2, "acknowledged": 2, "resolved": 2, "open": 0,
               "mtta_seconds": 180.0, "mttr_seconds": 900.0},
        "P1": {"incidents": 3, "acknowledged": 2, "resolved": 3, "open": 0,
               "mtta_seconds": 300.0, "mttr_seconds": 1200.0},
        "P2": {"incidents": 1, "acknowledged": 1, "resolved": 0, "open": 1,
               "mtta_seconds": 1800.0, "mttr_seconds": None},
        "P3": {"incidents": 4, "acknowledged": 0, "resolved": 4, "open": 0,
               "mtta_seconds": None, "mttr_seconds": 3600.0},
    }
    assert report["goals"]["p1_mttr"] == {"goal_seconds": 1800, "mttr_seconds": 1200.0,
                                          "resolved": 3, "open_past_goal": [], "met": True}
    assert report["goals"]["webhook_success"] == {
        "target": 0.999, "ratio": round(2005 / 2006, 6), "succeeded": 2005, "failed": 1,
        "outstanding": 7, "met": True}

    text = app.test_cli_runner().invoke(args=["incidents", "report", "--since", "30d"]).output
    assert "P1 MTTR goal (< 30.0 min): met (MTTR 20.0 min over 3 resolved)" in text
    assert "Webhook success goal (>= 99.9%): met (99.9501%: 2005 succeeded, 1 failed" in text


def test_the_report_says_missed_when_a_p1_is_still_open_past_the_goal_or_success_is_low(
        known_period, app):
    db.session.execute(insert(Incident), [
        _incident("P1", known_period - timedelta(hours=2), acked=3)])
    db.session.commit()
    add_events(2, status="failed", received_at=known_period - timedelta(days=1))

    result = app.test_cli_runner().invoke(args=["incidents", "report", "--since", "30d", "--json"])

    assert result.exit_code == 1
    goals = json.loads(result.output)["goals"]
    assert goals["p1_mttr"]["met"] is False
    assert goals["p1_mttr"]["mttr_seconds"] == 1200.0  # the resolved ones alone are fine
    assert len(goals["p1_mttr"]["open_past_goal"]) == 1
    assert (goals["webhook_success"]["failed"], goals["webhook_success"]["met"]) == (3, False)
    text = app.test_cli_runner().invoke(args=["incidents", "report"]).output
    assert "P1 MTTR goal (< 30.0 min): MISSED" in text
    assert "Webhook success goal (>= 99.9%): MISSED (99.8506%" in text


def test_a_report_period_must_be_a_duration(app, clean):
    result = app.test_cli_runner().invoke(args=["incidents", "report", "--since", "last month"])

    assert result.exit_code == 2
    assert "is not a duration like 30m, 1h or 2d" in result.output
