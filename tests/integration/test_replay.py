"""Manual retries (`retry_failures`): what a responder's replay may and may not take over."""

from __future__ import annotations

from datetime import timedelta

from service.audit.actor import Actor
from service.db_types import utcnow
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

    assert outcomes[busy] == "skipped"
    assert outcomes[failed] != "skipped" and outcomes[stale] != "skipped"
    db.session.expire_all()
    rows = {e.id: e for e in db.session.query(WebhookEvent)}
    # The live lease is untouched, so that worker can still commit its result.
    assert (rows[busy].status, rows[busy].lease_token) == ("processing", "t")
    for pk in (failed, stale):
        assert rows[pk].status in ("queued", "received")
        assert rows[pk].lease_token is None
    requeued = [rows[pk] for pk in (failed, stale) if rows[pk].status == "queued"]
    # A requeued row carries a publish lease, as an intake publish does.
    assert all(row.lease_expires_at is not None and row.lease_expires_at > now
               for row in requeued)
