"""`flask alerts ...` (evaluate, test the channels, list the rules) and
`flask incidents ...` (list, show, ack, resolve, report)."""

from __future__ import annotations

import sys

import click
from flask import current_app
from flask.cli import AppGroup
from sqlalchemy import select

from service.alerts import incidents as evaluation
from service.alerts.channels import SEVERITY_CHANNELS
from service.alerts.exceptions import AlertsError, IncidentNotFound, InvalidTransition
from service.alerts.models import SEVERITIES, AlertDelivery, IncidentStatus
from service.alerts.notify import deliver, notify_test
from service.alerts.report import incident_report
from service.alerts.rules import registered_rules, runbook_command
from service.alerts.services import acknowledge, incident_detail, list_incidents, resolve
from service.audit.services import Actor
from service.cli_utils import Duration, echo_json, echo_table
from service.clock import utcnow
from service.extensions import db

alerts_cli = AppGroup("alerts", help="Evaluate the escalation rules and test the alert channels.")
incidents_cli = AppGroup("incidents", help="Incidents: list, show, acknowledge, resolve, report.")


def _fail(message: str, code: int = 1):
    click.echo(f"Error: {message}", err=True)
    sys.exit(code)


@alerts_cli.command("evaluate")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def evaluate_command(as_json):
    """Run every rule now and apply the results (what beat does every minute).

    Exit 0 when nothing above P3 is active, 1 when a P1/P2 incident is active or a rule
    failed, 2 when a P0 incident is active.
    """
    report = evaluation.evaluate()
    db.session.commit()
    if as_json:
        echo_json(report.as_dict())
    else:
        click.echo(f"evaluated at {report.evaluated_at}")
        for label in ("firing", "pending", "opened", "updated", "resolved", "escalated",
                      "repeated"):
            values = getattr(report, label)
            if values:
                click.echo(f"  {label:>9}: {', '.join(map(str, values))}")
        click.echo(f"  signals consumed: {report.signals_consumed}")
        for rule, error in report.errors.items():
            click.echo(f"  rule {rule} failed: {error}", err=True)
        active = ", ".join(f"{sev}={count}" for sev, count in sorted(report.active.items()))
        click.echo(f"  active incidents: {active or 'none'}")
    sys.exit(report.exit_code)


@alerts_cli.command("test")
@click.option("--severity", type=click.Choice(SEVERITIES[:3]), default="P1", show_default=True,
              help="Send through the channels and first contacts of this severity.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def test_command(severity, as_json):
    """Send a test notice through the real channels now, and say how each send went.

    Exit 0 when every configured channel delivered, 1 when one failed or reaches no one
    at the severity (no recipient listed nor named in its URL), 2 when no channel is
    configured for the severity.
    """
    notification = notify_test(severity=severity)
    db.session.commit()
    ids = db.session.scalars(select(AlertDelivery.id)
                             .where(AlertDelivery.notification_id == notification.id)
                             .order_by(AlertDelivery.id)).all()
    db.session.commit()
    if not ids:
        _fail(f"no channel configured for {severity} (set ALERT_SLACK_URL, ALERT_EMAIL_URL, "
              f"ALERT_SMS_URL and ALERT_RECIPIENTS_{severity})", 2)
    outcomes = []
    with click.progressbar(ids, label="sending", file=sys.stderr) as bar:
        for delivery_id in bar:
            outcomes.append(deliver(delivery_id, retry=False))
    deliveries = {d.id: d for d in db.session.scalars(
        select(AlertDelivery).where(AlertDelivery.id.in_(ids)))}
    rows = [{"delivery": o.delivery_id, "channel": deliveries[o.delivery_id].channel,
             "target": deliveries[o.delivery_id].target or "(webhook channel)",
             "outcome": o.status, "error": o.error} for o in outcomes]
    # A channel that is set up but reaches no one at this severity sends nothing: say so.
    sent_through = {row["channel"] for row in rows}
    unreached = [channel for channel in SEVERITY_CHANNELS[severity]
                 if channel in current_app.extensions["alert_channels"]
                 and channel not in sent_through]
    if as_json:
        echo_json({"notification_id": notification.id, "severity": severity, "deliveries": rows,
                   "channels_without_recipient": unreached})
    else:
        echo_table(rows, ["delivery", "channel", "target", "outcome", "error"])
        for channel in unreached:
            click.echo(f"{channel}: configured, but no recipient at {severity} (add one to "
                       f"ALERT_RECIPIENTS_{severity}, or name one in the channel's URL)",
                       err=True)
    sys.exit(0 if all(o.status == "sent" for o in outcomes) and not unreached else 1)


@alerts_cli.command("rules")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def rules_command(as_json):
    """List the rules the evaluation runs."""
    rows = [{"rule": r.name, "severity": r.severity, "runbook": r.runbook or "-",
             "condition": r.summary} for r in registered_rules(current_app)]
    if as_json:
        echo_json(rows)
    else:
        echo_table(rows, ["rule", "severity", "runbook", "condition"])


@incidents_cli.command("list")
@click.option("--status", type=click.Choice([*IncidentStatus.ALL, "active", "all"]),
              default="active", show_default=True, help="active = open or acknowledged.")
@click.option("--severity", type=click.Choice(SEVERITIES))
@click.option("--since", type=Duration(), help="Only incidents opened within this window (30d).")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 10000))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def list_command(status, severity, since, limit, as_json):
    """List incidents, newest first (P3 ones are the slow jobs to review)."""
    rows = [i.to_dict() for i in list_incidents(status=status, severity=severity, since=since,
                                                 limit=limit)]
    if as_json:
        echo_json(rows)
    else:
        echo_table(rows, ["id", "severity", "status", "opened_at", "occurrences",
                          "escalation_level", "title"])


