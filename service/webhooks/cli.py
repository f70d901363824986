"""`flask webhooks ...`: inspect the inbox and failures, replay failures, send a test event."""

from __future__ import annotations

import json
import sys
import time
import uuid

import click
from flask import current_app
from flask.cli import AppGroup
from sqlalchemy import func, select

from service.audit.actor import Actor
from service.cli_utils import Duration, echo_json, echo_table
from service.extensions import db
from service.webhooks.models import EventStatus, WebhookEvent, WebhookFailure
from service.webhooks.replay import Selection, retry_failures, select_failures
from service.webhooks.retention import count_purgeable, purge_payloads, retention_cutoff

cli = AppGroup("webhooks", help="Inspect stored webhook events and replay failures.")


@cli.command("list")
@click.option("--status", type=click.Choice(EventStatus.ALL), help="Only events in this state.")
@click.option("--since", type=Duration(), help="Only events received within this window (1h, 2d).")
@click.option("--provider", type=click.Choice(["stripe", "paypal"]))
@click.option("--failures", is_flag=True, help="List rows of the failures table instead.")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 10000))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def list_events(status, since, provider, failures, limit, as_json):
    """List stored events (newest first), or failures with --failures."""
    if failures:
        rows = [f.to_dict() for f in select_failures(Selection(since=since, provider=provider,
                                                                include_resolved=True))][-limit:]
        columns = ["id", "event_pk", "provider", "event_type", "retry_count", "resolved_at",
                   "error_message"]
    else:
        query = select(WebhookEvent).order_by(WebhookEvent.id.desc()).limit(limit)
        if status:
            query = query.where(WebhookEvent.status == status)
        if since:
            query = query.where(WebhookEvent.received_at >= since)
        if provider:
            query = query.where(WebhookEvent.provider == provider)
        rows = [e.to_dict() for e in db.session.scalars(query)]
        columns = ["id", "provider", "event_id", "event_type", "status", "attempts",
                   "received_at", "last_error"]
    if as_json:
        echo_json(rows)
    else:
        echo_table(rows, columns)


@cli.command("show")
@click.argument("event_pk", type=int)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def show_event(event_pk, as_json):
    """Show one stored event, its payload and its failure record."""
    event = db.session.get(WebhookEvent, event_pk)
    if event is None:
        raise click.ClickException(f"no webhook event with id {event_pk}")
    data = event.to_dict(with_payload=True)
    data["failure"] = event.failure.to_dict() if event.failure else None
    if as_json:
        echo_json(data)
        return
    payload = data.pop("payload")
    failure = data.pop("failure")
    for key, value in data.items():
        click.echo(f"{key:>14}: {'' if value is None else value}")
    if failure:
        click.echo("       failure: " + json.dumps(failure, default=str))
    click.echo("       payload:")
    try:
        click.echo(json.dumps(json.loads(payload), indent=2))
    except ValueError:
        click.echo(payload)


@cli.command("retry")
@click.option("--since", type=Duration(), help="Failures updated within this window (1h, 2d).")
@click.option("--id", "failure_id", type=int, help="One failure, by its id in webhook_failures.")
@click.option("--provider", type=click.Choice(["stripe", "paypal"]))
@click.option("--dry-run", is_flag=True, help="Show what would be retried; change nothing.")
@click.option("--reason", help="Why, for the audit trail (one row per retried event, with "
              "the operating-system user as actor).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable summary.")
def retry(since, failure_id, provider, dry_run, reason, as_json):
    """Re-enqueue unresolved failures. Exit 0 when all were enqueued, 1 otherwise."""
    if since is None and failure_id is None and provider is None:
        raise click.UsageError("say which failures: --since, --id or --provider")
    failures = select_failures(Selection(since=since, failure_id=failure_id, provider=provider))
    if failure_id is not None and not failures:
        raise click.ClickException(f"no unresolved failure with id {failure_id}")
    if dry_run:
        rows = [f.to_dict() for f in failures]
        if as_json:
            echo_json({"dry_run": True, "would_retry": rows})
        else:
            echo_table(rows, ["id", "event_pk", "provider", "event_type", "retry_count",
                              "error_message"])
            click.echo(f"dry run: {len(rows)} failure(s) would be retried")
        return
    counts = {"enqueued": 0, "left_for_relay": 0, "skipped": 0}
    with click.progressbar(length=len(failures), label="retrying", file=sys.stderr,
                           show_pos=True) as bar:
        for outcome in retry_failures(failures, actor=Actor.cli(), reason=reason):
            counts[outcome.result] += 1
            bar.update(1)
    summary = {"selected": len(failures), **counts}
    if as_json:
        echo_json(summary)
    else:
        click.echo(f"{len(failures)} selected: {counts['enqueued']} enqueued, "
                   f"{counts['left_for_relay']} left for the relay (broker down), "
                   f"{counts['skipped']} skipped (already processed)")
    sys.exit(0 if counts["left_for_relay"] == 0 else 1)


