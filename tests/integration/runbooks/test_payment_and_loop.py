"""The payment failure and webhook loop runbooks against a seeded database: a dry run
finds what was seeded and changes nothing; an execute run takes its action."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta

from sqlalchemy import text

from service.clock import utcnow
from service.extensions import db
from service.orders import services
from service.webhooks.models import WebhookEvent, WebhookFailure
from tests.integration.runbooks.conftest import run_runbook
from tests.support.db import rows, scalar
from tests.support.events import make_order, payment_intent, stripe_event, stripe_headers
from tests.support.processes import start_worker


def _failed_payment(order_id: int) -> int:
    """A stored payment event that a worker failed on (its order was missing then)."""
    body, event_id = stripe_event("payment_intent.succeeded", payment_intent(order_id))
    event = WebhookEvent(provider="stripe", event_id=event_id,
                         event_type="payment_intent.succeeded", payload=body.decode(),
                         status="failed", attempts=3,
                         last_error="OrderNotFound: no order for the payment")
    db.session.add(event)
    db.session.flush()
    db.session.add(WebhookFailure(event_pk=event.id, provider="stripe",
                                  event_type=event.event_type, payload=event.payload,
                                  error_message=event.last_error, retry_count=0))
    db.session.commit()
    return event.id


def _created_minutes_ago(order_id: int, minutes: int) -> None:
    db.session.execute(text("UPDATE orders SET created_at = :at WHERE id = :id"),
                       {"at": utcnow() - timedelta(minutes=minutes), "id": order_id})
    db.session.commit()


def test_payment_runbook_finds_failures_and_execute_retries_them_until_processed(
        runbook_app, tmp_path, processes):
    app = runbook_app
    with app.app_context():
        orders = [make_order(total_cents=1000) for _ in range(3)]
        events = [_failed_payment(order_id) for order_id in orders]
        _created_minutes_ago(orders[0], 30)  # pending past pending_after: stuck

    processes.append(start_worker(tmp_path, queues="webhooks", concurrency=1, beat=False))

    code, dry = run_runbook(app, "payment_processing_failure", "-p", "since", "1h")

    summary = dry["summary"]
    assert (code, dry["status"], summary["dry_run"], summary["problem"]) == (1, "problem", True, True)
    assert summary["figures"]["unresolved_failures"] == 3
    assert summary["figures"]["failure_groups"] == [
        {"provider": "stripe", "error": "OrderNotFound", "event_type": "payment_intent.succeeded",
         "failures": 3, "unresolved": 3}]
    # The long-pending order has no payment recorded (its event is among the failures):
    # counted and noted, not a finding of its own.
    assert (summary["figures"]["stuck_pending_orders"],
            summary["figures"]["stuck_with_payment"]) == (1, 0)
    assert not [f for f in summary["findings"] if "pending" in f["finding"]]
    assert "1 orders pending for more than 15m, none with a payment recorded: unpaid " \
        "checkouts, or paid by the failures above" in summary["notes"]
    assert summary["decision"] == "retry the 3 unresolved failures of the window"
    assert summary["actions"] == [] and summary["planned"][0].startswith("retry 3 failures")
    with app.app_context():
        assert scalar("SELECT count(*) FROM webhook_failures WHERE retry_count = 0") == 3
        assert scalar("SELECT count(*) FROM audit_logs") == 0
        assert scalar("SELECT count(*) FROM orders WHERE status = 'paid'") == 0

    code, done = run_runbook(app, "payment_processing_failure", "--execute",
                             "-p", "wait_seconds", "60")

    assert (code, done["status"]) == (0, "ok"), done
    summary = done["summary"]
    assert summary["resolved"] is True
    assert summary["actions"][0] == {"action": "webhook.retry", "retried": 3, "skipped": 0}
    assert summary["actions"][1]["processed"] == 3
    with app.app_context():
        assert scalar("SELECT count(*) FROM orders WHERE status = 'paid'") == 3
        assert scalar("SELECT count(*) FROM webhook_failures WHERE resolved_at IS NULL") == 0
        retried = rows("SELECT entity_id, actor, reason FROM audit_logs"
                       " WHERE action = 'webhook.retry' ORDER BY entity_id")
        assert [int(r["entity_id"]) for r in retried] == sorted(events)
        assert {r["reason"] for r in retried} == {f"runbook payment_processing_failure run #{done['run_id']}"}
        assert all(r["actor"].startswith("cli:") for r in retried)
        run = rows("SELECT * FROM runbook_runs WHERE id = :id", id=done["run_id"])[0]
        assert (run["execute"], run["status"]) == (True, "ok")
        assert json.loads(run["summary"])["resolved"] is True
        assert scalar("SELECT count(*) FROM audit_logs WHERE action = 'runbook.execute'"
                      " AND entity_id = :id", id=str(done["run_id"])) == 1
    assert summary["actions"][1]["orders_still_stuck"] == 0  # its payment was retried

    # An order long pending although money came (short of its total), which no retry
    # pays: a problem, for a person. A checkout nobody paid beside it is not one.
    with app.app_context():
        short = make_order(total_cents=500)
        services.record_payment(order_id=short, provider="stripe", provider_payment_id="pi_short",
                                amount_cents=200, currency="EUR", source="test")
        db.session.commit()
        unpaid = make_order(total_cents=500)
        _created_minutes_ago(short, 30)
        _created_minutes_ago(unpaid, 30)

    code, again = run_runbook(app, "payment_processing_failure")

    assert (code, again["status"]) == (1, "problem"), again
    assert [f["finding"].split(";")[0] for f in again["summary"]["findings"]] == \
        ["1 orders pending for more than 15m although a payment was recorded"]
    assert f"oldest: order {short} since " in again["summary"]["findings"][0]["finding"]
    assert again["summary"]["figures"]["stuck_pending_orders"] == 2


def test_loop_runbook_names_the_repeated_event_and_execute_pins_it_and_alerts(runbook_app):
    app = runbook_app
    client = app.test_client()
    with app.app_context():
        order_id = make_order()
    body, event_id = stripe_event("test.ignored_kind", {"id": f"x_{uuid.uuid4().hex[:8]}",
                                                        "metadata": {"order_id": str(order_id)}})
    for _ in range(9):  # the first is stored, eight are duplicates
        assert client.post("/webhooks/stripe", data=body, headers=stripe_headers(body)).status_code == 200
    other, _ = stripe_event("test.ignored_kind", {"id": "y"})
    client.post("/webhooks/stripe", data=other, headers=stripe_headers(other))

    code, dry = run_runbook(app, "webhook_loop_detected", "-p", "min_repeats", "5")

    summary = dry["summary"]
    assert (code, dry["status"]) == (1, "problem")
    figures = summary["figures"]
    assert (figures["duplicate_deliveries"], figures["stored_events"]) == (8, 2)
    assert figures["dedup_hit_ratio"] == 0.8
    assert figures["looping_events"] == [{"provider": "stripe", "event_id": event_id,
                                          "duplicates": 8, "status": figures["looping_events"][0]["status"]}]
    redis = app.extensions["redis"]
    key = f"racine:dedup:stripe:{event_id}"
    assert redis.ttl(key) <= 300
    with app.app_context():
        assert scalar("SELECT count(*) FROM alert_signals") == 0

    # What a responder reads: the plain output, then the run as recorded.
    with app.app_context():
        cli = app.test_cli_runner()
        plain = cli.invoke(args=["runbook", "run", "webhook_loop_detected", "--execute"])
        listed = cli.invoke(args=["runbook", "runs"])
        run_id = scalar("SELECT max(id) FROM runbook_runs")
        shown = cli.invoke(args=["runbook", "show", str(run_id)])
    done = json.loads(shown.output)

    assert plain.exit_code == 0, plain.output
    assert f"runbook webhook_loop_detected run #{run_id} (execute): ok" in plain.output
    assert f"problem: 1 event ids delivered at least 5 times more; most: stripe {event_id} x8" \
        in plain.output
    assert "done: raised webhook_loop signal" in plain.output
    figure_lines = [line for line in plain.output.splitlines() if line.startswith("  figure: ")]
    assert figure_lines == sorted(figure_lines) and "  figure: stored_events = 2" in figure_lines
    assert f'"event_id": "{event_id}"' in next(line for line in figure_lines
                                                if line.startswith("  figure: looping_events = "))
    assert "notebook: " in plain.output and "html: " in plain.output
    assert f"{run_id}   webhook_loop_detected  yes" in listed.output
    assert (done["status"], done["summary"]["resolved"]) == ("ok", True)
    assert redis.ttl(key) > 23 * 3600  # answered from Redis for a day
    with app.app_context():
        signal = rows("SELECT kind, severity, details FROM alert_signals")
        assert [(s["kind"], s["severity"]) for s in signal] == [("webhook_loop", "P2")]
        assert json.loads(signal[0]["details"])["events"][0]["event_id"] == event_id
