"""Notices sent for real: a Celery worker sends them through the production channel
kinds (apprise `slack://`, `mailto://`, `twilio://`) to local receivers: an aiosmtpd SMTP
server, and a local HTTPS proxy that answers for hooks.slack.com and api.twilio.com (the
worker gets HTTPS_PROXY and the proxy's CA in REQUESTS_CA_BUNDLE; its channel URLs are
unchanged). The worker also runs beat, whose outbox relay publishes the deliveries.
"""

from __future__ import annotations

import base64
import json

import pytest

from service.clock import utcnow
from service.extensions import db
from tests.support.alerting import (
    CTO,
    CTO_PHONE,
    DEVOPS,
    DEVOPS_PHONE,
    LEAD,
    LEAD_PHONE,
    TWILIO_SID,
    add_events,
    alert_env,
    evaluate_at,
    incidents,
    minutes,
    notices,
)
from tests.support.db import rows
from tests.support.events import stripe_event, stripe_headers
from tests.support.processes import start_worker
from tests.support.receivers import ProviderProxy, SmtpReceiver
from tests.support.waiting import wait_until

SLACK_HOST, TWILIO_HOST = "hooks.slack.com", "api.twilio.com"
SEND_SETTINGS = {"ALERT_SEND_BACKOFF_SECONDS": "1", "ALERT_SEND_BACKOFF_MAX_SECONDS": "2",
                 "ALERT_SEND_MAX_ATTEMPTS": "10"}


@pytest.fixture(scope="module")
def receivers(tmp_path_factory):
    proxy = ProviderProxy(tmp_path_factory.mktemp("providers"))
    smtp = SmtpReceiver().start()
    yield proxy, smtp
    proxy.close()
    smtp.stop()


@pytest.fixture(scope="module")
def worker(service_env, receivers, tmp_path_factory):
    proxy, smtp = receivers
    proc = start_worker(tmp_path_factory.mktemp("alerts-worker"), queues="webhooks,default",
                        concurrency=2, beat=True, name="alerts",
                        env={**alert_env(smtp_port=smtp.port), **SEND_SETTINGS, **proxy.env()})
    yield proc
    proc.stop()


@pytest.fixture
def policy(build_app, clean, receivers, worker, monkeypatch):
    proxy, smtp = receivers
    for key, value in {**alert_env(smtp_port=smtp.port), **SEND_SETTINGS}.items():
        monkeypatch.setenv(key, value)
    proxy.received.clear()
    smtp.messages.clear()
    if smtp._controller is None:
        smtp.start()
    app = build_app({})
    with app.app_context():
        yield app
        db.session.rollback()
        db.session.remove()


def _deliveries(notification_id: int) -> list[dict]:
    return rows("SELECT * FROM alert_deliveries WHERE notification_id = :n ORDER BY id",
                n=notification_id)


def _all_sent(notification_id: int, count: int):
    found = _deliveries(notification_id)
    return len(found) == count and all(d["status"] == "sent" for d in found)


def _emails_to(smtp: SmtpReceiver, address: str) -> list:
    return [message for recipients, message in smtp.messages if recipients == [address]]


def _text(message) -> str:
    return message.get_body(preferencelist=("plain",)).get_content()


