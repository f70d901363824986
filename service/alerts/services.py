"""The escalation policy's entry points for other domains and for responders.

- `raise_signal`: any domain reports a symptom, in the caller's transaction (slow jobs
  arrive through `raise_slow_job_signal`, the listener this domain registers with the
  queues domain).
- `note_intake_unavailable`: the intake reports a 503 (the database could not store an
  event); kept in Redis, since the database is what failed.
- `register_payment_events`: the domain that stores payment events (webhooks) tells the
  policy where to read their figures, from its `init_app`; this package imports none of
  its models.
- `acknowledge` and `resolve`: the one place each responder action happens, whether it
  comes from the CLI, the admin API or the evaluation itself; each writes its audit row
  (`incident.acknowledge`, `incident.resolve`) in the caller's transaction.
- `list_incidents` and `incident_detail`: what the CLI and the admin API show.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Protocol

import redis
from flask import Flask
from sqlalchemy import select

from service.alerts.exceptions import IncidentNotFound, InvalidTransition
from service.alerts.models import (
    SEVERITIES,
    AlertDelivery,
    AlertDeliveryAttempt,
    AlertNotification,
    AlertSignal,
    Incident,
    IncidentStatus,
)
from service.audit.registry import critical, not_critical, register_action
from service.audit.services import Actor, record
from service.clock import utcnow
from service.extensions import db

log = logging.getLogger(__name__)

INTAKE_503_KEY = "racine:alerts:intake_503"
MAX_REASON = 500
MAX_ACTOR = 128
_PAYMENT_EVENTS = "racine.alert_payment_events"

# The responders' actions are critical: each leaves an audit row with the incident's state
# before and after. The evaluation resolves too (its condition cleared): that resolution
# goes through the same function and is audited with the system actor `system:alerts`.
register_action(
    "incident.acknowledge", entity_type="incident",
    description="An incident acknowledged by a responder (stops its repeats and escalation)",
    entry_points=("POST /api/admin/incidents/<id>/ack", "flask incidents ack"))
register_action(
    "incident.resolve", entity_type="incident",
    description="An incident resolved: by a responder, or by the evaluation once its "
                "condition stayed clear",
    entry_points=("POST /api/admin/incidents/<id>/resolve", "flask incidents resolve",
                  "alerts evaluation (condition clear)"))
EVALUATION_ACTOR = Actor.system("alerts")


@not_critical("a symptom for the escalation policy; the signal row is its record")
def raise_signal(*, severity: str, kind: str, source: str, details: dict | None = None) -> AlertSignal:
    """Add a signal to the current transaction; the caller commits."""
    if severity not in SEVERITIES:
        raise ValueError(f"severity must be one of {SEVERITIES}, got {severity!r}")
    signal = AlertSignal(severity=severity, kind=kind, source=source[:255],
                         details=json.dumps(details or {}, default=str, sort_keys=True))
    db.session.add(signal)
    return signal


@not_critical("reads only")
def latest_signal(kinds: tuple[str, ...], *, since: datetime, until: datetime) -> dict | None:
    """The latest signal of `kinds` raised in [`since`, `until`] (AlertSignal.to_dict),
    or None: for a domain's rule that its own signals hold."""
    signal = db.session.scalar(
        select(AlertSignal).where(AlertSignal.kind.in_(kinds), AlertSignal.created_at >= since,
                                  AlertSignal.created_at <= until)
        .order_by(AlertSignal.id.desc()).limit(1))
    return None if signal is None else signal.to_dict()


@not_critical("a symptom for the escalation policy; the signal row is its record")
def raise_slow_job_signal(*, task_name: str, details: dict) -> None:
    """A slow job the queues domain recorded, as a P3 signal (listed for review, never
    sent); registered with `service.queues.slowjobs.on_slow_job`."""
    raise_signal(severity="P3", kind="slow_job", source=task_name, details=details)


@not_critical("a counter in Redis; changes nothing an auditor asks about")
def note_intake_unavailable(client: redis.Redis, *, gap_seconds: int) -> None:
    """Count a 503 from the intake: the first and last time of the current run of them.

    The run ends by itself when no 503 comes for `gap_seconds` (the hash expires). One
    round trip; never raises, since the caller is already answering an error.
    """
    now = repr(time.time())
    try:
        pipe = client.pipeline(transaction=False)
        pipe.hsetnx(INTAKE_503_KEY, "first", now)
        pipe.hset(INTAKE_503_KEY, "last", now)
        pipe.hincrby(INTAKE_503_KEY, "count", 1)
        pipe.expire(INTAKE_503_KEY, gap_seconds)
        pipe.execute()
    except redis.RedisError:
        log.warning("could not note an intake 503 in Redis")


