"""The rules: each looks at the database and Redis at a given time and says what holds.

A rule returns one `Finding` per subject for which its condition holds now (a queue, a
task, or none for a service-wide condition); the evaluation (`incidents.evaluate`) turns
findings into incidents, and treats every subject the rule no longer reports as clear.
Rules only read, and take the time from the context, so they can be evaluated on a
controlled clock.

Any domain may add a rule from its `init_app` with `register_rule(app, rule)`; a rule is
anything with the attributes of `Rule`. Signals a domain raises are folded into the
incidents of the rule that names their kind in `signal_kinds`; kinds no rule names are
turned into incidents of their own by `SignalRule` (severity and kind from the signal).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Protocol

import redis
from flask import Flask
from sqlalchemy import func, select, true

from service.alerts.models import AlertSignal
from service.alerts.services import PaymentEvents, intake_unavailability, payment_events
from service.celery_app import queues
from service.extensions import db
from service.queues.depth import depths, oldest_wait_seconds

_RULES = "racine.alert_rules"

# Runbooks (notebooks run by `flask runbook run <name>`), one per incident type.
PAYMENT_RUNBOOK = "payment_processing_failure"
LOOP_RUNBOOK = "webhook_loop_detected"
QUEUE_RUNBOOK = "queue_overload"
STOCK_RUNBOOK = "stock_sync_failure"

# Signal kinds other domains raise, and the runbook for each. A signal may also name its
# runbook in its details ("runbook"); a kind with neither gets an incident without one
# (tests/unit/alerts/test_signal_kinds.py fails on a raised kind missing here). The money
# rule's kinds (service/orders/money.py); a Stripe livemode mismatch is a permanent
# failure, so it arrives as a webhook_failure signal.
SIGNAL_RUNBOOKS = {
    "payment_underpaid": PAYMENT_RUNBOOK,
    "payment_currency_mismatch": PAYMENT_RUNBOOK,
    "payment_overpaid": PAYMENT_RUNBOOK,
    "refund_currency_mismatch": PAYMENT_RUNBOOK,
    "refund_exceeds_capture": PAYMENT_RUNBOOK,
    # Kinds of later domains (loop detection, the ERP sync). Each has a rule of its own,
    # registered by its domain, that claims them: the webhook loop rule
    # (service/webhooks/rules.py) the loop kinds, the first raised by the loop runbook
    # when it pins the looping events; the ERP rule (service/erp/rules.py)
    # `erp_sync_failed`, raised by the stock runbook when it pauses the sync. Their
    # runbooks are the same should no rule claim them.
    "webhook_loop": LOOP_RUNBOOK,
    "duplicate_storm": LOOP_RUNBOOK,
    "erp_sync_failed": STOCK_RUNBOOK,
}
_RUNBOOK_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")


# The runbook parameter an incident's subject fills in, so the command a notice prints
# looks at what the incident is about (a backlog on `orders` runs the queue runbook on
# `orders`, not on its default queue).
SUBJECT_PARAMETERS = {QUEUE_RUNBOOK: "queue"}


def runbook_command(runbook: str, subject: str = "") -> str:
    """The command that runs `runbook` for an incident about `subject`."""
    parameter = SUBJECT_PARAMETERS.get(runbook)
    if parameter and subject and re.match(r"^[A-Za-z0-9_.:-]{1,64}$", subject):
        return f"flask runbook run {runbook} -p {parameter} {subject}"
    return f"flask runbook run {runbook}"


def runbook_for(kind: str, details: dict) -> str:
    named = details.get("runbook")
    if isinstance(named, str) and _RUNBOOK_NAME.match(named):
        return named
    return SIGNAL_RUNBOOKS.get(kind, "")


@dataclass(frozen=True)
class Finding:
    """A condition that holds now, for one subject, with the figures that show it."""

    title: str
    details: dict
    subject: str = ""
    since: datetime | None = None  # when it began, when the rule can tell
    severity: str | None = None  # the rule's own unless set
    runbook: str | None = None  # the rule's own unless set


@dataclass
class RuleContext:
    now: datetime
    config: Mapping
    redis: redis.Redis
    app: Flask
    # The last time an incident with this key was resolved: counting rules start their
    # window there, so an incident resolved by hand is not reopened by what it covered.
    resolved_at: Callable[[str], datetime | None] = lambda _key: None
    claimed_kinds: frozenset[str] = frozenset()
    _cache: dict = field(default_factory=dict)

    @property
    def payments(self) -> PaymentEvents:
        """Payment event figures, from the provider the webhooks domain registered."""
        return payment_events(self.app)

    def window_start(self, key: str, seconds: float) -> datetime:
        start = self.now - timedelta(seconds=seconds)
        resolved = self.resolved_at(key)
        return max(start, resolved) if resolved is not None else start


class Rule(Protocol):
    name: str  # stable; the first part of every incident key the rule makes
    severity: str
    runbook: str
    summary: str  # one line for `flask alerts rules`
    signal_kinds: tuple[str, ...]  # signals folded into this rule's incidents

    def evaluate(self, ctx: RuleContext) -> list[Finding]: ...

    def signal_subject(self, signal: AlertSignal) -> str: ...


def key_for(rule_name: str, subject: str) -> str:
    return f"{rule_name}:{subject}" if subject else rule_name


class BaseRule:
    name = ""
    severity = "P3"
    runbook = ""
    summary = ""
    signal_kinds: tuple[str, ...] = ()

    def signal_subject(self, signal: AlertSignal) -> str:
        return ""

    def key(self, subject: str = "") -> str:
        return key_for(self.name, subject)


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:g} min" if seconds >= 60 else f"{seconds:g} s"


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat(timespec="seconds") + "Z"


def _age(now: datetime, then: datetime | None) -> int | None:
    return None if then is None else int((now - then).total_seconds())


# -- P0 ----------------------------------------------------------------------------------

class PaymentStallRule(BaseRule):
    name = "payment_stall"
    severity = "P0"
    runbook = PAYMENT_RUNBOOK

    @property
    def summary(self) -> str:
        return "payment events waiting and none processed for ALERT_PAYMENT_STALL_SECONDS"

    def evaluate(self, ctx: RuleContext) -> list[Finding]:
        stall = ctx.config["ALERT_PAYMENT_STALL_SECONDS"]
        limit = ctx.now - timedelta(seconds=stall)
        flow = ctx.payments.flow(now=ctx.now, window=timedelta(seconds=stall))
        if not flow.outstanding or flow.oldest_outstanding_at > limit:
            return []
        if flow.last_finished_at is not None and flow.last_finished_at > limit:
            return []
        since = flow.oldest_outstanding_at
        if flow.last_finished_at is not None and flow.last_finished_at > since:
            since = flow.last_finished_at
        return [Finding(
            title=(f"Payment processing stalled: {flow.outstanding} events waiting, none "
                   f"processed for {_minutes((ctx.now - since).total_seconds())}"),
            details={"events_waiting": flow.outstanding,
                     "oldest_waiting_seconds": _age(ctx.now, flow.oldest_outstanding_at),
                     "arrived_in_window": flow.arrived, "processed_in_window": flow.finished,
                     "last_processed_at": _iso(flow.last_finished_at),
                     "window_seconds": stall},
            since=since)]


class PaymentFailureStreakRule(BaseRule):
    name = "payment_failure_streak"
    severity = "P0"
    runbook = PAYMENT_RUNBOOK

    @property
    def summary(self) -> str:
        return "the last ALERT_FAILED_STREAK payment events all failed"

    def evaluate(self, ctx: RuleContext) -> list[Finding]:
        streak = ctx.config["ALERT_FAILED_STREAK"]
        resolved = ctx.resolved_at(self.key())
        latest = [row for row in ctx.payments.latest_outcomes(streak, now=ctx.now)
                  if resolved is None or row[2] > resolved]
        if len(latest) < streak or not all(failed for _, failed, _ in latest):
            return []
        ids = [event_pk for event_pk, _, _ in latest]
        since = min(received for _, _, received in latest)
        return [Finding(
            title=f"Payment processing failing: the last {streak} payment events all failed",
            details={"failed_in_a_row": streak, "event_ids": sorted(ids),
                     "first_received_at": _iso(since)},
            since=since)]


class IntakeUnavailableRule(BaseRule):
    name = "intake_unavailable"
    severity = "P0"
    runbook = PAYMENT_RUNBOOK

    @property
    def summary(self) -> str:
        return "the intake answering 503 (event not stored) for ALERT_INTAKE_503_SECONDS"

    def evaluate(self, ctx: RuleContext) -> list[Finding]:
        threshold = ctx.config["ALERT_INTAKE_503_SECONDS"]
        gap = ctx.config["ALERT_INTAKE_503_GAP_SECONDS"]
        run = intake_unavailability(ctx.redis)
        if run is None or run.last < ctx.now - timedelta(seconds=gap):
            return []
        last_stored = ctx.payments.last_stored_at(now=ctx.now)
        if last_stored is not None and last_stored >= run.last:
            return []  # an event was stored after the last 503: the intake is back
        start = run.first if last_stored is None else max(run.first, last_stored)
        if (ctx.now - start).total_seconds() < threshold:
            return []
        return [Finding(
            title=(f"Intake answering 503: {run.count} deliveries refused, none stored for "
                   f"{_minutes((ctx.now - start).total_seconds())}"),
            details={"responses_503": run.count, "first_503_at": _iso(run.first),
                     "last_503_at": _iso(run.last), "last_stored_at": _iso(last_stored),
                     "threshold_seconds": threshold},
            since=start)]


# -- P1 ----------------------------------------------------------------------------------

class WebhookFailuresRule(BaseRule):
    name = "webhook_failures"
    severity = "P1"
    runbook = PAYMENT_RUNBOOK
    signal_kinds = ("webhook_failure",)
    window = 3600

    @property
    def summary(self) -> str:
        return "more than ALERT_FAILURES_PER_HOUR webhook failures in the last hour"

    def evaluate(self, ctx: RuleContext) -> list[Finding]:
        threshold = ctx.config["ALERT_FAILURES_PER_HOUR"]
        start = ctx.window_start(self.key(), self.window)
        rows = db.session.execute(
            select(AlertSignal.source, AlertSignal.created_at)
            .where(AlertSignal.kind.in_(self.signal_kinds), AlertSignal.created_at > start,
                   AlertSignal.created_at <= ctx.now)).all()
        if len(rows) <= threshold:
            return []
        by_source = Counter(source for source, _ in rows)
        return [Finding(
            title=f"Webhook failures: {len(rows)} in the last hour (threshold {threshold})",
            details={"failures_last_hour": len(rows), "threshold": threshold,
                     "by_type": dict(by_source.most_common(5)),
                     "first_failure_at": _iso(min(at for _, at in rows))},
            since=min(at for _, at in rows))]


class SuccessRatioRule(BaseRule):
    name = "webhook_success_ratio"
    severity = "P1"
    runbook = PAYMENT_RUNBOOK
    window = 3600

    @property
    def summary(self) -> str:
        return ("webhook success over the last hour under ALERT_SUCCESS_TARGET, with at "
                "least ALERT_SUCCESS_MIN_VOLUME finished events")

    def evaluate(self, ctx: RuleContext) -> list[Finding]:
        target = ctx.config["ALERT_SUCCESS_TARGET"]
        volume = ctx.config["ALERT_SUCCESS_MIN_VOLUME"]
        start = ctx.window_start(self.key(), self.window)
        seen = ctx.payments.outcomes(since=start, until=ctx.now)
        ratio = seen.success_ratio
        if seen.finished < volume or ratio is None or ratio >= target:
            return []
        return [Finding(
            title=(f"Webhook success {ratio:.2%} over the last hour, under the "
                   f"{target:.1%} goal ({seen.failed} of {seen.finished} failed)"),
            details={"success_ratio": round(ratio, 6), "target": target,
                     "succeeded": seen.succeeded, "failed": seen.failed,
                     "still_outstanding": seen.outstanding, "min_volume": volume})]


# -- P2 ----------------------------------------------------------------------------------

class QueueBacklogRule(BaseRule):
    name = "queue_backlog"
    severity = "P2"
    runbook = QUEUE_RUNBOOK

    @property
    def summary(self) -> str:
        return "a queue deeper than QUEUE_DEPTH_ALERT, or its oldest job older than ALERT_QUEUE_AGE_SECONDS"

    def evaluate(self, ctx: RuleContext) -> list[Finding]:
        depth_limit = ctx.config["QUEUE_DEPTH_ALERT"]
        age_limit = ctx.config["ALERT_QUEUE_AGE_SECONDS"]
        names = queues(ctx.app)
        now_ts = ctx.now.replace(tzinfo=UTC).timestamp()
        findings = []
        for name, depth in depths(ctx.redis, names).items():
            age = oldest_wait_seconds(ctx.redis, name, now=now_ts) if depth else None
            reasons = []
            if depth > depth_limit:
                reasons.append(f"{depth} jobs waiting (threshold {depth_limit})")
            if age is not None and age > age_limit:
                reasons.append(f"oldest job waiting {_minutes(round(age))} "
                               f"(threshold {_minutes(age_limit)})")
            if not reasons:
                continue
            findings.append(Finding(
                subject=name, title=f"Queue {name} backlog: " + ", ".join(reasons),
                details={"queue": name, "depth": depth, "depth_threshold": depth_limit,
                         "oldest_wait_seconds": None if age is None else round(age, 1),
                         "age_threshold_seconds": age_limit}))
        return findings


# -- signals -----------------------------------------------------------------------------

class SignalRule(BaseRule):
    """Incidents from signals: one per kind (or per kind and source), held while signals
    keep coming within ALERT_SIGNAL_WINDOW_SECONDS."""

    def __init__(self, *, name: str, summary: str, signal_kinds: tuple[str, ...] = (),
                 per_source: bool = False, runbook: str = "", severity: str = "P3"):
        self.name = name
        self.summary = summary
        self.signal_kinds = signal_kinds
        self.per_source = per_source
        self.runbook = runbook
        self.severity = severity
        # Without kinds of its own it takes every kind no other rule names.
        self.catch_all_signals = not signal_kinds

    def signal_subject(self, signal: AlertSignal) -> str:
        return signal.source[:128] if self.per_source else signal.kind

    def _kinds_condition(self, ctx: RuleContext):
        if self.signal_kinds:
            return AlertSignal.kind.in_(self.signal_kinds)
        # The catch-all: every kind no other rule takes.
        return AlertSignal.kind.not_in(sorted(ctx.claimed_kinds)) if ctx.claimed_kinds else true()

    def evaluate(self, ctx: RuleContext) -> list[Finding]:
        window = ctx.config["ALERT_SIGNAL_WINDOW_SECONDS"]
        earliest = ctx.now - timedelta(seconds=window)
        group = AlertSignal.source if self.per_source else AlertSignal.kind
        rows = db.session.execute(
            select(group, AlertSignal.kind, func.min(AlertSignal.severity),
                   func.count(), func.min(AlertSignal.created_at),
                   func.max(AlertSignal.id))
            .where(self._kinds_condition(ctx), AlertSignal.created_at > earliest,
                   AlertSignal.created_at <= ctx.now)
            .group_by(group, AlertSignal.kind)).all()
        findings = []
        for subject_value, kind, severity, count, first_at, latest_id in rows:
            subject = subject_value[:128]
            start = ctx.window_start(self.key(subject), window)
            if first_at <= start:
                # Signals from before a resolution do not hold the condition on their own.
                count = db.session.scalar(
                    select(func.count()).select_from(AlertSignal)
                    .where(group == subject_value, AlertSignal.kind == kind,
                                               AlertSignal.created_at > start,
                                               AlertSignal.created_at <= ctx.now))
                if not count:
                    continue
            latest = db.session.get(AlertSignal, latest_id)
            latest_details = json.loads(latest.details or "{}")
            label = kind.replace("_", " ")
            where = f" in {subject}" if self.per_source else f" (latest from {latest.source})"
            findings.append(Finding(
                subject=subject, severity=severity,
                runbook=self.runbook or runbook_for(kind, latest_details),
                title=f"{label.capitalize()}: {count} in the last {_minutes(window)}{where}",
                details={"kind": kind, "signals": count, "window_seconds": window,
                         "latest_source": latest.source,
                         "latest": latest_details,
                         "first_at": _iso(first_at)},
                since=first_at))
        return findings


def builtin_rules() -> list:
    return [
        PaymentStallRule(), PaymentFailureStreakRule(), IntakeUnavailableRule(),
        WebhookFailuresRule(), SuccessRatioRule(), QueueBacklogRule(),
        SignalRule(name="slow_jobs", severity="P3", signal_kinds=("slow_job",), per_source=True,
                   summary="slow jobs (signalled by the queues domain), listed for review"),
        SignalRule(name="signals", severity="P1",
                   summary="any other signal a domain raises (underpayment, currency "
                           "mismatch, ...), at the signal's own severity"),
    ]


def register_rule(app: Flask, rule) -> None:
    """Add a rule to the evaluation (call from a domain's `init_app`)."""
    rules = app.extensions.setdefault(_RULES, [])
    if any(existing.name == rule.name for existing in rules):
        raise ValueError(f"alert rule {rule.name!r} registered twice")
    rules.append(rule)


def registered_rules(app: Flask) -> list:
    return list(app.extensions.get(_RULES, []))
