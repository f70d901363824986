"""What a notice says, and the escalation policy's settings: no server needed."""

from __future__ import annotations

import json
from datetime import datetime

import pytest

from service.alerts.models import Incident
from service.alerts.notify import backoff_seconds, compose
from service.config import _alert_settings

OPENED = datetime(2026, 11, 29, 16, 42, 0)
CONFIG = {"ALERT_RESPONSE_SECONDS": {"P0": 300, "P1": 900, "P2": 3600},
          "ALERT_ADMIN_URL": "https://racine.example", "ALERT_SEND_BACKOFF_SECONDS": 30,
          "ALERT_SEND_BACKOFF_MAX_SECONDS": 900}


def _incident(**overrides) -> Incident:
    fields = {"id": 42, "key": "webhook_failures", "rule": "webhook_failures", "subject": "",
              "severity": "P1",
              "title": "Webhook failures: 14 in the last hour (threshold 10)",
                  "details": json.dumps({"failures_last_hour": 14, "threshold": 10,
                                      "by_type": {"stripe:payment_intent.succeeded": 14}}),
                  "runbook": "payment_processing_failure", "status": "open",
                  "condition_since": datetime(2026, 11, 29, 16, 40, 5), "opened_at": OPENED,
                  "last_seen_at": datetime(2026, 11, 29, 16, 44, 0), "occurrences": 3,
                  "escalation_level": 0, "notified_count": 0, "signal_count": 14}
    fields.update(overrides)
    return Incident(**fields)


def test_an_opening_notice_says_severity_figures_since_runbook_command_and_how_to_ack():
    message = compose(_incident(), kind="opened", level=0, config=CONFIG, now=OPENED)

    assert message.title == ("[P1] Webhook failures: 14 in the last hour (threshold 10) "
                             "(incident #42)")
    body = message.body
    assert "Severity: P1 (high), respond within 15 min" in body
    assert "failures_last_hour: 14" in body and "threshold: 10" in body
    assert '"stripe:payment_intent.succeeded": 14' in body
    assert "Since: 2026-11-29 16:40:05 UTC" in body
    assert "seen 3 times" in body
    assert "flask runbook run payment_processing_failure\n" in body
    assert "flask runbook run payment_processing_failure --execute" in body
    assert 'flask incidents ack 42 --reason "..."' in body
    assert ("POST https://racine.example/api/admin/incidents/42/ack with an operator's token "
            'and the JSON body {"reason": "..."}') in body


def test_a_queue_backlog_notice_runs_the_queue_runbook_on_that_queue():
    incident = _incident(key="queue_backlog:orders", rule="queue_backlog", subject="orders",
                         severity="P2", runbook="queue_overload", title="Queue orders: depth 1500")
    message = compose(incident, kind="opened", level=0, config=CONFIG, now=OPENED)

    assert "  diagnose: flask runbook run queue_overload -p queue orders\n" in message.body
    assert "  apply the fix: flask runbook run queue_overload -p queue orders --execute" in message.body
    assert "Runbook: flask runbook run queue_overload -p queue orders." in message.short_body


def test_the_sms_form_keeps_severity_figures_since_runbook_and_ack_in_one_short_text():
    short = compose(_incident(severity="P0"), kind="opened", level=0, config=CONFIG,
                    now=OPENED).short_body

    assert short.startswith("[P0] Webhook failures")
    assert "failures_last_hour=14" in short and "threshold=10" in short
    assert "Since 2026-11-29 16:40:05 UTC" in short
    assert "flask runbook run payment_processing_failure" in short
    assert short.endswith("Ack: flask incidents ack 42")
    assert len(short) < 320


def test_an_escalation_notice_names_the_level_and_the_missed_response_time():
    message = compose(_incident(escalation_level=1), kind="escalated", level=1, config=CONFIG,
                      now=OPENED, mentions=("@lead",))

    assert message.title.startswith("[P1 ESCALATED to level 1] ")
    assert "Not acknowledged within 15 min: now with contact list 1." in message.body
    assert message.body.endswith("cc @lead")


def test_a_resolved_notice_says_who_resolved_it_and_for_how_long_it_was_open_and_no_ack():
    incident = _incident(status="resolved", resolved_at=datetime(2026, 11, 29, 17, 5, 0),
                         resolved_by="system:alerts", resolve_reason="condition clear")

    message = compose(incident, kind="resolved", level=0, config=CONFIG, now=OPENED)

    assert message.title.startswith("[P1 RESOLVED] ")
    assert ("Resolved: 2026-11-29 17:05:00 UTC by system:alerts (condition clear), "
            "open for 23 min") in message.body
    assert "Acknowledge" not in message.body and "Ack:" not in message.short_body


def test_an_incident_type_without_runbook_says_so_instead_of_a_command():
    message = compose(_incident(runbook=""), kind="opened", level=0, config=CONFIG, now=OPENED)

    assert "Runbook: none for this incident type; see flask incidents show 42" in message.body
    assert "flask runbook run" not in message.body


def test_send_retries_back_off_exponentially_up_to_the_cap():
    assert [backoff_seconds(n, CONFIG) for n in range(1, 8)] == [30, 60, 120, 240, 480, 900, 900]


def test_alert_settings_read_per_severity_maps_contacts_and_recipients(monkeypatch):
    monkeypatch.setenv("ALERT_RESPONSE_SECONDS", "P1=600, p2=1800")
    monkeypatch.setenv("ALERT_RECIPIENTS_P0", "devops@racine.example, +15550100001")
    monkeypatch.setenv("ALERT_ESCALATION_CONTACTS", "lead@racine.example,+15550100003; cto@racine.example")
    monkeypatch.delenv("ALERT_RECIPIENTS_P1", raising=False)

    settings = _alert_settings()

    assert settings["ALERT_RESPONSE_SECONDS"] == {"P0": 300, "P1": 600, "P2": 1800}
    assert settings["ALERT_RECIPIENTS"]["P0"] == ["devops@racine.example", "+15550100001"]
    assert settings["ALERT_RECIPIENTS"]["P1"] == []
    assert "P3" not in settings["ALERT_RECIPIENTS"]  # P3 is only logged
    assert settings["ALERT_ESCALATION_CONTACTS"] == [["lead@racine.example", "+15550100003"],
                                                     ["cto@racine.example"]]


@pytest.mark.parametrize("value", ["P1:600", "P5=10", "P1=soon", "P1=-5"])
def test_a_malformed_per_severity_setting_is_refused_with_its_name(monkeypatch, value):
    monkeypatch.setenv("ALERT_HOLD_SECONDS", value)

    with pytest.raises(ValueError, match="ALERT_HOLD_SECONDS"):
        _alert_settings()
