"""Runbook runs (`flask runbook ...`, the `runbook_runs` table) and worker scaling
(`flask workers scale`). The notebooks and playbooks themselves, and the code that runs
them, live outside the service package: `notebooks/`, `playbooks/`, `automation/`."""

from flask import Flask


def init_app(app: Flask) -> None:
    from service.runbooks import models, services  # noqa: F401  (table, audited actions)
    from service.runbooks.cli import runbook_cli, workers_cli

    app.cli.add_command(runbook_cli)
    app.cli.add_command(workers_cli)
