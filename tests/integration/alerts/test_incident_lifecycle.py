"""An incident's life on a controlled clock: one per condition however often it is seen,
flap damping, repeats, escalation to the next contact list, acknowledgement, automatic
and manual resolution, and evaluations that run at the same moment.

Real rules drive it: webhook failure signals (P1), failed payment events (P0) and a
queue's backlog in Redis (P2). No worker runs: what is checked is what the evaluation
commits (incidents, notices and the deliveries they call for).
"""

from __future__ import annotations

import json
import threading

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from service.alerts.services import acknowledge, resolve
from service.audit.services import Actor
from service.clock import utcnow
from service.extensions import db
from service.queues.depth import queue_keys
from service.queues.publishing import publish
from tests.support.alerting import (
    CTO,
    CTO_PHONE,
    DEVOPS,
    LEAD,
    add_events,
    add_signals,
    deliveries,
    evaluate_at,
    incidents,
    minutes,
    notices,
    policy_app,
)
from tests.support.db import rows, scalar
from tests.support.waiting import wait_until


@pytest.fixture
def policy(build_app, clean, monkeypatch):
    """An app with every channel configured and the test contact lists, in its context."""
    yield from policy_app(build_app, monkeypatch)


def _failures(at, count=11):
    add_signals(count, kind="webhook_failure", severity="P1", at=at,
                source="stripe:payment_intent.succeeded")


def _open_p1():
    """Eleven failures now, seen for the one-minute hold: a P1 opens. Returns its t0."""
    t0 = utcnow()
    _failures(t0)
    evaluate_at(t0)
    evaluate_at(minutes(t0, 1))
    return t0


def _kinds(incident_id: int) -> list[str]:
    return [n["kind"] for n in notices(incident_id)]


def test_ten_evaluations_of_one_condition_give_one_incident_and_one_opening_notice(policy):
    t0 = utcnow()
    _failures(t0)

    for n in range(10):
        evaluate_at(minutes(t0, n))

    found = incidents()
    assert len(found) == 1
    incident = found[0]
    assert incident["status"] == "open"
    assert incident["opened_at"] == minutes(t0, 1)  # after the one-minute hold
    assert incident["occurrences"] == 9  # seen by each evaluation from the opening on
    assert incident["last_seen_at"] == minutes(t0, 9)
    assert _kinds(incident["id"]) == ["opened"]


def test_one_unresolved_incident_per_key_is_enforced_by_the_database(policy):
    _open_p1()

    with pytest.raises(IntegrityError):
        db.session.execute(text(
            "INSERT INTO incidents (key, rule, subject, severity, title, details, runbook, status,"
            " condition_since, opened_at, last_seen_at, occurrences, signal_count,"
            " escalation_level, notified_count)"
            " SELECT key, rule, subject, severity, title, details, runbook, 'acknowledged',"
            " condition_since, opened_at, last_seen_at, 1, 0, 0, 0 FROM incidents"))
    db.session.rollback()


def test_a_condition_must_hold_for_the_hold_time_before_an_incident_opens(policy):
    for n in range(1001):
        publish("orders.fulfil", [n], queue="orders")
    client = policy.extensions["redis"]
    t0 = utcnow()

    evaluate_at(t0)  # seen: P2 holds two minutes
    client.rpop(queue_keys("orders")[0])  # 1000: clear
    evaluate_at(minutes(t0, 1))
    publish("orders.fulfil", [1001], queue="orders")  # 1001 again: the hold starts over
    evaluate_at(minutes(t0, 2.5))
    evaluate_at(minutes(t0, 4))
    assert incidents() == []

    evaluate_at(minutes(t0, 4.5))

    assert incidents()[0]["opened_at"] == minutes(t0, 4.5)


def test_a_cleared_condition_resolves_its_incident_after_the_clear_time_with_a_notice(policy):
    t0 = utcnow()
    add_events(5, status="failed", received_at=t0)
    evaluate_at(t0)
    incident = incidents()[0]
    assert incident["rule"] == "payment_failure_streak"

    add_events(1, status="processed", received_at=minutes(t0, 1), processed_at=minutes(t0, 1))
    evaluate_at(minutes(t0, 2))
    cleared = incidents()[0]
    assert (cleared["status"], cleared["cleared_at"]) == ("open", minutes(t0, 2))
    evaluate_at(minutes(t0, 6.9))
    assert incidents()[0]["status"] == "open"  # clear for under five minutes

    evaluate_at(minutes(t0, 7))

    resolved = incidents()[0]
    assert (resolved["status"], resolved["resolved_at"], resolved["resolved_by"]) == \
        ("resolved", minutes(t0, 7), "system:alerts")
    audited = rows("SELECT action, entity_id, actor, reason, metadata FROM audit_logs")
    assert [(r["action"], r["entity_id"], r["actor"]) for r in audited] == \
        [("incident.resolve", str(incident["id"]), "system:alerts")]
    assert audited[0]["reason"] == f"condition clear since {minutes(t0, 2).isoformat()}Z"
    states = json.loads(audited[0]["metadata"])
    assert (states["before"]["status"], states["after"]["status"]) == ("open", "resolved")
    assert _kinds(incident["id"]) == ["opened", "resolved"]
    resolved_notice = notices(incident["id"])[1]
    assert "RESOLVED" in resolved_notice["title"]
    assert "open for 7 min" in resolved_notice["body"]
    assert deliveries(resolved_notice["id"]) == deliveries(notices(incident["id"])[0]["id"])


