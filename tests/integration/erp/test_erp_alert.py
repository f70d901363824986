"""The "ERP sync failing" rule (P2, runbook stock_sync_failure) on a controlled clock:
failed syncs against the stand-in open its incident after the P2 hold; a successful sync
clears it and the incident resolves after the clear time; a sync that has not succeeded
for too long opens it too, unless the sync is paused."""

from __future__ import annotations

from datetime import timedelta

import pytest

from service.alerts.rules import registered_rules
from service.audit.actor import Actor
from service.clock import utcnow
from service.erp import services
from service.erp.models import ErpSyncRun, RunStatus
from service.extensions import db
from tests.support.alerting import (
    add_signals,
    deliveries,
    evaluate_at,
    incidents,
    notices,
    opened_past_the_p2_hold,
    policy_app,
)
from tests.support.erp import add_products, erp_items, erp_settings

ACTOR = Actor.system("tests")


@pytest.fixture
def policy(build_app, clean, standin, monkeypatch):
    """An app with the alert channels on and the ERP at the stand-in, in its context."""
    settings = {key: str(value) for key, value in erp_settings(standin).items()}
    yield from policy_app(build_app, monkeypatch, **settings, ERP_ALERT_FAILED_RUNS="3",
                          ERP_ALERT_STALE_SECONDS="1800")


def _sync():
    return services.sync_now(trigger="beat", actor=ACTOR)


def _erp_incidents() -> list[dict]:
    return incidents(rule="erp_sync_failing")


def test_the_rule_is_registered_by_the_erp_domain(policy):
    [rule] = [r for r in registered_rules(policy) if r.name == "erp_sync_failing"]

    assert (rule.severity, rule.runbook, rule.signal_kinds) == (
        "P2", "stock_sync_failure", ("erp_sync_failed",))


def test_three_failed_syncs_open_a_p2_that_resolves_after_a_success(policy, standin):
    add_products(("SKU-A", 1))
    erp_items(standin, {"SKU-A": 2})
    standin.fail_next("500", times=3)
    assert [_sync().status for _ in range(3)] == [RunStatus.FAILED] * 3
    t0 = utcnow()

    incident = opened_past_the_p2_hold(t0, rule="erp_sync_failing")
    assert incident["runbook"] == "stock_sync_failure"
    assert incident["title"] == ("ERP sync failing: the last 3 runs failed "
                                 "(latest: ERP /stock answered 500)")
    assert [r["status"] for r in incident["details"]["latest_runs"]] == ["failed"] * 3
    [opened] = notices(incident["id"])
    assert deliveries(opened["id"]) == [("slack", "")]  # P2: Slack

    assert _sync().status == RunStatus.SUCCEEDED
    evaluate_at(t0 + timedelta(seconds=130))
    assert _erp_incidents()[0]["status"] == "open"  # clear, not yet for the clear time

    evaluate_at(t0 + timedelta(seconds=130 + 301))
    [resolved] = _erp_incidents()
    assert resolved["status"] == "resolved" and resolved["resolved_by"] == "system:alerts"


def test_two_failures_after_a_success_are_not_yet_failing(policy, standin):
    assert _sync().status == RunStatus.SUCCEEDED
    standin.fail_next("500", times=2)
    _sync(), _sync()

    evaluate_at(utcnow() + timedelta(minutes=5))

    assert _erp_incidents() == []


def _old_success(minutes_ago: int) -> None:
    at = utcnow() - timedelta(minutes=minutes_ago)
    db.session.add(ErpSyncRun(trigger="beat", actor="system:erp", status=RunStatus.SUCCEEDED,
                              started_at=at, finished_at=at + timedelta(seconds=2)))
    db.session.commit()


def test_no_successful_sync_for_too_long_opens_the_incident(policy):
    _old_success(minutes_ago=40)
    now = utcnow()

    evaluate_at(now)
    evaluate_at(now + timedelta(seconds=121))

    [incident] = _erp_incidents()
    assert incident["title"] == "ERP sync failing: no successful sync for 41 min"  # 40 + 2
    assert incident["details"]["paused"] is False


def test_a_paused_sync_is_expected_to_be_behind(policy):
    _old_success(minutes_ago=40)
    services.pause(actor=ACTOR, reason="ERP maintenance")
    db.session.commit()
    now = utcnow()

    evaluate_at(now)
    evaluate_at(now + timedelta(seconds=121))

    assert _erp_incidents() == []


def test_erp_sync_failed_signals_fold_into_the_rules_incident_and_open_none_of_their_own(
        policy, standin):
    """One path to an ERP incident: the rule. A runbook's `erp_sync_failed` signal adds to
    the incident the rule opened; without one it opens nothing."""
    t0 = utcnow()
    add_signals(1, kind="erp_sync_failed", severity="P2", at=t0, source="runbook")
    evaluate_at(t0 + timedelta(seconds=1))
    evaluate_at(t0 + timedelta(minutes=3))
    assert incidents() == []

    standin.fail_next("500", times=3)
    for _ in range(3):
        _sync()
    t1 = utcnow()
    evaluate_at(t1 + timedelta(seconds=1))
    evaluate_at(t1 + timedelta(seconds=125))
    add_signals(1, kind="erp_sync_failed", severity="P2", at=t1 + timedelta(seconds=130),
                source="runbook")
    evaluate_at(t1 + timedelta(seconds=135))

    [incident] = incidents()
    assert (incident["rule"], incident["signal_count"]) == ("erp_sync_failing", 1)


def test_a_sync_paused_for_a_failure_holds_the_incident_until_it_is_resumed(policy):
    """The stock runbook pauses a sync the ERP refuses and raises `erp_sync_failed`: the
    pause silences the staleness check, so the paused-for-a-failure state opens the
    incident itself (one failed run is below the streak) and a resume clears it."""
    _old_success(minutes_ago=5)
    services.pause(actor=ACTOR, reason="runbook stock_sync_failure: ErpCredentialsRejected")
    services.raise_sync_alert(title="ERP sync paused by runbook: ErpCredentialsRejected",
                              details={"paused": True})
    db.session.commit()
    t0 = utcnow()

    evaluate_at(t0 + timedelta(seconds=1))
    evaluate_at(t0 + timedelta(seconds=125))

    [incident] = _erp_incidents()
    assert (incident["status"], incident["signal_count"]) == ("open", 1)
    assert incident["title"] == "ERP sync paused by runbook: ErpCredentialsRejected"
    assert incident["details"]["paused_by"] == "system:tests"

    services.resume(actor=ACTOR)
    db.session.commit()
    evaluate_at(t0 + timedelta(seconds=130))
    evaluate_at(t0 + timedelta(seconds=130 + 301))
    assert _erp_incidents()[0]["status"] == "resolved"
