"""`flask webhooks purge`: personal data leaves the payloads of old processed events."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from service.clock import utcnow
from service.extensions import db
from service.webhooks.models import EventStatus, WebhookEvent, WebhookFailure
from tests.support.db import rows

EMAIL = "jane.doe@example.com"


def payload(event_id: str) -> str:
    return json.dumps({"id": event_id, "object": "event", "type": "payment_intent.succeeded",
                       "data": {"object": {"id": f"pi_{event_id}", "amount": 1000,
                                           "currency": "eur", "receipt_email": EMAIL,
                                           "metadata": {"order_id": "7"}}}})


def event(event_id: str, *, status: str, processed_days_ago: float | None) -> int:
    now = utcnow()
    processed_at = None if processed_days_ago is None else now - timedelta(days=processed_days_ago)
    row = WebhookEvent(provider="stripe", event_id=event_id, event_type="payment_intent.succeeded",
                       payload=payload(event_id), status=status, attempts=1,
                       received_at=now - timedelta(days=200), processed_at=processed_at)
    db.session.add(row)
    db.session.commit()
    return row.id


@pytest.fixture
def cli(clean):
    runner = clean.test_cli_runner()

    def invoke(*args: str):
        with clean.app_context():
            return runner.invoke(args=["webhooks", "purge", *args])
    return invoke


@pytest.fixture
def events(ctx):
    old = event("evt_old", status=EventStatus.PROCESSED, processed_days_ago=120)
    ignored = event("evt_ignored", status=EventStatus.IGNORED, processed_days_ago=100)
    recent = event("evt_recent", status=EventStatus.PROCESSED, processed_days_ago=10)
    failed = event("evt_failed", status=EventStatus.FAILED, processed_days_ago=None)
    db.session.add(WebhookFailure(event_pk=old, provider="stripe", event_type="x",
                                  payload=payload("evt_old"), error_message="e",
                                  resolved_at=utcnow()))
    db.session.commit()
    return {"old": old, "ignored": ignored, "recent": recent, "failed": failed}


def payloads() -> dict[int, str]:
    return {r["id"]: r["payload"] for r in rows("SELECT id, payload FROM webhook_events")}


def test_purge_redacts_old_processed_payloads_with_a_progress_bar_and_summary(cli, events):
    result = cli("--older-than", "90d")

    assert result.exit_code == 0, result.output
    assert "2 event payload(s) redacted (and 1 failure row(s))" in result.stdout
    assert "redacting" in result.stderr  # the progress bar
    after = payloads()
    for key in ("old", "ignored"):
        kept = json.loads(after[events[key]])
        assert EMAIL not in after[events[key]]
        assert kept["data"]["object"]["amount"] == 1000
        assert kept["data"]["object"]["currency"] == "eur"
        assert kept["type"] == "payment_intent.succeeded"
    for key in ("recent", "failed"):  # too young, or still needed for a replay
        assert EMAIL in after[events[key]]
    assert EMAIL not in rows("SELECT payload FROM webhook_failures")[0]["payload"]
    stamped = {r["id"] for r in rows("SELECT id FROM webhook_events WHERE redacted_at IS NOT NULL")}
    assert stamped == {events["old"], events["ignored"]}

    again = cli("--older-than", "90d", "--json")
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["redacted"] == 0


def test_purge_dry_run_changes_nothing(cli, events):
    before = payloads()

    result = cli("--older-than", "90d", "--dry-run", "--json")

    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert (summary["dry_run"], summary["selected"], summary["redacted"]) == (True, 2, 0)
    assert payloads() == before


def test_purge_defaults_to_the_configured_retention(cli, events, monkeypatch, clean):
    monkeypatch.setitem(clean.config, "PAYLOAD_RETENTION_DAYS", 5)

    result = cli("--json")

    assert json.loads(result.stdout)["redacted"] == 3  # the 10-day-old one too


def test_purge_rejects_a_malformed_duration(cli):
    result = cli("--older-than", "ninety days")

    assert result.exit_code == 2
    assert "is not a duration" in result.output


def test_beat_purges_daily_with_the_configured_retention(app, events):
    celery = app.extensions["celery"]
    entry = celery.conf.beat_schedule["webhooks-purge-payloads"]
    assert entry["task"] == "webhooks.purge_payloads"
    assert entry["schedule"].hour == {3}

    report = celery.tasks["webhooks.purge_payloads"].apply().get()

    assert report["redacted"] == 2  # PAYLOAD_RETENTION_DAYS=90 by default
    assert EMAIL not in payloads()[events["old"]]