def test_a_p0_from_real_failures_is_sent_escalated_and_resolved_through_every_channel(
        policy, receivers, worker):
    proxy, smtp = receivers
    client = policy.test_client()
    for _ in range(5):
        body, _ = stripe_event("test.broken", {"id": "obj_1"})
        assert client.post("/webhooks/stripe", data=body, headers=stripe_headers(body)).status_code == 200
    wait_until(lambda: len(rows("SELECT id FROM webhook_events WHERE status = 'failed'")) == 5,
               30, "five failed events", logs=(worker,))
    t0 = utcnow()

    report = evaluate_at(t0)

    assert report.signals_consumed == 5
    incident = incidents(rule="payment_failure_streak")[0]
    assert incident["signal_count"] == 0  # the failure signals belong to the P1 failure rule
    opened = notices(incident["id"])[0]
    wait_until(lambda: _all_sent(opened["id"], 5), 30, "the P0 notice sent 5 ways", logs=(worker,))

    slack = proxy.requests_to(SLACK_HOST)
    assert len(slack) == 1
    assert slack[0].path == "/services/T0RACINE0/B0ALERTS0/abcdefghijklmnopqrstuvwx"
    posted = slack[0].json()["attachments"][0]
    assert posted["title"] == opened["title"]
    assert opened["title"].startswith("[P0] Payment processing failing")
    for needed in ("Severity: P0 (critical)", "failed_in_a_row: 5", "Since: ",
                   "flask runbook run payment_processing_failure",
                   f"flask incidents ack {incident['id']}", "cc @devops"):
        assert needed in posted["text"], needed

    for address in (DEVOPS, CTO):
        (mail,) = _emails_to(smtp, address)
        assert mail["Subject"] == opened["title"]
        assert "failed_in_a_row: 5" in _text(mail)
        assert "flask runbook run payment_processing_failure --execute" in _text(mail)

    sms = proxy.requests_to(TWILIO_HOST)
    assert sorted(r.form()["To"] for r in sms) == [DEVOPS_PHONE, CTO_PHONE]
    assert all(r.path == f"/2010-04-01/Accounts/{TWILIO_SID}/Messages.json" for r in sms)
    assert base64.b64decode(sms[0].headers["Authorization"].split()[1]).decode().startswith(TWILIO_SID)
    assert "failed_in_a_row=5" in sms[0].form()["Body"]
    assert f"Ack: flask incidents ack {incident['id']}" in sms[0].form()["Body"]

    # Unacknowledged for 5 minutes: the next contact list is paged.
    evaluate_at(minutes(t0, 5))
    escalated = notices(incident["id"])[1]
    wait_until(lambda: _all_sent(escalated["id"], 3), 30, "the escalation sent", logs=(worker,))
    (lead_mail,) = _emails_to(smtp, LEAD)
    assert "ESCALATED to level 1" in lead_mail["Subject"]
    assert [r.form()["To"] for r in proxy.requests_to(TWILIO_HOST)][-1] == LEAD_PHONE

    # A payment goes through: the condition clears, and five minutes later it resolves.
    add_events(1, status="processed", received_at=minutes(t0, 6), processed_at=minutes(t0, 6))
    evaluate_at(minutes(t0, 6))
    evaluate_at(minutes(t0, 11))
    resolved = notices(incident["id"])[2]
    assert resolved["kind"] == "resolved"
    # Everyone paged so far hears of it: Slack, three e-mails, three phones.
    wait_until(lambda: _all_sent(resolved["id"], 7), 30, "the resolved notice", logs=(worker,))
    assert "[P0 RESOLVED]" in proxy.requests_to(SLACK_HOST)[-1].json()["attachments"][0]["title"]
    assert len(_emails_to(smtp, CTO)) == 2


def test_a_channel_that_is_down_holds_up_no_other_and_is_retried_until_it_delivers(
        policy, receivers, worker):
    proxy, smtp = receivers
    smtp.stop()
    proxy.fail_next(TWILIO_HOST, 2)
    t0 = utcnow()
    add_events(5, status="failed", received_at=t0)

    evaluate_at(t0)

    notice = notices(incidents()[0]["id"])[0]
    by_channel = lambda: {(d["channel"], d["target"]): d for d in _deliveries(notice["id"])}  # noqa: E731
    wait_until(lambda: by_channel()[("slack", "")]["status"] == "sent", 20, "Slack sent",
               logs=(worker,))
    # SMS refused twice by the provider, then accepted on a later attempt.
    wait_until(lambda: all(by_channel()[("sms", p)]["status"] == "sent"
                           for p in (DEVOPS_PHONE, CTO_PHONE)), 30, "SMS sent", logs=(worker,))
    wait_until(lambda: by_channel()[("email", DEVOPS)]["attempts"] >= 2, 30,
               "e-mail retried", logs=(worker,))
    email = by_channel()[("email", DEVOPS)]
    assert email["status"] in ("retrying", "sending")
    assert "email:" in email["last_error"] and DEVOPS not in email["last_error"]

    smtp.start()  # the mail server is back, on the same port
    wait_until(lambda: all(by_channel()[("email", a)]["status"] == "sent" for a in (DEVOPS, CTO)),
               30, "e-mail sent once the server is back", logs=(worker,))
    assert len(_emails_to(smtp, DEVOPS)) == 1

    attempts = rows(
        "SELECT d.channel, a.attempt, a.outcome, a.error FROM alert_delivery_attempts a"
        " JOIN alert_deliveries d ON d.id = a.delivery_id WHERE d.target = :t ORDER BY a.attempt",
        t=DEVOPS)
    assert [a["outcome"] for a in attempts][-1] == "sent"
    assert {a["outcome"] for a in attempts[:-1]} == {"failed"}
    assert all(a["error"] and DEVOPS not in a["error"] for a in attempts[:-1])
    sms_attempts = rows(
        "SELECT a.outcome FROM alert_delivery_attempts a JOIN alert_deliveries d"
        " ON d.id = a.delivery_id WHERE d.channel = 'sms' ORDER BY a.id")
    assert [a["outcome"] for a in sms_attempts].count("failed") == 2
    assert len(proxy.requests_to(SLACK_HOST)) == 1


def test_flask_alerts_test_sends_through_the_real_channels_and_says_how_each_went(
        policy, receivers, monkeypatch):
    proxy, smtp = receivers
    for key, value in proxy.env().items():
        monkeypatch.setenv(key, value)
    runner = policy.test_cli_runner()

    result = runner.invoke(args=["alerts", "test", "--severity", "P1", "--json"])

    assert result.exit_code == 0, result.output
    assert len(proxy.requests_to(SLACK_HOST)) == 1
    assert "[P1 TEST]" in proxy.requests_to(SLACK_HOST)[0].json()["attachments"][0]["title"]
    assert len(_emails_to(smtp, DEVOPS)) == 1
    assert proxy.requests_to(TWILIO_HOST) == []  # P1 is not sent by SMS

    smtp.stop()
    failed = runner.invoke(args=["alerts", "test", "--severity", "P0"])

    assert failed.exit_code == 1
    assert "email" in failed.output and "failed" in failed.output
    assert [r.form()["To"] for r in proxy.requests_to(TWILIO_HOST)] == [DEVOPS_PHONE, CTO_PHONE]