def test_a_condition_that_returns_before_the_clear_time_keeps_its_incident(policy):
    client = policy.extensions["redis"]
    for n in range(1001):
        publish("orders.fulfil", [n], queue="orders")
    t0 = utcnow()
    evaluate_at(t0)
    evaluate_at(minutes(t0, 2))
    opened = incidents()[0]

    for step in range(6):  # flapping: 1000, 1001, 1000, ... every minute
        if step % 2 == 0:
            client.rpop(queue_keys("orders")[0])
        else:
            publish("orders.fulfil", [step], queue="orders")
        evaluate_at(minutes(t0, 3 + step))

    found = incidents()
    assert len(found) == 1
    assert found[0]["id"] == opened["id"] and found[0]["status"] == "open"
    assert _kinds(opened["id"]) == ["opened"]


def test_an_unacknowledged_incident_is_notified_again_on_its_repeat_interval(policy):
    t0 = utcnow()
    add_events(5, status="failed", received_at=t0)
    evaluate_at(t0)  # P0: repeats every 15 min; no escalation list reached yet below

    policy.config["ALERT_ESCALATION_CONTACTS"] = []
    evaluate_at(minutes(t0, 14.9))
    assert _kinds(incidents()[0]["id"]) == ["opened"]

    evaluate_at(minutes(t0, 15))
    evaluate_at(minutes(t0, 29.9))
    evaluate_at(minutes(t0, 30))

    incident = incidents()[0]
    assert _kinds(incident["id"]) == ["opened", "repeat", "repeat"]
    assert incident["last_notified_at"] == minutes(t0, 30)
    assert "STILL OPEN" in notices(incident["id"])[1]["title"]

    acknowledge(incident["id"], actor=Actor(label="cli:oncall"), reason="looking", now=minutes(t0, 31))
    db.session.commit()
    evaluate_at(minutes(t0, 60))
    assert _kinds(incident["id"]) == ["opened", "repeat", "repeat"]


def test_an_unacknowledged_p1_escalates_to_the_next_contact_list_after_its_response_time(policy):
    t0 = _open_p1()
    incident = incidents()[0]
    first = notices(incident["id"])[0]
    assert deliveries(first["id"]) == [("email", DEVOPS), ("slack", "")]

    evaluate_at(minutes(t0, 15.9))
    assert incidents()[0]["escalation_level"] == 0
    evaluate_at(minutes(t0, 16))  # 15 min unacknowledged

    level_1 = notices(incident["id"])[1]
    assert (level_1["kind"], level_1["level"]) == ("escalated", 1)
    assert deliveries(level_1["id"]) == [("email", LEAD), ("slack", "")]
    assert "cc @lead" in level_1["body"]

    evaluate_at(minutes(t0, 31))
    level_2 = notices(incident["id"])[2]
    assert (level_2["kind"], level_2["level"]) == ("escalated", 2)
    assert deliveries(level_2["id"]) == [("email", CTO), ("slack", "")]

    # No third list: past the next response time the last list is reminded instead.
    evaluate_at(minutes(t0, 46))
    _failures(minutes(t0, 50))  # still failing, so the condition still holds at 91 min
    evaluate_at(minutes(t0, 90.9))
    evaluate_at(minutes(t0, 91))
    assert _kinds(incident["id"]) == ["opened", "escalated", "escalated", "repeat"]
    assert incidents()[0]["escalation_level"] == 2


def test_a_p0_escalation_pages_the_next_list_by_sms_too(policy):
    t0 = utcnow()
    add_events(5, status="failed", received_at=t0)
    evaluate_at(t0)

    evaluate_at(minutes(t0, 5))

    escalated = notices(incidents()[0]["id"])[1]
    assert escalated["kind"] == "escalated"
    assert ("sms", "+15550100003") in deliveries(escalated["id"])


def test_acknowledging_stops_escalation_and_records_who_and_why(policy):
    t0 = _open_p1()
    incident_id = incidents()[0]["id"]

    acknowledge(incident_id, actor=Actor(label="cli:alice"), reason="replaying the failures",
                now=minutes(t0, 10))
    db.session.commit()
    evaluate_at(minutes(t0, 40))

    incident = incidents()[0]
    assert (incident["status"], incident["acknowledged_by"], incident["acknowledge_reason"],
            incident["acknowledged_at"]) == ("acknowledged", "cli:alice", "replaying the failures",
                                             minutes(t0, 10))
    assert incident["escalation_level"] == 0
    assert _kinds(incident_id) == ["opened"]


