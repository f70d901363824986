"""The "webhook loop" rule (P2, runbook webhook_loop_detected), registered by the webhooks
domain: duplicate deliveries through the real intake (counted in Redis) open its incident
after the P2 hold, with a notice naming the runbook and its command; more duplicates and
the runbook's own `webhook_loop` signal keep that one incident; once the duplicates stop
it resolves by itself. A provider's ordinary redeliveries open nothing."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest

from service.alerts.rules import registered_rules
from service.clock import utcnow
from service.webhooks.dedup import DUPLICATES_BUCKET_SECONDS, note_duplicate, repeated_duplicates
from tests.support.alerting import (
    add_signals,
    deliveries,
    evaluate_at,
    incidents,
    notices,
    opened_past_the_p2_hold,
    policy_app,
)
from tests.support.events import stripe_event, stripe_headers


@pytest.fixture
def policy(build_app, clean, monkeypatch):
    """An app with the alert channels on and the default loop thresholds (5 in 15 min)."""
    yield from policy_app(build_app, monkeypatch, WEBHOOK_LOOP_MIN_REPEATS="5",
                          WEBHOOK_LOOP_WINDOW_SECONDS="900")


def _deliver(app, times: int, event_id: str | None = None) -> str:
    """Deliver an event (a new one unless `event_id`) `times` times through the intake;
    returns its id."""
    body, event_id = stripe_event("test.ignored_kind", {"id": "x"}, event_id=event_id)
    client = app.test_client()
    for _ in range(times):
        response = client.post("/webhooks/stripe", data=body, headers=stripe_headers(body))
        assert response.status_code == 200, response.get_data(as_text=True)
    return event_id


def _loop_incidents() -> list[dict]:
    return incidents(rule="webhook_loop")


def test_the_rule_is_registered_by_the_webhooks_domain(policy):
    [rule] = [r for r in registered_rules(policy) if r.name == "webhook_loop"]

    assert (rule.severity, rule.runbook, rule.signal_kinds) == (
        "P2", "webhook_loop_detected", ("webhook_loop", "duplicate_storm"))


def test_an_event_delivered_again_and_again_opens_one_p2_naming_the_loop_runbook(policy):
    looping = _deliver(policy, 7)  # stored once, six duplicates
    _deliver(policy, 3)  # two redeliveries: a provider's ordinary retries
    t0 = utcnow()

    incident = opened_past_the_p2_hold(t0, rule="webhook_loop")
    assert incident["runbook"] == "webhook_loop_detected"
    assert incident["title"] == f"Webhook loop: stripe event {looping} delivered 6 times again in 15 min"
    assert incident["details"]["events"] == [
        {"provider": "stripe", "event_id": looping, "duplicates": 6}]
    [opened] = notices(incident["id"])
    assert deliveries(opened["id"]) == [("slack", "")]  # P2: Slack
    assert "Runbook: webhook_loop_detected" in opened["body"]
    assert "diagnose: flask runbook run webhook_loop_detected\n" in opened["body"]
    assert "apply the fix: flask runbook run webhook_loop_detected --execute" in opened["body"]
    assert "Runbook: flask runbook run webhook_loop_detected." in opened["short_body"]

    # The loop goes on, and the runbook raises its signal: still the one incident, paged once.
    _deliver(policy, 2, event_id=looping)
    add_signals(1, kind="webhook_loop", severity="P2", at=t0 + timedelta(seconds=130),
                source="webhooks:duplicates")
    evaluate_at(t0 + timedelta(seconds=185))
    assert [i["id"] for i in incidents()] == [incident["id"]]
    [held] = _loop_incidents()
    assert (held["occurrences"], held["signal_count"]) == (2, 1)
    assert held["details"]["events"][0]["duplicates"] == 8
    assert [n["kind"] for n in notices(incident["id"])] == ["opened"]

    # The duplicates stop: once the window has passed them, clear; resolved after 5 min.
    evaluate_at(t0 + timedelta(minutes=22))
    assert _loop_incidents()[0]["status"] == "open"
    evaluate_at(t0 + timedelta(minutes=28))
    [resolved] = _loop_incidents()
    assert (resolved["status"], resolved["resolved_by"]) == ("resolved", "system:alerts")
    assert [n["kind"] for n in notices(incident["id"])] == ["opened", "resolved"]


def test_two_redeliveries_of_each_event_open_no_incident(policy):
    for _ in range(6):
        _deliver(policy, 3)  # each event stored once and delivered twice more
    t0 = utcnow()

    evaluate_at(t0 + timedelta(seconds=1))
    evaluate_at(t0 + timedelta(seconds=125))

    assert _loop_incidents() == []
    assert incidents() == []


def test_the_counts_are_summed_over_the_windows_buckets(policy):
    """A slower loop, two duplicates per 5-minute bucket, is found across buckets; one per
    bucket over the window is not a loop."""
    redis = policy.extensions["redis"]
    now = time.time()
    last = int(now // DUPLICATES_BUCKET_SECONDS)
    for back in range(3):
        at = now - back * DUPLICATES_BUCKET_SECONDS
        for _ in range(2):
            note_duplicate(redis, "stripe", "evt_slow_loop", now=at)
    for back in range(4):
        note_duplicate(redis, "stripe", "evt_retried", now=now - back * DUPLICATES_BUCKET_SECONDS)

    assert repeated_duplicates(redis, first=last - 3, last=last, min_repeats=5) == [
        ("stripe:evt_slow_loop", 6)]
    assert repeated_duplicates(redis, first=last - 3, last=last, min_repeats=7) == []
