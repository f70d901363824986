"""Manual retries (`retry_failures`): what a responder's replay may and may not take over."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import text

from service.audit.actor import Actor
from service.clock import utcnow
from service.extensions import db
from service.webhooks.models import WebhookEvent, WebhookFailure
from service.webhooks.replay import Selection, retry_failures, select_failures


def _failed_event(event_id: str, *, status: str, lease_expires_at=None) -> int:
    now = utcnow()
    event = WebhookEvent(provider="stripe", event_id=event_id, event_type="payment_intent.succeeded",
                         payload="{}", status=status, attempts=1, received_at=now,
                         lease_token="t" if status == "processing" else None,
                         lease_expires_at=lease_expires_at)
    db.session.add(event)
    db.session.flush()
    db.session.add(WebhookFailure(event_pk=event.id, provider="stripe",
                                  event_type=event.event_type, payload="{}",
                                  error_message="boom", retry_count=0))
    db.session.commit()
    return event.id


def test_replay_requeues_a_failed_event_but_leaves_one_a_worker_is_processing(ctx):
    now = utcnow()
    failed = _failed_event("evt_failed", status="failed")
    busy = _failed_event("evt_busy", status="processing",
                         lease_expires_at=now + timedelta(seconds=300))
    stale = _failed_event("evt_stale", status="processing",
                          lease_expires_at=now - timedelta(seconds=1))

    outcomes = {o.event_pk: o.result
                for o in retry_failures(select_failures(Selection()),
                                                 actor=Actor.system("test"))}

    # The broker is up and the queue has room: both others are published.
    assert outcomes == {busy: "skipped", failed: "enqueued", stale: "enqueued"}
    db.session.expire_all()
    rows = {e.id: e for e in db.session.query(WebhookEvent)}
    # The live lease is untouched, so that worker can still commit its result.
    assert (rows[busy].status, rows[busy].lease_token) == ("processing", "t")
    for pk in (failed, stale):
        assert (rows[pk].status, rows[pk].lease_token) == ("queued", None)
        # A requeued row carries a publish lease, as an intake publish does.
        assert rows[pk].lease_expires_at > now
    assert {f.event_pk: f.retry_count for f in db.session.query(WebhookFailure)} == \
        {busy: 0, failed: 1, stale: 1}


def test_replay_with_the_broker_down_leaves_the_event_received_for_the_relay(build_app):
    no_broker = build_app({"REDIS_URL": "redis://127.0.0.1:1/0"})
    with no_broker.app_context():
        db.session.execute(text("TRUNCATE webhook_events, webhook_failures RESTART IDENTITY"
                                " CASCADE"))
        db.session.commit()
        failed = _failed_event("evt_failed_offline", status="failed")

        outcomes = [o.result for o in retry_failures(select_failures(Selection()),
                                                     actor=Actor.system("test"))]

        assert outcomes == ["left_for_relay"]
        db.session.expire_all()
        event = db.session.get(WebhookEvent, failed)
        assert (event.status, event.queued_at, event.lease_expires_at) == ("received", None, None)
        assert db.session.get(WebhookFailure, 1).retry_count == 1