def test_a_resolution_by_hand_is_not_undone_by_the_failures_it_covered(policy):
    t0 = _open_p1()
    first = incidents()[0]
    resolve(first["id"], actor=Actor(label="cli:alice"), reason="replayed all", now=minutes(t0, 5))
    db.session.commit()

    evaluate_at(minutes(t0, 6))
    evaluate_at(minutes(t0, 8))
    assert [i["status"] for i in incidents()] == ["resolved"]
    assert _kinds(first["id"]) == ["opened", "resolved"]

    _failures(minutes(t0, 9))  # a new burst after the resolution opens a new incident
    evaluate_at(minutes(t0, 9))
    evaluate_at(minutes(t0, 10))
    found = incidents()
    assert [i["status"] for i in found] == ["resolved", "open"]
    assert found[1]["signal_count"] == 11


def test_acknowledging_a_resolved_incident_is_refused_and_twice_changes_nothing(policy):
    from service.alerts.exceptions import IncidentNotFound, InvalidTransition

    t0 = _open_p1()
    incident_id = incidents()[0]["id"]

    assert acknowledge(incident_id, actor=Actor(label="cli:a"), now=minutes(t0, 2))[1] is True
    assert acknowledge(incident_id, actor=Actor(label="cli:b"), now=minutes(t0, 3))[1] is False
    assert resolve(incident_id, actor=Actor(label="cli:a"), reason="fixed", now=minutes(t0, 4))[1] is True
    assert resolve(incident_id, actor=Actor(label="cli:b"), reason="again", now=minutes(t0, 5))[1] is False
    db.session.commit()
    with pytest.raises(InvalidTransition):
        acknowledge(incident_id, actor=Actor(label="cli:c"))
    with pytest.raises(IncidentNotFound):
        acknowledge(incident_id + 1000, actor=Actor(label="cli:c"))
    db.session.rollback()
    assert incidents()[0]["acknowledged_by"] == "cli:a"
    assert incidents()[0]["resolve_reason"] == "fixed"
    audited = rows("SELECT action, entity_id, actor, reason FROM audit_logs ORDER BY id")
    assert [tuple(r.values()) for r in audited] == [
        ("incident.acknowledge", str(incident_id), "cli:a", None),
        ("incident.resolve", str(incident_id), "cli:a", "fixed")]


def test_evaluations_running_at_the_same_moment_open_one_incident(policy):
    t0 = utcnow()
    add_events(5, status="failed", received_at=t0)
    errors = []
    barrier = threading.Barrier(4)

    def run():
        with policy.app_context():
            try:
                barrier.wait(timeout=10)
                evaluate_at(minutes(t0, 1))
            except Exception as exc:  # surfaced by the assertion below
                errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    assert errors == []
    found = incidents()
    assert len(found) == 1
    assert found[0]["occurrences"] == 4
    assert _kinds(found[0]["id"]) == ["opened"]
    assert CTO_PHONE in [target for _, target in deliveries(notices(found[0]["id"])[0]["id"])]


def test_a_responder_acknowledging_while_the_evaluation_resolves_never_deadlocks(policy):
    """The responder holds its incident's row, then needs the audit chain; the evaluation
    resolving an earlier rule's incident needs the chain, then a later rule's rows. With
    the evaluation taking every active row first, the responder finishes and the
    evaluation follows (without it, PostgreSQL would break a deadlock by failing one)."""
    t0 = utcnow()
    add_events(5, status="failed", received_at=t0)
    add_signals(1, kind="payment_underpaid", severity="P1", at=t0)
    evaluate_at(t0)  # the P0 failure streak opens
    add_events(1, status="processed", received_at=minutes(t0, 1), processed_at=minutes(t0, 1))
    evaluate_at(minutes(t0, 2))  # the streak clears; the P1 signal incident opens
    streak = incidents(rule="payment_failure_streak")[0]["id"]
    held = incidents(rule="signals")[0]["id"]
    errors = []

    def evaluation():
        with policy.app_context():
            try:
                evaluate_at(minutes(t0, 8))  # clear for 6 min: the streak resolves
            except Exception as exc:  # surfaced by the assertion below
                errors.append(exc)

    db.session.execute(text("SELECT id FROM incidents WHERE id = :id FOR UPDATE"), {"id": held})
    thread = threading.Thread(target=evaluation)
    thread.start()
    wait_until(lambda: scalar("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = "
                              "'Lock' AND datname = current_database()"),
               10, "the evaluation waiting on the responder's incident")
    acknowledge(held, actor=Actor(label="cli:alice"), reason="on it")
    db.session.commit()
    thread.join(timeout=30)

    assert errors == []
    assert {i["id"]: i["status"] for i in incidents()} == {streak: "resolved",
                                                           held: "acknowledged"}
    assert [(r["action"], r["entity_id"]) for r in rows(
        "SELECT action, entity_id FROM audit_logs ORDER BY id")] == \
        [("incident.acknowledge", str(held)), ("incident.resolve", str(streak))]