def test_with_the_database_unreachable_the_beat_task_pages_p0_directly_once_per_interval(
        policy, receivers, build_app, monkeypatch):
    from service.alerts import tasks

    proxy, smtp = receivers
    for key, value in proxy.env().items():
        monkeypatch.setenv(key, value)
    dead = build_app({"SQLALCHEMY_DATABASE_URI": "postgresql+psycopg://postgres@127.0.0.1:1/nowhere"})
    body, _ = stripe_event("payment_intent.succeeded", {"id": "pi_1"})
    assert dead.test_client().post("/webhooks/stripe", data=body,
                                   headers=stripe_headers(body)).status_code == 503

    with dead.app_context():
        first = tasks.evaluate.run()
        second = tasks.evaluate.run()

    assert first == {"paged": True, "sent": ["slack", "email", "email", "sms", "sms"], "failed": []}
    assert second["paged"] is False
    (posted,) = proxy.requests_to(SLACK_HOST)
    attachment = posted.json()["attachments"][0]
    assert attachment["title"].startswith("[P0] Database unreachable")
    assert "intake answered 503 to 1 deliveries" in attachment["text"]
    assert "flask runbook run payment_processing_failure" in attachment["text"]
    assert len(_emails_to(smtp, CTO)) == 1
    assert sorted(r.form()["To"] for r in proxy.requests_to(TWILIO_HOST)) == [DEVOPS_PHONE, CTO_PHONE]


def test_a_delivery_is_sent_once_however_often_its_job_runs_and_a_lost_send_is_taken_over(
        policy, receivers, worker, monkeypatch):
    from sqlalchemy import text

    from service.alerts.notify import deliver, notify_test

    proxy, _smtp = receivers
    for key, value in proxy.env().items():
        monkeypatch.setenv(key, value)
    first = notify_test(severity="P2")  # Slack only, not queued
    second = notify_test(severity="P2")
    db.session.commit()
    first_id, second_id = first.id, second.id
    (once,) = _deliveries(first_id)
    (lost,) = _deliveries(second_id)

    outcomes = [deliver(once["id"]).status for _ in range(3)]

    assert outcomes == ["sent", "skipped", "skipped"]
    assert len(proxy.requests_to(SLACK_HOST)) == 1

    # A worker died while sending: the row says "sending" and its lease has run out.
    db.session.execute(text("UPDATE alert_deliveries SET status = 'sending', attempts = 1,"
                            " lease_until = :past WHERE id = :id"),
                       {"past": minutes(utcnow(), -1), "id": lost["id"]})
    db.session.commit()
    report = evaluate_at(utcnow())

    assert report.deliveries_requeued == 1
    wait_until(lambda: _all_sent(second_id, 1), 20, "the lost send taken over", logs=(worker,))
    assert _deliveries(second_id)[0]["attempts"] == 2
    assert len(proxy.requests_to(SLACK_HOST)) == 2


def test_an_email_channel_without_listed_addresses_sends_to_its_urls_own_recipient_or_says_so(
        clean, receivers, build_app, monkeypatch):
    """ALERT_RECIPIENTS_P1 lists no e-mail address: the e-mail URL's own `to=` receives the
    notice; without one, `flask alerts test` says the channel reaches no one and exits 1."""
    proxy, smtp = receivers
    if smtp._controller is None:
        smtp.start()
    smtp.messages.clear()
    oncall = "oncall@racine.test"
    for key, value in {**alert_env(smtp_port=smtp.port), **SEND_SETTINGS, **proxy.env(),
                       "ALERT_RECIPIENTS_P1": "@devops",
                       "ALERT_EMAIL_URL": f"mailto://127.0.0.1:{smtp.port}"
                                          f"?from=alerts@racine.test&to={oncall}"}.items():
        monkeypatch.setenv(key, value)

    named = build_app({}).test_cli_runner().invoke(args=["alerts", "test", "--severity", "P1"])

    assert named.exit_code == 0, named.output
    assert len(_emails_to(smtp, oncall)) == 1

    monkeypatch.setenv("ALERT_EMAIL_URL", f"mailto://127.0.0.1:{smtp.port}?from=alerts@racine.test")
    unnamed = build_app({}).test_cli_runner().invoke(
        args=["alerts", "test", "--severity", "P1", "--json"])

    assert unnamed.exit_code == 1, unnamed.output
    assert json.loads(unnamed.stdout)["channels_without_recipient"] == ["email"]
    assert len(_emails_to(smtp, oncall)) == 1  # nothing more was sent