@dataclass(frozen=True)
class Unavailability:
    first: datetime
    last: datetime
    count: int


@not_critical("reads only")
def intake_unavailability(client: redis.Redis) -> Unavailability | None:
    """The current run of intake 503s, or None; raises redis.RedisError."""
    raw = client.hgetall(INTAKE_503_KEY)
    if not raw or b"first" not in raw or b"last" not in raw:
        return None
    return Unavailability(first=_naive_utc(float(raw[b"first"])),
                          last=_naive_utc(float(raw[b"last"])),
                          count=int(raw.get(b"count", 0)))


def _naive_utc(timestamp: float) -> datetime:
    return datetime.fromtimestamp(timestamp, UTC).replace(tzinfo=None)


@dataclass(frozen=True)
class Flow:
    """Payment events arrived and finished in a window, and the work still waiting."""

    arrived: int
    finished: int
    outstanding: int
    oldest_outstanding_at: datetime | None
    last_finished_at: datetime | None


@dataclass(frozen=True)
class Outcomes:
    """Payment events received in a period, by how they ended."""

    succeeded: int
    failed: int
    outstanding: int

    @property
    def finished(self) -> int:
        return self.succeeded + self.failed

    @property
    def success_ratio(self) -> float | None:
        return None if not self.finished else self.succeeded / self.finished


class PaymentEvents(Protocol):
    """Figures about the flow of payment events, read by the P0/P1 rules, the report and
    the metrics. Every method takes its times from the caller (a controlled clock in
    tests) and reads with indexed queries."""

    def flow(self, *, now: datetime, window: timedelta) -> Flow:
        """Arrivals and successful completions within `window` before `now`, and the
        events still waiting at `now`."""

    def latest_outcomes(self, count: int, *, now: datetime) -> list[tuple[int, bool, datetime]]:
        """The last `count` events (received by `now`) that were applied or failed, newest
        first: (event id, failed, received at). Events no handler takes are left out."""

    def last_stored_at(self, *, now: datetime) -> datetime | None:
        """When the intake last stored an event, at or before `now`."""

    def outcomes(self, *, since: datetime, until: datetime) -> Outcomes:
        """Events received in (`since`, `until`], by how they ended."""


@not_critical("wiring at start-up")
def register_payment_events(app: Flask, provider: PaymentEvents) -> None:
    """Tell the escalation policy where payment event figures come from (called from the
    init_app of the domain that stores the events)."""
    app.extensions[_PAYMENT_EVENTS] = provider


@not_critical("reads only")
def payment_events(app: Flask) -> PaymentEvents:
    provider = app.extensions.get(_PAYMENT_EVENTS)
    if provider is None:
        raise LookupError("no payment events provider registered (the webhooks domain "
                          "registers one in its init_app)")
    return provider


@not_critical("reads only")
def list_incidents(*, status: str = "active", severity: str | None = None,
                   since: datetime | None = None, before: int | None = None,
                   limit: int = 50) -> list[Incident]:
    """Incidents newest first; `status` is one of IncidentStatus.ALL, "active" (open or
    acknowledged) or "all"; `before` pages by id."""
    query = select(Incident).order_by(Incident.id.desc()).limit(limit)
    if status == "active":
        query = query.where(Incident.status.in_(IncidentStatus.ACTIVE))
    elif status != "all":
        query = query.where(Incident.status == status)
    if severity:
        query = query.where(Incident.severity == severity)
    if since:
        query = query.where(Incident.opened_at >= since)
    if before is not None:
        query = query.where(Incident.id < before)
    return list(db.session.scalars(query))


def _incident_for_update(incident_id: int) -> Incident:
    incident = db.session.scalar(select(Incident).where(Incident.id == incident_id)
                                 .with_for_update())
    if incident is None:
        raise IncidentNotFound(f"no incident with id {incident_id}")
    return incident


