"""Escalation-policy settings, rows and readers shared by the alerts tests.

The channels are the production kinds (`slack://`, `mailto://`, `twilio://`); the tests
point e-mail at a local SMTP server and reach Slack and Twilio through the local
`ProviderProxy` (tests/support/receivers.py).
"""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timedelta

from sqlalchemy import insert

from service.alerts.incidents import evaluate
from service.alerts.models import AlertSignal
from service.extensions import db
from service.webhooks.models import WebhookEvent
from tests.support.db import rows

SLACK_URL = "slack://T0RACINE0/B0ALERTS0/abcdefghijklmnopqrstuvwx"
TWILIO_SID = "AC" + "0123456789abcdef" * 2
SMS_URL = f"twilio://{TWILIO_SID}:{'f' * 32}@+15550100000"
DEVOPS, CTO, LEAD = "devops@racine.test", "cto@racine.test", "lead@racine.test"
DEVOPS_PHONE, CTO_PHONE, LEAD_PHONE = "+15550100001", "+15550100002", "+15550100003"


def alert_env(*, smtp_port: int = 2) -> dict[str, str]:
    """Settings for a process under test: every channel on, beat evaluation off (tests
    evaluate on their own clock)."""
    return {
        "ALERT_SLACK_URL": SLACK_URL,
        "ALERT_EMAIL_URL": f"mailto://127.0.0.1:{smtp_port}?from=alerts@racine.test",
        "ALERT_SMS_URL": SMS_URL,
        "ALERT_RECIPIENTS_P0": f"{DEVOPS},{CTO},{DEVOPS_PHONE},{CTO_PHONE},@devops",
        "ALERT_RECIPIENTS_P1": f"{DEVOPS},{DEVOPS_PHONE},@devops",
        "ALERT_RECIPIENTS_P2": f"{DEVOPS},@devops",
        "ALERT_ESCALATION_CONTACTS": f"{LEAD},{LEAD_PHONE},@lead;{CTO},{CTO_PHONE},@cto",
        "ALERT_EVALUATE_INTERVAL_SECONDS": "0",
        "ALERT_ADMIN_URL": "http://127.0.0.1:8000",
    }


def policy_app(build_app, monkeypatch, **extra_env):
    """Yield an app built with every channel on and the test contact lists (plus
    `extra_env`), inside its app context; for a test module's `policy` fixture."""
    for key, value in {**alert_env(), **extra_env}.items():
        monkeypatch.setenv(key, value)
    app = build_app({})
    with app.app_context():
        yield app
        db.session.rollback()
        db.session.remove()


def add_events(count: int, *, status: str, received_at: datetime,
               processed_at: datetime | None = None, event_type: str = "payment_intent.succeeded"
               ) -> list[int]:
    """Stored provider events in a given state (one INSERT); returns their ids in order."""
    values = [{"provider": "stripe", "event_id": f"evt_{uuid.uuid4().hex}", "event_type": event_type,
               "payload": "{}", "status": status, "attempts": 1, "received_at": received_at,
               "processed_at": processed_at} for _ in range(count)]
    ids = db.session.scalars(insert(WebhookEvent).returning(WebhookEvent.id), values).all()
    db.session.commit()
    return sorted(ids)


def add_signals(count: int, *, kind: str, severity: str, at: datetime, source: str = "stripe:test",
                details: dict | None = None) -> None:
    db.session.execute(insert(AlertSignal), [
        {"severity": severity, "kind": kind, "source": source,
         "details": json.dumps(details or {}), "created_at": at} for _ in range(count)])
    db.session.commit()


def evaluate_at(now: datetime):
    """One evaluation at `now`, committed as the base task commits the beat entry's."""
    report = evaluate(now=now)
    db.session.commit()
    db.session.remove()
    return report


def opened_past_the_p2_hold(t0: datetime, *, rule: str) -> dict:
    """Evaluate just after `t0` (a P2 condition holds 120 s before its incident opens:
    none yet) and past the hold; the rule's one incident, open at P2."""
    evaluate_at(t0 + timedelta(seconds=1))
    assert incidents(rule=rule) == []
    evaluate_at(t0 + timedelta(seconds=125))
    [incident] = incidents(rule=rule)
    assert (incident["severity"], incident["status"]) == ("P2", "open")
    return incident


def incidents(**where) -> list[dict]:
    clause = " AND ".join(f"{column} = :{column}" for column in where) or "TRUE"
    found = rows(f"SELECT * FROM incidents WHERE {clause} ORDER BY id", **where)
    for row in found:
        row["details"] = json.loads(row["details"])
    return found


def notices(incident_id: int) -> list[dict]:
    return rows("SELECT * FROM alert_notifications WHERE incident_id = :i ORDER BY id", i=incident_id)


def deliveries(notification_id: int) -> list[tuple[str, str]]:
    """(channel, target) of a notice's deliveries, sorted."""
    return sorted((r["channel"], r["target"]) for r in rows(
        "SELECT channel, target FROM alert_deliveries WHERE notification_id = :n",
        n=notification_id))


def minutes(start: datetime, count: float) -> datetime:
    return start + timedelta(minutes=count)
