"""Each rule of the escalation policy, against real PostgreSQL and Redis, on a controlled
clock: the condition opens its incident at its severity, with its figures, runbook and the
deliveries its severity calls for (P0 Slack + e-mail + SMS, P1 Slack + e-mail, P2 Slack,
P3 none); just short of the condition, nothing opens.

No worker runs here: the deliveries stay pending (sending is tested in
test_alert_delivery.py). Evaluations run in this process with `now` passed in.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
import redis

from service.alerts.rules import BaseRule, Finding, register_rule
from service.clock import utcnow
from service.queues.publishing import publish
from tests.support.alerting import (
    CTO,
    CTO_PHONE,
    DEVOPS,
    DEVOPS_PHONE,
    add_events,
    add_signals,
    deliveries,
    evaluate_at,
    incidents,
    minutes,
    notices,
    policy_app,
)
from tests.support.db import rows
from tests.support.events import stripe_event, stripe_headers

DEAD_DATABASE_URL = "postgresql+psycopg://postgres@127.0.0.1:1/nowhere"
DEAD_REDIS_URL = "redis://127.0.0.1:1/0"


@pytest.fixture
def policy(build_app, clean, monkeypatch):
    """An app with every channel configured and the test contact lists, in its context."""
    yield from policy_app(build_app, monkeypatch)


def _opened(rule: str) -> dict:
    found = incidents(rule=rule)
    assert len(found) == 1, found
    return found[0]


def _channels_of_opening(incident: dict) -> list[tuple[str, str]]:
    notes = notices(incident["id"])
    assert [n["kind"] for n in notes] == ["opened"]
    return deliveries(notes[0]["id"])


P0_DELIVERIES = sorted([("slack", ""), ("email", DEVOPS), ("email", CTO), ("sms", DEVOPS_PHONE),
                        ("sms", CTO_PHONE)])
P1_DELIVERIES = sorted([("slack", ""), ("email", DEVOPS)])


# -- P0 ----------------------------------------------------------------------------------

def test_payment_events_waiting_with_none_processed_for_five_minutes_open_a_p0(policy):
    t0 = utcnow()
    add_events(3, status="queued", received_at=t0)
    add_events(1, status="processed", received_at=minutes(t0, -20), processed_at=minutes(t0, -19))

    evaluate_at(minutes(t0, 4.9))
    assert incidents() == []

    evaluate_at(minutes(t0, 5.1))

    incident = _opened("payment_stall")
    assert (incident["severity"], incident["runbook"]) == ("P0", "payment_processing_failure")
    assert incident["details"]["events_waiting"] == 3
    assert incident["details"]["oldest_waiting_seconds"] == 306
    assert incident["details"]["processed_in_window"] == 0
    assert incident["condition_since"] == t0
    assert _channels_of_opening(incident) == P0_DELIVERIES


def test_an_event_processed_within_the_window_keeps_the_stall_rule_quiet(policy):
    t0 = utcnow()
    add_events(2, status="queued", received_at=t0)
    add_events(1, status="processed", received_at=t0, processed_at=minutes(t0, 3))

    evaluate_at(minutes(t0, 7.9))
    assert incidents() == []

    evaluate_at(minutes(t0, 8.1))
    incident = _opened("payment_stall")
    assert incident["condition_since"] == minutes(t0, 3)  # processing stopped then


def test_the_last_five_payment_events_failing_open_a_p0(policy):
    t0 = utcnow()
    add_events(1, status="processed", received_at=minutes(t0, -1), processed_at=minutes(t0, -1))
    add_events(4, status="failed", received_at=t0)
    add_events(3, status="ignored", received_at=minutes(t0, 0.5), processed_at=minutes(t0, 0.5))

    evaluate_at(minutes(t0, 1))
    assert incidents() == []  # four failures after a success; ignored types do not count

    failed = add_events(1, status="failed", received_at=minutes(t0, 1))
    evaluate_at(minutes(t0, 1.5))

    incident = _opened("payment_failure_streak")
    assert incident["severity"] == "P0"
    assert incident["details"]["failed_in_a_row"] == 5
    assert failed[0] in incident["details"]["event_ids"]
    assert _channels_of_opening(incident) == P0_DELIVERIES


def test_the_intake_answering_503_for_more_than_a_minute_opens_a_p0(policy, build_app):
    # The intake of an app whose database is unreachable really answers 503 and notes it.
    dead = build_app({"SQLALCHEMY_DATABASE_URI": DEAD_DATABASE_URL})
    client = dead.test_client()
    started = utcnow()
    for _ in range(3):
        body, _event_id = stripe_event("payment_intent.succeeded", {"id": "pi_1"})
        assert client.post("/webhooks/stripe", data=body, headers=stripe_headers(body)).status_code == 503
    t0 = utcnow()

    evaluate_at(t0 + timedelta(seconds=50))
    assert incidents() == []

    evaluate_at(started + timedelta(seconds=61))

    incident = _opened("intake_unavailable")
    assert incident["severity"] == "P0"
    assert incident["details"]["responses_503"] == 3
    assert incident["details"]["last_stored_at"] is None
    assert _channels_of_opening(incident) == P0_DELIVERIES


def test_an_event_stored_after_the_last_503_clears_the_intake_rule(policy, build_app):
    dead = build_app({"SQLALCHEMY_DATABASE_URI": DEAD_DATABASE_URL})
    body, _ = stripe_event("payment_intent.succeeded", {"id": "pi_1"})
    assert dead.test_client().post("/webhooks/stripe", data=body,
                                   headers=stripe_headers(body)).status_code == 503
    body, _ = stripe_event("payment_intent.succeeded", {"id": "pi_2"})
    assert policy.test_client().post("/webhooks/stripe", data=body,
                                     headers=stripe_headers(body)).status_code == 200

    evaluate_at(utcnow() + timedelta(seconds=90))

    assert incidents() == []


# -- P1 ----------------------------------------------------------------------------------

def test_more_than_ten_webhook_failures_in_an_hour_open_a_p1_folding_the_signals_in(policy):
    t0 = utcnow()
    add_signals(10, kind="webhook_failure", severity="P1", at=minutes(t0, -30),
                source="stripe:payment_intent.succeeded")
    add_signals(3, kind="webhook_failure", severity="P1", at=minutes(t0, -61))  # too old

    evaluate_at(t0)
    evaluate_at(minutes(t0, 2))
    assert incidents() == []
    assert rows("SELECT count(*) AS n FROM alert_signals WHERE consumed_at IS NULL")[0]["n"] == 0

    add_signals(1, kind="webhook_failure", severity="P1", at=minutes(t0, 3), source="paypal:X")
    evaluate_at(minutes(t0, 3))
    assert incidents() == []  # P1 holds for a minute before it opens
    evaluate_at(minutes(t0, 4))

    incident = _opened("webhook_failures")
    assert (incident["severity"], incident["runbook"]) == ("P1", "payment_processing_failure")
    assert incident["details"]["failures_last_hour"] == 11
    assert incident["details"]["by_type"] == {"stripe:payment_intent.succeeded": 10, "paypal:X": 1}
    assert _channels_of_opening(incident) == P1_DELIVERIES

    # The failures that make up the incident are folded into it, and later ones too.
    assert incident["signal_count"] == 11
    add_signals(2, kind="webhook_failure", severity="P1", at=minutes(t0, 5))
    evaluate_at(minutes(t0, 5))
    assert incidents()[0]["signal_count"] == 13
    linked = rows("SELECT count(*) AS n FROM alert_signals WHERE incident_id = :i", i=incident["id"])
    assert linked[0]["n"] == 13


@pytest.mark.parametrize(("succeeded", "failed", "fires"), [
    (998, 2, True),     # 99.8 %
    (999, 1, False),    # 99.9 %: the goal itself
    (97, 2, False),     # 98 %, but 99 finished: under the minimum volume of 100
])
def test_webhook_success_under_the_goal_over_the_last_hour_opens_a_p1(policy, succeeded, failed, fires):
    t0 = utcnow()
    add_events(succeeded, status="processed", received_at=minutes(t0, -30),
               processed_at=minutes(t0, -30))
    add_events(failed, status="failed", received_at=minutes(t0, -20))
    add_events(500, status="failed", received_at=minutes(t0, -90))  # outside the hour

    evaluate_at(t0)
    evaluate_at(minutes(t0, 1))

    found = incidents(rule="webhook_success_ratio")
    assert bool(found) is fires
    if fires:
        assert found[0]["severity"] == "P1"
        assert found[0]["details"]["success_ratio"] == 0.998
        assert (found[0]["details"]["succeeded"], found[0]["details"]["failed"]) == (998, 2)
        assert _channels_of_opening(found[0]) == P1_DELIVERIES


@pytest.mark.parametrize(("kind", "severity"), [
    ("payment_underpaid", "P1"), ("payment_currency_mismatch", "P1"),
    ("refund_currency_mismatch", "P1"), ("refund_exceeds_capture", "P1"),
    ("payment_overpaid", "P2"),
])
def test_a_money_safety_signal_opens_an_incident_at_its_severity_with_the_payment_runbook(
        policy, kind, severity):
    t0 = utcnow()
    add_signals(1, kind=kind, severity=severity, at=t0, source="stripe:evt_1",
                details={"order_id": 7, "paid_cents": 900, "total_cents": 1000})

    evaluate_at(t0)
    evaluate_at(minutes(t0, 2))  # past the hold time (P1 1 min, P2 2 min)

    incident = _opened("signals")
    assert (incident["key"], incident["severity"]) == (f"signals:{kind}", severity)
    assert incident["runbook"] == "payment_processing_failure"
    assert incident["details"]["latest"] == {"order_id": 7, "paid_cents": 900, "total_cents": 1000}
    assert incident["signal_count"] == 1
    assert _channels_of_opening(incident) == (P1_DELIVERIES if severity == "P1" else [("slack", "")])


# -- P2, P3 ------------------------------------------------------------------------------

def test_a_queue_deeper_than_1000_opens_a_p2_sent_to_slack_only(policy):
    for n in range(1000):
        assert publish("orders.fulfil", [n], queue="orders")
    t0 = utcnow()
    evaluate_at(t0)
    evaluate_at(minutes(t0, 3))
    assert incidents() == []  # 1000 is the threshold, not above it

    assert publish("orders.fulfil", [1000], queue="orders")
    evaluate_at(minutes(t0, 4))
    evaluate_at(minutes(t0, 6))

    incident = _opened("queue_backlog")
    assert (incident["key"], incident["severity"], incident["runbook"]) == \
        ("queue_backlog:orders", "P2", "queue_overload")
    assert incident["details"]["depth"] == 1001
    assert _channels_of_opening(incident) == [("slack", "")]


def test_a_queue_whose_oldest_job_waited_past_the_threshold_opens_a_p2(policy):
    assert publish("orders.fulfil", [1], queue="orders")
    t0 = utcnow()

    evaluate_at(minutes(t0, 9))
    evaluate_at(minutes(t0, 9.9))
    assert incidents() == []

    evaluate_at(minutes(t0, 10.2))
    evaluate_at(minutes(t0, 12.3))

    incident = _opened("queue_backlog")
    assert incident["details"]["depth"] == 1
    assert incident["details"]["oldest_wait_seconds"] > 600


def test_slow_job_signals_become_p3_incidents_per_task_listed_and_not_sent(policy):
    t0 = utcnow()
    add_signals(2, kind="slow_job", severity="P3", at=t0, source="orders.fulfil",
                details={"runtime_seconds": 41.5})
    add_signals(1, kind="slow_job", severity="P3", at=t0, source="erp.sync_stock")

    evaluate_at(t0)

    found = incidents(rule="slow_jobs")
    assert [(i["key"], i["severity"], i["signal_count"]) for i in found] == [
        ("slow_jobs:erp.sync_stock", "P3", 1), ("slow_jobs:orders.fulfil", "P3", 2)]
    assert all(notices(i["id"]) == [] for i in found)


# -- extension and isolation -------------------------------------------------------------

class ImportFailingRule(BaseRule):
    """What a domain registers (as the ERP package registers erp_sync_failing): here, a
    job failing is a fact the test sets."""

    name = "catalogue_import_failing"
    severity = "P2"
    runbook = "stock_sync_failure"
    summary = "catalogue import failing"

    def __init__(self):
        self.failing_runs = 0

    def evaluate(self, ctx):
        if self.failing_runs < 3:
            return []
        return [Finding(title=f"Catalogue import failing: {self.failing_runs} runs in a row",
                        details={"failed_runs": self.failing_runs})]


def test_a_domain_registers_its_own_rule_and_it_opens_incidents_like_the_others(policy):
    rule = ImportFailingRule()
    register_rule(policy, rule)
    t0 = utcnow()
    evaluate_at(t0)
    rule.failing_runs = 3

    evaluate_at(minutes(t0, 1))
    evaluate_at(minutes(t0, 3))

    incident = _opened("catalogue_import_failing")
    assert (incident["severity"], incident["runbook"]) == ("P2", "stock_sync_failure")
    with pytest.raises(ValueError, match="registered twice"):
        register_rule(policy, ImportFailingRule())


def test_a_rule_that_fails_neither_silences_the_others_nor_clears_its_incidents(policy):
    assert publish("orders.fulfil", [1], queue="orders")
    t0 = utcnow()
    evaluate_at(minutes(t0, 11))
    evaluate_at(minutes(t0, 13))
    backlog = _opened("queue_backlog")
    add_events(5, status="failed", received_at=minutes(t0, 13))
    # Redis becomes unreachable for the evaluation: the rules that read it fail.
    policy.extensions["redis"] = redis.Redis.from_url(DEAD_REDIS_URL, socket_connect_timeout=0.5)

    report = evaluate_at(minutes(t0, 30))

    assert report.errors == {"intake_unavailable": "ConnectionError",
                             "queue_backlog": "ConnectionError",
                             "webhook_loop": "ConnectionError"}  # the webhooks domain's rule
    assert report.exit_code == 2
    assert incidents(id=backlog["id"])[0]["status"] == "open"
    assert incidents(id=backlog["id"])[0]["cleared_at"] is None
    assert _opened("payment_failure_streak")["severity"] == "P0"