@not_critical("reads only")
def incident_detail(incident_id: int) -> dict:
    """An incident with its notices, their deliveries and attempts, and its latest
    signals; raises IncidentNotFound."""
    incident = db.session.get(Incident, incident_id)
    if incident is None:
        raise IncidentNotFound(f"no incident with id {incident_id}")
    data = incident.to_dict()
    notifications = db.session.scalars(
        select(AlertNotification).where(AlertNotification.incident_id == incident.id)
        .order_by(AlertNotification.id)).all()
    data["notifications"] = []
    for note in notifications:
        entry = note.to_dict()
        entry["deliveries"] = []
        for delivery in db.session.scalars(select(AlertDelivery).where(
                AlertDelivery.notification_id == note.id).order_by(AlertDelivery.id)):
            item = delivery.to_dict()
            item["attempts_log"] = [a.to_dict() for a in db.session.scalars(
                select(AlertDeliveryAttempt).where(AlertDeliveryAttempt.delivery_id == delivery.id)
                .order_by(AlertDeliveryAttempt.id))]
            entry["deliveries"].append(item)
        data["notifications"].append(entry)
    data["signals"] = [s.to_dict() for s in db.session.scalars(
        select(AlertSignal).where(AlertSignal.incident_id == incident.id)
        .order_by(AlertSignal.id.desc()).limit(20))]
    return data


def _clean_reason(reason: str | None) -> str | None:
    reason = (reason or "").strip() or None
    return None if reason is None else reason[:MAX_REASON]


def _audited_state(incident: Incident) -> dict:
    """What the audit row keeps of an incident, before and after a responder's action."""
    data = incident.to_dict()
    return {key: data[key] for key in (
        "key", "severity", "status", "escalation_level", "acknowledged_at", "acknowledged_by",
        "acknowledge_reason", "resolved_at", "resolved_by", "resolve_reason")}


@critical("incident.acknowledge")
def acknowledge(incident_id: int, *, actor: Actor, reason: str | None = None,
                now: datetime | None = None) -> tuple[Incident, bool]:
    """Acknowledge an incident: stops its repeats and escalation, and writes its
    `incident.acknowledge` audit row. The caller commits.

    Returns the incident and whether it changed (acknowledging twice changes nothing and
    records nothing); raises IncidentNotFound, or InvalidTransition for a resolved incident.
    """
    reason = _clean_reason(reason)
    incident = _incident_for_update(incident_id)
    if incident.status == IncidentStatus.RESOLVED:
        raise InvalidTransition(f"incident {incident_id} is already resolved")
    if incident.status == IncidentStatus.ACKNOWLEDGED:
        return incident, False
    before = _audited_state(incident)
    incident.status = IncidentStatus.ACKNOWLEDGED
    incident.acknowledged_at = now or utcnow()
    incident.acknowledged_by = actor.label[:MAX_ACTOR]
    incident.acknowledge_reason = reason
    record(action="incident.acknowledge", entity_type="incident", entity_id=incident.id,
           actor=actor, before=before, after=_audited_state(incident), reason=reason)
    log.info("incident acknowledged", extra={"incident_id": incident.id, "actor": actor.label,
                                             "severity": incident.severity})
    return incident, True


@critical("incident.resolve")
def resolve(incident_id: int, *, actor: Actor, reason: str | None = None,
            now: datetime | None = None, notify: bool = True) -> tuple[Incident, bool]:
    """Resolve an incident (by a responder, or by the evaluation with EVALUATION_ACTOR
    when its condition cleared), queue its resolved notice and write its
    `incident.resolve` audit row. The caller commits.

    Returns the incident and whether it changed (resolving twice changes nothing and
    records nothing); raises IncidentNotFound.
    """
    from service.alerts.notify import notify_incident

    reason = _clean_reason(reason)
    incident = _incident_for_update(incident_id)
    if incident.status == IncidentStatus.RESOLVED:
        return incident, False
    before = _audited_state(incident)
    now = now or utcnow()
    incident.status = IncidentStatus.RESOLVED
    incident.resolved_at = now
    incident.resolved_by = actor.label[:MAX_ACTOR]
    incident.resolve_reason = reason
    if notify:
        notify_incident(incident, kind="resolved", now=now)
    record(action="incident.resolve", entity_type="incident", entity_id=incident.id,
           actor=actor, before=before, after=_audited_state(incident), reason=reason)
    log.info("incident resolved", extra={"incident_id": incident.id, "actor": actor.label,
                                         "severity": incident.severity})
    return incident, True
