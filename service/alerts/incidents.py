"""One evaluation of the escalation policy: rules -> conditions -> incidents -> notices.

For every key a rule reports (rule + subject):
- seen for the first time: a condition row starts; an incident opens once the condition
  has held for the severity's hold time (ALERT_HOLD_SECONDS; 0 opens at once);
- seen again with an incident active: the incident is updated (figures, count, last
  seen), never duplicated (a partial unique index backs this up);
- no longer reported: the condition is clear; the incident resolves by itself, with a
  resolved notice, once it has stayed clear for ALERT_CLEAR_SECONDS; a condition that
  comes back before that keeps the same incident (flap damping in both directions).
Then, for unacknowledged incidents whose condition still holds: past the severity's
response time, escalation to the next contact list; else, past its repeat interval, a
repeat notice. Signals raised since
the last evaluation are marked consumed and linked to the incident they belong to.

The whole evaluation is one transaction, committed by the caller (the base task for the
beat entry, the command for `flask alerts evaluate`) and serialised across processes by
an advisory lock on PostgreSQL held until that commit (SQLite's write lock does it
there). `now` comes from the caller (the beat task passes the real clock; tests a
controlled one).
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta

from flask import current_app
from sqlalchemy import delete, func, select, text

from service.alerts.models import AlertCondition, AlertSignal, Incident, IncidentStatus
from service.alerts.notify import notify_incident, requeue_stalled
from service.alerts.rules import Finding, RuleContext, key_for, registered_rules
from service.alerts.services import EVALUATION_ACTOR, resolve
from service.clock import utcnow
from service.extensions import db

log = logging.getLogger(__name__)

# pg_advisory_xact_lock key: "racine alerts evaluate".
_LOCK_KEY = 0x7261_6369_6E65_0011


@dataclass
class EvaluationReport:
    evaluated_at: str
    firing: list[str] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)
    opened: list[int] = field(default_factory=list)
    updated: list[int] = field(default_factory=list)
    resolved: list[int] = field(default_factory=list)
    escalated: list[int] = field(default_factory=list)
    repeated: list[int] = field(default_factory=list)
    signals_consumed: int = 0
    deliveries_requeued: int = 0
    errors: dict[str, str] = field(default_factory=dict)
    active: dict[str, int] = field(default_factory=dict)  # by severity, after this run

    def as_dict(self) -> dict:
        return asdict(self)

    @property
    def exit_code(self) -> int:
        """0: nothing above P3 active; 1: P1/P2 active or a rule failed; 2: P0 active."""
        if self.active.get("P0"):
            return 2
        if self.active.get("P1") or self.active.get("P2") or self.errors:
            return 1
        return 0


def _serialise() -> None:
    """One evaluation at a time, holding every active incident before anything else.

    A responder's ack or resolve locks its incident's row, then the audit chain (when it
    writes its audit row). The evaluation takes the audit chain too when it resolves an
    incident, so it takes every row it may touch first, in id order: the locks are then
    always taken row first, chain second, and the two never wait on each other in a cycle.
    Incidents the evaluation opens are its own until it commits.
    """
    if db.session.get_bind().dialect.name == "postgresql":
        db.session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _LOCK_KEY})
    db.session.execute(select(Incident.id).where(Incident.status.in_(IncidentStatus.ACTIVE))
                       .order_by(Incident.id).with_for_update())


def _resolutions():
    cache: dict[str, datetime | None] = {}

    def resolved_at(key: str) -> datetime | None:
        if key not in cache:
            cache[key] = db.session.scalar(select(func.max(Incident.resolved_at)).where(
                Incident.key == key, Incident.status == IncidentStatus.RESOLVED))
        return cache[key]
    return resolved_at


def evaluate(*, now: datetime | None = None) -> EvaluationReport:
    """Run every registered rule at `now` and apply the results in the current
    transaction; the caller commits (notices are sent only once it does)."""
    app = current_app._get_current_object()
    config = app.config
    now = now or utcnow()
    report = EvaluationReport(evaluated_at=now.isoformat() + "Z")
    rules = registered_rules(app)
    _serialise()
    resolved_at = _resolutions()
    ctx = RuleContext(now=now, config=config, redis=app.extensions["redis"], app=app,
                      resolved_at=resolved_at,
                      claimed_kinds=frozenset(k for r in rules for k in r.signal_kinds))
    for rule in rules:
        try:
            with db.session.begin_nested():
                findings = rule.evaluate(ctx)
        except Exception as exc:  # one broken rule must not silence the others
            log.error("alert rule failed", extra={"rule": rule.name,
                                                  "error": type(exc).__name__})
            report.errors[rule.name] = type(exc).__name__
            continue
        _apply(rule, findings, now=now, config=config, report=report,
               resolved_at=resolved_at)
    _escalate_and_repeat(now=now, config=config, report=report)
    report.signals_consumed = _fold_signals(rules, now=now, config=config)
    report.deliveries_requeued = requeue_stalled()
    report.active = dict(db.session.execute(
        select(Incident.severity, func.count()).where(Incident.status.in_(IncidentStatus.ACTIVE))
        .group_by(Incident.severity)).all())
    if report.opened or report.resolved or report.escalated or report.errors:
        log.info("alerts evaluated", extra={k: v for k, v in report.as_dict().items()
                                            if k in ("opened", "resolved", "escalated", "errors")})
    return report


def _apply(rule, findings: list[Finding], *, now: datetime, config, report: EvaluationReport,
           resolved_at) -> None:
    active = {i.key: i for i in db.session.scalars(
        select(Incident).where(Incident.rule == rule.name,
                               Incident.status.in_(IncidentStatus.ACTIVE)).with_for_update())}
    conditions = {c.key: c for c in db.session.scalars(
        select(AlertCondition).where(AlertCondition.rule == rule.name))}
    seen = set()
    for finding in findings:
        key = key_for(rule.name, finding.subject)
        if key in seen:
            continue
        seen.add(key)
        report.firing.append(key)
        severity = finding.severity or rule.severity
        details = json.dumps(finding.details, sort_keys=True, default=str)
        condition = conditions.get(key)
        if condition is None:
            condition = AlertCondition(key=key, rule=rule.name, severity=severity)
            db.session.add(condition)
        if condition.firing_since is None:
            condition.firing_since = now
        condition.clear_since = None
        condition.last_firing_at = now
        condition.severity = severity
        condition.details = details
        condition.updated_at = now
        incident = active.get(key)
        if incident is not None:
            incident.last_seen_at = now
            incident.occurrences += 1
            incident.details = details
            incident.title = finding.title[:255]
            incident.cleared_at = None
            report.updated.append(incident.id)
            continue
        # A condition must hold for the hold time, counted again after a resolution.
        held_from = max(condition.firing_since, resolved_at(key) or condition.firing_since)
        if (now - held_from).total_seconds() < config["ALERT_HOLD_SECONDS"].get(severity, 0):
            report.pending.append(key)
            continue
        incident = Incident(
            key=key, rule=rule.name, subject=finding.subject[:128], severity=severity,
            title=finding.title[:255], details=details,
            runbook=finding.runbook if finding.runbook is not None else rule.runbook,
            status=IncidentStatus.OPEN, condition_since=finding.since or condition.firing_since,
            opened_at=now, last_seen_at=now, occurrences=1)
        db.session.add(incident)
        db.session.flush()
        notify_incident(incident, kind="opened", now=now)
        report.opened.append(incident.id)

    for key in (set(conditions) | set(active)) - seen:
        condition = conditions.get(key)
        incident = active.get(key)
        if condition is None:
            condition = AlertCondition(key=key, rule=rule.name, severity=incident.severity,
                                       details=incident.details)
            db.session.add(condition)
        if condition.clear_since is None:
            condition.clear_since = now
            condition.firing_since = None
            condition.updated_at = now
        if incident is None:
            # Clear with nothing open: forget it (a condition that held too briefly to open
            # an incident leaves nothing behind).
            db.session.execute(delete(AlertCondition).where(AlertCondition.key == key))
            continue
        if incident.cleared_at is None:
            incident.cleared_at = condition.clear_since
        clear_for = (now - condition.clear_since).total_seconds()
        if clear_for >= config["ALERT_CLEAR_SECONDS"].get(incident.severity, 0):
            resolve(incident.id, actor=EVALUATION_ACTOR,
                    reason=f"condition clear since {condition.clear_since.isoformat()}Z", now=now)
            report.resolved.append(incident.id)


def _escalate_and_repeat(*, now: datetime, config, report: EvaluationReport) -> None:
    levels = len(config["ALERT_ESCALATION_CONTACTS"])
    unacknowledged = db.session.scalars(
        select(Incident).where(Incident.status == IncidentStatus.OPEN,
                               Incident.severity.in_(("P0", "P1", "P2")))
        .order_by(Incident.id).with_for_update()).all()
    for incident in unacknowledged:
        if incident.id in report.opened or incident.cleared_at is not None:
            # Just opened, or its condition is clear and it is about to resolve.
            continue
        response = config["ALERT_RESPONSE_SECONDS"].get(incident.severity)
        waiting_since = incident.escalated_at or incident.opened_at
        if response is not None and incident.escalation_level < levels and \
                now - waiting_since >= timedelta(seconds=response):
            incident.escalation_level += 1
            incident.escalated_at = now
            notify_incident(incident, kind="escalated", now=now)
            report.escalated.append(incident.id)
            continue
        repeat = config["ALERT_REPEAT_SECONDS"].get(incident.severity)
        last = incident.last_notified_at or incident.opened_at
        if repeat and now - last >= timedelta(seconds=repeat):
            notify_incident(incident, kind="repeat", now=now)
            report.repeated.append(incident.id)


def _fold_signals(rules, *, now: datetime, config) -> int:
    """Mark signals raised up to `now` consumed, and link each signal of the last hour (or
    signal window) to its rule's active incident if it came after the condition began;
    returns how many were consumed now."""
    window = max(config["ALERT_SIGNAL_WINDOW_SECONDS"], 3600)
    signals = db.session.scalars(
        select(AlertSignal).where(AlertSignal.incident_id.is_(None), AlertSignal.created_at <= now,
                                  (AlertSignal.consumed_at.is_(None))
                                  | (AlertSignal.created_at > now - timedelta(seconds=window)))
        .order_by(AlertSignal.id).with_for_update(skip_locked=True)).all()
    by_kind = {kind: rule for rule in rules for kind in rule.signal_kinds}
    catch_all = next((r for r in rules if getattr(r, "catch_all_signals", False)), None)
    active = {i.key: i for i in db.session.scalars(
        select(Incident).where(Incident.status.in_(IncidentStatus.ACTIVE)))}
    consumed = 0
    for signal in signals:
        if signal.consumed_at is None:
            signal.consumed_at = now
            consumed += 1
        rule = by_kind.get(signal.kind, catch_all)
        if rule is None:
            continue
        incident = active.get(key_for(rule.name, rule.signal_subject(signal)))
        if incident is not None and signal.created_at >= incident.condition_since:
            signal.incident_id = incident.id
            incident.signal_count += 1
    return consumed
