"""The escalation policy: signals and rules become incidents, sent by severity to Slack,
e-mail and SMS, acknowledged, escalated, resolved and reported."""

from flask import Flask

from service.celery_app import register
from service.metrics import register as register_metrics


def init_app(app: Flask) -> None:
    from service.alerts import models, tasks  # noqa: F401  (tables and tasks)
    from service.alerts.channels import ContactBook, build_channels
    from service.alerts.cli import alerts_cli, incidents_cli
    from service.alerts.metrics import IncidentCollector
    from service.alerts.rules import builtin_rules, register_rule
    from service.alerts.services import raise_slow_job_signal
    from service.queues.slowjobs import on_slow_job

    cfg = app.config
    # Bad channel URLs or contacts stop the process at start, with the setting's name.
    app.extensions["alert_channels"] = build_channels(cfg)
    app.extensions["alert_contacts"] = ContactBook.from_config(cfg)
    for rule in builtin_rules():
        register_rule(app, rule)
    app.cli.add_command(alerts_cli)
    app.cli.add_command(incidents_cli)
    register_metrics(app, IncidentCollector(app=app))
    # Slow jobs, recorded by the queues domain, become P3 signals in the same transaction.
    on_slow_job(app, raise_slow_job_signal)
    interval = cfg["ALERT_EVALUATE_INTERVAL_SECONDS"]
    beat = {"alerts-evaluate": {"task": "alerts.evaluate", "schedule": interval,
                                "options": {"expires": interval}}} if interval > 0 else {}
    register(app, routes={"alerts.*": "default"}, beat=beat)
