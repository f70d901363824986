"""Notices about incidents: what they say, who gets them, and sending them.

`notify_incident` writes a notification, one delivery per channel and recipient, and an
outbox job per delivery, all in the caller's transaction: nothing is sent for a change
that rolls back, and nothing is lost when the broker is down (the outbox relay publishes
the jobs after the commit). `deliver` runs in a worker on the `default` queue: it claims
its delivery, ends the transaction, makes the one HTTP/SMTP call, and records the attempt
and its outcome in a transaction of its own. A failed send is retried through the outbox
with exponential backoff; the other deliveries of the same notice are separate jobs, so a
channel that is down never holds up the others.

`deliver` is the one place here that commits (see its docstring); everything else adds
to the caller's transaction.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from flask import current_app
from sqlalchemy import DateTime, select, update

from service.alerts.channels import SEVERITY_CHANNELS, Channel, ContactBook, Contacts
from service.alerts.exceptions import ChannelError
from service.alerts.models import (
    AlertDelivery,
    AlertDeliveryAttempt,
    AlertNotification,
    DeliveryStatus,
    Incident,
)
from service.alerts.rules import runbook_command
from service.clock import utcnow
from service.extensions import db
from service.fastsql import Statement, fetch_one
from service.queues.outbox import add_jobs

log = logging.getLogger(__name__)

DELIVER_TASK = "alerts.deliver"
QUEUE = "default"
SEVERITY_NAMES = {"P0": "critical", "P1": "high", "P2": "medium", "P3": "low"}
_HEADLINES = {"opened": "", "repeat": "STILL OPEN", "escalated": "ESCALATED",
              "resolved": "RESOLVED", "test": "TEST"}


def _clock(at: datetime | None) -> str:
    return "-" if at is None else at.strftime("%Y-%m-%d %H:%M:%S UTC")


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"


def _figure(value) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)


@dataclass(frozen=True)
class Message:
    title: str
    body: str
    short_body: str


def compose(incident: Incident, *, kind: str, level: int, config, now: datetime,
            mentions: tuple[str, ...] = ()) -> Message:
    """The notice: severity, what was seen (the figures), since when, the runbook and the
    command that runs it, and how to acknowledge."""
    sev = incident.severity
    headline = _HEADLINES[kind]
    if kind == "escalated":
        headline = f"ESCALATED to level {level}"
    title = f"[{sev}{' ' + headline if headline else ''}] {incident.title} (incident #{incident.id})"
    response = config["ALERT_RESPONSE_SECONDS"].get(sev)
    lines = [f"Severity: {sev} ({SEVERITY_NAMES[sev]})"
             + (f", respond within {_duration(response)}" if response else ""),
             f"Seen: {incident.title}",
             f"Since: {_clock(incident.condition_since)} (opened {_clock(incident.opened_at)}, "
             f"seen {incident.occurrences} time{'s' if incident.occurrences != 1 else ''}, "
             f"last at {_clock(incident.last_seen_at)})"]
    if kind == "resolved":
        lines.append(f"Resolved: {_clock(incident.resolved_at)} by {incident.resolved_by}"
                     + (f" ({incident.resolve_reason})" if incident.resolve_reason else "")
                     + f", open for {_duration((incident.resolved_at - incident.opened_at).total_seconds())}")
    if kind == "escalated":
        lines.append(f"Not acknowledged within {_duration(response or 0)}: now with contact "
                     f"list {level}.")
    lines.append("Figures:")
    lines += [f"  {name}: {_figure(value)}" for name, value in sorted(incident.figures.items())]
    if incident.runbook:
        command = runbook_command(incident.runbook, incident.subject or "")
        lines += [f"Runbook: {incident.runbook}",
                  f"  diagnose: {command}",
                  f"  apply the fix: {command} --execute"]
    else:
        lines.append(f"Runbook: none for this incident type; see flask incidents show {incident.id}")
    if kind != "resolved":
        api = f"{config['ALERT_ADMIN_URL'] or ''}/api/admin/incidents/{incident.id}/ack"
        lines += [f'Acknowledge: flask incidents ack {incident.id} --reason "..."',
                  f"  or POST {api} with an operator's token and the JSON body "
                  '{"reason": "..."}']
    if mentions:
        lines.append("cc " + " ".join(mentions))
    figures = ", ".join(f"{k}={_figure(v)}" for k, v in sorted(incident.figures.items())
                        if not isinstance(v, dict | list))
    short = (f"{title}. {figures}. Since {_clock(incident.condition_since)}. "
             + (f"Runbook: {runbook_command(incident.runbook, incident.subject or '')}. "
                if incident.runbook else "")
             + ("" if kind == "resolved" else f"Ack: flask incidents ack {incident.id}"))
    return Message(title=title[:255], body="\n".join(lines), short_body=short.strip())


def notify_incident(incident: Incident, *, kind: str, now: datetime) -> AlertNotification | None:
    """Queue a notice about `incident` (in the caller's transaction); None for P3, which is
    only logged."""
    config = current_app.config
    book: ContactBook = current_app.extensions["alert_contacts"]
    log.warning("incident %s", kind, extra={"incident_id": incident.id, "severity": incident.severity,
                                           "rule": incident.rule, "title": incident.title})
    channels = SEVERITY_CHANNELS[incident.severity]
    if not channels:
        return None
    level = incident.escalation_level
    contacts = book.up_to(incident.severity, level) if kind == "resolved" \
        else book.at_level(incident.severity, level)
    db.session.flush()  # the incident's id goes into the message
    message = compose(incident, kind=kind, level=level, config=config, now=now,
                      mentions=contacts.slack_handles)
    notification = _queue(incident_id=incident.id, kind=kind, severity=incident.severity,
                          level=level, message=message, channels=channels, contacts=contacts)
    incident.last_notified_at = now
    incident.notified_count += 1
    return notification


def notify_test(*, severity: str) -> AlertNotification:
    """A test notice at `severity` through that severity's channels and first contacts."""
    book: ContactBook = current_app.extensions["alert_contacts"]
    contacts = book.at_level(severity, 0)
    now = utcnow()
    title = f"[{severity} TEST] Racine alert channels test"
    body = "\n".join([
        f"Severity: {severity} ({SEVERITY_NAMES[severity]}), a test: nothing is wrong.",
        f"Sent: {_clock(now)} by flask alerts test.",
        "Runbook: payment_processing_failure",
        "  diagnose: flask runbook run payment_processing_failure",
        "Acknowledge: nothing to acknowledge for a test.",
    ] + (["cc " + " ".join(contacts.slack_handles)] if contacts.slack_handles else []))
    message = Message(title=title, body=body,
                      short_body=f"{title}: nothing is wrong. Sent {_clock(now)}.")
    return _queue(incident_id=None, kind="test", severity=severity, level=0, message=message,
                  channels=SEVERITY_CHANNELS[severity], contacts=contacts, enqueue=False)


def _queue(*, incident_id: int | None, kind: str, severity: str, level: int, message: Message,
           channels: tuple[str, ...], contacts: Contacts, enqueue: bool = True) -> AlertNotification:
    configured = current_app.extensions["alert_channels"]
    notification = AlertNotification(incident_id=incident_id, kind=kind, severity=severity,
                                      level=level, title=message.title, body=message.body,
                                      short_body=message.short_body)
    db.session.add(notification)
    db.session.flush()
    deliveries = []
    for channel in channels:
        if channel not in configured:
            log.info("alert channel not configured; notice only logged",
                     extra={"channel": channel, "notification_id": notification.id})
            continue
        # The contacts' entries for the channel, else the recipient its URL names itself
        # (target ""), else no one.
        targets = contacts.targets(channel) or (
            ("",) if configured[channel].names_its_own_recipient else ())
        if not targets:
            log.warning("alert channel has no recipient at this severity; notice not sent "
                        "through it", extra={"channel": channel, "severity": severity,
                                             "notification_id": notification.id})
        for target in targets:
            deliveries.append(AlertDelivery(notification_id=notification.id, channel=channel,
                                            target=target))
    db.session.add_all(deliveries)
    db.session.flush()
    if enqueue and deliveries:
        add_jobs([(DELIVER_TASK, [d.id]) for d in deliveries], queue=QUEUE)
    return notification


# -- sending -------------------------------------------------------------------------------

_CLAIM = Statement(
    "UPDATE alert_deliveries SET status = :sending, attempts = attempts + 1,"
    " lease_until = :lease_until"
    " WHERE id = :delivery_id AND ((status IN (:pending, :retrying) AND next_attempt_at <= :now)"
    " OR (status = :sending AND lease_until < :now))"
    " RETURNING attempts, channel, target, notification_id",
    now=DateTime(), lease_until=DateTime(),
)


@dataclass(frozen=True)
class Outcome:
    delivery_id: int
    status: str  # sent, retrying, failed, skipped
    attempt: int = 0
    error: str | None = None


def deliver(delivery_id: int, *, channels: dict[str, Channel] | None = None,
            retry: bool = True) -> Outcome:
    """Send one delivery, if it is due and no other worker holds it, and record the attempt.

    A failed send is retried later through the outbox unless `retry` is false (a test
    notice is a question about the channels now).

    Commits on its own, on purpose: the claim is committed before the provider is called
    (another worker must see the lease), the caller's transaction is ended before the call
    (no HTTP or SMTP inside a transaction; call it with nothing pending), and the attempt
    is committed right after it, so a send that happened is on record whatever the caller
    does next (`flask alerts test` sends several in a row).
    """
    config = current_app.config
    channels = current_app.extensions["alert_channels"] if channels is None else channels
    now = utcnow()
    row = fetch_one(_CLAIM, {
        "delivery_id": delivery_id, "now": now,
        "lease_until": now + timedelta(seconds=config["ALERT_SEND_LEASE_SECONDS"]),
        "sending": DeliveryStatus.SENDING, "pending": DeliveryStatus.PENDING,
        "retrying": DeliveryStatus.RETRYING,
    })
    if row is None:
        return Outcome(delivery_id, "skipped")
    attempt, channel_name, target, notification_id = row
    notification = db.session.get(AlertNotification, notification_id)
    body = notification.short_body if channel_name == "sms" else notification.body
    title = notification.title
    # Only read since the claim: ended so nothing is held open while the provider is called.
    db.session.rollback()

    started = utcnow()
    error = None
    try:
        channel = channels.get(channel_name)
        if channel is None:
            raise ChannelError(f"{channel_name}: channel not configured (its URL setting is unset)")
        channel.send(title=title, body=body, target=target)
    except ChannelError as exc:
        error = str(exc)[:500]
    except Exception as exc:  # a library bug or an unexpected error is a failed attempt too
        error = f"{channel_name}: {type(exc).__name__}"
    outcome = _record(delivery_id, attempt=attempt, started=started, error=error, retry=retry)
    db.session.commit()
    extra = {"delivery_id": delivery_id, "notification_id": notification_id,
             "channel": channel_name, "attempt": attempt, "outcome": outcome.status}
    if error is None:
        log.info("alert delivered", extra=extra)
    else:
        log.warning("alert delivery failed", extra={**extra, "error": error})
    return outcome


def backoff_seconds(attempt: int, config) -> float:
    """Delay before the attempt after `attempt` (1-based): base * 2^(attempt-1), capped."""
    return min(config["ALERT_SEND_BACKOFF_SECONDS"] * 2 ** (attempt - 1),
               config["ALERT_SEND_BACKOFF_MAX_SECONDS"])


def _record(delivery_id: int, *, attempt: int, started: datetime, error: str | None,
            retry: bool) -> Outcome:
    """Add the attempt, move the delivery on, and queue its retry (the caller commits)."""
    config = current_app.config
    finished = utcnow()
    db.session.add(AlertDeliveryAttempt(delivery_id=delivery_id, attempt=attempt,
                                        started_at=started, finished_at=finished,
                                        outcome="sent" if error is None else "failed", error=error))
    values: dict = {"lease_until": None, "last_error": error}
    if error is None:
        status = DeliveryStatus.SENT
        values.update(status=status, sent_at=finished)
    elif retry and attempt < config["ALERT_SEND_MAX_ATTEMPTS"]:
        status = DeliveryStatus.RETRYING
        due = finished + timedelta(seconds=backoff_seconds(attempt, config))
        values.update(status=status, next_attempt_at=due)
        add_jobs([(DELIVER_TASK, [delivery_id])], queue=QUEUE, available_at=due)
    else:
        status = DeliveryStatus.FAILED
        values.update(status=status)
    db.session.execute(update(AlertDelivery).where(AlertDelivery.id == delivery_id,
                                                   AlertDelivery.status == DeliveryStatus.SENDING)
                       .values(**values))
    return Outcome(delivery_id, status, attempt, error)


def requeue_stalled(*, now: datetime | None = None) -> int:
    """Hand deliveries whose worker died mid-send (lease expired) back to the outbox."""
    now = now or utcnow()
    ids = db.session.scalars(select(AlertDelivery.id).where(
        AlertDelivery.status == DeliveryStatus.SENDING, AlertDelivery.lease_until < now)).all()
    if ids:
        add_jobs([(DELIVER_TASK, [i]) for i in ids], queue=QUEUE)
    return len(ids)