@incidents_cli.command("show")
@click.argument("incident_id", type=int)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def show_command(incident_id, as_json):
    """One incident: figures, runbook, who acknowledged/resolved it, every notice sent."""
    try:
        data = incident_detail(incident_id)
    except IncidentNotFound as exc:
        _fail(str(exc))
    if as_json:
        echo_json(data)
        return
    notifications = data.pop("notifications")
    signals = data.pop("signals")
    details = data.pop("details")
    for key, value in data.items():
        click.echo(f"{key:>19}: {'' if value is None else value}")
    click.echo("            figures:")
    for key, value in sorted(details.items()):
        click.echo(f"                     {key}: {value}")
    if data["runbook"]:
        command = runbook_command(data["runbook"], data["subject"])
        click.echo(f"             runbook: {command}  (add --execute to apply the fix)")
    click.echo(f"            notices: {len(notifications)}")
    for note in notifications:
        click.echo(f"  #{note['id']} {note['kind']} at {note['created_at']} (level {note['level']})")
        for d in note["deliveries"]:
            click.echo(f"      {d['channel']:<5} {d['target'] or '(webhook channel)':<30} "
                       f"{d['status']:<8} attempts={d['attempts']}"
                       + (f" last_error={d['last_error']}" if d["last_error"] else ""))
    if signals:
        click.echo(f"  signals folded in: {data['signal_count']} (latest {len(signals)} shown)")
        for s in signals:
            click.echo(f"      #{s['id']} {s['kind']} {s['source']} {s['created_at']}")


def _transition(action, incident_id: int, reason: str | None, as_json: bool, verb: str):
    try:
        incident, changed = action(incident_id, actor=Actor.cli(), reason=reason)
        db.session.commit()
    except InvalidTransition as exc:
        db.session.rollback()
        _fail(str(exc), 3)
    except AlertsError as exc:
        db.session.rollback()
        _fail(str(exc))
    if as_json:
        echo_json({"incident": incident.to_dict(), "changed": changed})
    else:
        click.echo(f"incident {incident.id} {verb}" if changed
                   else f"incident {incident.id} was already {incident.status}")


@incidents_cli.command("ack")
@click.argument("incident_id", type=int)
@click.option("--reason", help="What you are doing about it.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def ack_command(incident_id, reason, as_json):
    """Acknowledge an incident: stops its repeats and escalation. Audited
    (`incident.acknowledge`, the operating-system user as actor).

    Exit 0 done (or already acknowledged), 1 no such incident, 3 already resolved.
    """
    _transition(acknowledge, incident_id, reason, as_json, "acknowledged")


@incidents_cli.command("resolve")
@click.argument("incident_id", type=int)
@click.option("--reason", required=True, help="What fixed it.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def resolve_command(incident_id, reason, as_json):
    """Resolve an incident by hand and send its resolved notice. Audited
    (`incident.resolve`, the operating-system user as actor).

    If its condition still holds, the next evaluation opens a new incident. Exit 0 done
    (or already resolved), 1 no such incident.
    """
    _transition(resolve, incident_id, reason, as_json, "resolved")


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"


@incidents_cli.command("report")
@click.option("--since", type=Duration(), default="30d", show_default=True,
              help="The period: incidents opened within it (30d, 12h).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def report_command(since, as_json):
    """Count, MTTA and MTTR per severity, and whether the P1 MTTR and the webhook success
    goals were met. Exit 0 when both were met, 1 when one was missed."""
    report = incident_report(since=since, until=utcnow())
    goals = report["goals"]
    if as_json:
        echo_json(report)
    else:
        click.echo(f"Incidents opened from {report['since']} to {report['until']}")
        rows = [{"severity": sev, **{k: v for k, v in figures.items() if not k.endswith("seconds")},
                 "mtta": _duration(figures["mtta_seconds"]),
                 "mttr": _duration(figures["mttr_seconds"])}
                for sev, figures in report["severities"].items()]
        echo_table(rows, ["severity", "incidents", "acknowledged", "resolved", "open", "mtta",
                          "mttr"])
        p1 = goals["p1_mttr"]
        click.echo(f"P1 MTTR goal (< {_duration(p1['goal_seconds'])}): "
                   f"{'met' if p1['met'] else 'MISSED'} (MTTR {_duration(p1['mttr_seconds'])} "
                   f"over {p1['resolved']} resolved"
                   + (f"; still open past the goal: {p1['open_past_goal']}" if p1["open_past_goal"]
                      else "") + ")")
        hook = goals["webhook_success"]
        ratio = "no finished events" if hook["ratio"] is None else f"{hook['ratio']:.4%}"
        click.echo(f"Webhook success goal (>= {hook['target']:.1%}): "
                   f"{'met' if hook['met'] else 'MISSED'} ({ratio}: {hook['succeeded']} "
                   f"succeeded, {hook['failed']} failed, {hook['outstanding']} outstanding)")
    sys.exit(0 if goals["p1_mttr"]["met"] and goals["webhook_success"]["met"] else 1)