@cli.command("purge")
@click.option("--older-than", "cutoff", type=Duration(),
              help="Events processed longer ago than this (90d); default PAYLOAD_RETENTION_DAYS.")
@click.option("--dry-run", is_flag=True, help="Count what would be redacted; change nothing.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable summary.")
def purge(cutoff, dry_run, as_json):
    """Remove personal data from the payloads of processed events.

    Ids, amounts, currencies, types and states stay; names, addresses, e-mail and card
    details go, from the event and from its resolved failure row. Failed and waiting
    events keep their payload for replay. Safe to run again; beat runs it daily.
    """
    cutoff = cutoff or retention_cutoff(current_app.config["PAYLOAD_RETENTION_DAYS"])
    total = 0 if dry_run else count_purgeable(cutoff)
    with click.progressbar(length=total, label="redacting", file=sys.stderr,
                           show_pos=True) as bar:
        report = purge_payloads(cutoff, dry_run=dry_run, progress=bar.update)
    if as_json:
        echo_json(report.as_dict())
    elif dry_run:
        click.echo(f"dry run: {report.selected} processed event(s) before {report.cutoff} "
                   "would be redacted")
    else:
        click.echo(f"{report.redacted} event payload(s) redacted (and "
                   f"{report.failures_redacted} failure row(s)), processed before "
                   f"{report.cutoff}")


@cli.command("relay")
@click.option("--until-empty", is_flag=True,
              help="Go on until nothing is outstanding, waiting for room as the workers "
                   "drain the queue (Ctrl-C stops), instead of one pass.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable summary.")
def relay(until_empty, as_json):
    """Publish stored events the broker does not have, as the queue has room.

    What beat's relay does every RELAY_INTERVAL_SECONDS, run now. Exit 0, or 1 when the
    broker is unreachable (the events stay stored for the next pass).
    """
    from service.webhooks.relay import relay_pending

    report = relay_pending(until_empty=until_empty)
    if as_json:
        echo_json(report.as_dict())
    else:
        click.echo(f"{report.enqueued} event(s) published in {report.jobs} job(s) "
                   f"({report.found} claimed)"
                   + ("; broker unavailable, the rest stays stored" if report.broker_down
                      else ""))
    sys.exit(1 if report.broker_down else 0)


@cli.command("stats")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def stats(as_json):
    """Count events per status and open failures."""
    counts = dict(db.session.execute(
        select(WebhookEvent.status, func.count()).group_by(WebhookEvent.status)).all())
    open_failures = db.session.scalar(
        select(func.count()).select_from(WebhookFailure).where(WebhookFailure.resolved_at.is_(None)))
    data = {"events": {s: counts.get(s, 0) for s in EventStatus.ALL},
            "open_failures": open_failures}
    if as_json:
        echo_json(data)
    else:
        for key, value in data["events"].items():
            click.echo(f"{key:>12}: {value}")
        click.echo(f"{'open failures':>12}: {open_failures}")


@cli.command("send-test")
@click.option("--url", default="http://127.0.0.1:8000/webhooks/stripe", show_default=True,
              help="The Stripe webhook endpoint to send to.")
@click.option("--order", "order_id", type=int, help="Order to pay (default: a pending one).")
@click.option("--type", "event_type", default="payment_intent.succeeded", show_default=True,
              type=click.Choice(["payment_intent.succeeded", "payment_intent.payment_failed"]))
def send_test(url, order_id, event_type):
    """Send a correctly signed Stripe test event for an order, and print the answer."""
    import requests
    import stripe

    from service.orders.money import to_stripe
    from service.orders.services import order_to_pay

    order_ref = order_to_pay(order_id)
    if order_ref is None:
        raise click.ClickException("no such order; run `flask demo seed` first or pass --order")
    intent_id = f"pi_test_{uuid.uuid4().hex[:16]}"
    amount = to_stripe(order_ref["total_cents"], order_ref["currency"])
    body = json.dumps({
        "id": f"evt_test_{uuid.uuid4().hex[:16]}",
        "object": "event",
        "type": event_type,
        "created": int(time.time()),
        # The mode this service expects, or the event would be refused as from the other.
        "livemode": bool(current_app.config["STRIPE_LIVEMODE"]),
        "data": {"object": {"id": intent_id, "object": "payment_intent",
                            "amount": amount, "amount_received": amount,
                            "currency": order_ref["currency"].lower(),
                            "metadata": {"order_id": str(order_ref["id"])}}},
    })
    # End the read transaction first: on SQLite it would hold the lock the endpoint needs.
    db.session.rollback()
    secret = current_app.config["STRIPE_WEBHOOK_SECRET"][0]
    header = stripe.WebhookSignature.generate_signature_header(body, secret)
    response = requests.post(url, data=body.encode(), timeout=10, headers={
        "Content-Type": "application/json", "Stripe-Signature": header})
    click.echo(f"order {order_ref['id']}: {event_type} -> "
               f"HTTP {response.status_code} {response.text.strip()}")
    sys.exit(0 if response.ok else 1)
