"""`flask queue health`: the state of every queue, for responders and scripts."""

from __future__ import annotations

import sys
import time

import click
from flask.cli import AppGroup

from service.cli_utils import echo_json, echo_table
from service.extensions import db
from service.queues.health import EXIT_CODES, queue_health

cli = AppGroup("queue", help="Queue health and protection.")


@cli.command("health")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--watch", type=float, default=None, metavar="SECONDS", is_flag=False,
              flag_value=2.0, help="Refresh every SECONDS (default 2) until Ctrl-C.")
def health(as_json, watch):
    """Depth, oldest wait, throughput, consumers, failures, slow jobs per queue.

    Exit code: 0 ok, 1 warning (depth above QUEUE_DEPTH_ALERT), 2 critical (a queue at
    its bound, or jobs waiting with no worker).
    """
    report = _show(as_json)
    try:
        while watch:
            time.sleep(watch)
            db.session.remove()
            click.clear()
            report = _show(as_json)
    except KeyboardInterrupt:
        pass
    sys.exit(EXIT_CODES[report["status"]])


def _show(as_json: bool) -> dict:
    report = queue_health()
    if as_json:
        echo_json(report)
        return report
    rows = []
    for q in report["queues"]:
        limiter = q["limiter"]
        rows.append({
            "queue": q["name"],
            "status": f"{q['status']}, paused" if q.get("paused") else q["status"],
            "depth": q["depth"],
            "oldest_wait_s": q["oldest_wait_seconds"], "jobs/min": q["jobs_per_minute"],
            "workers": q["consumers"], "failed_1h": q["failures_last_hour"],
            "slow_1h": q["slow_jobs_last_hour"], "in_db": q["waiting_in_database"],
            "limiter": f"{limiter['remaining']} left of {limiter['rate']}" if limiter else "-",
        })
    echo_table(rows, list(rows[0]))
    for q in report["queues"]:
        if q.get("paused"):
            pause = q["pause"] or {}
            click.echo(f"  {q['name']}: PAUSED since {pause.get('paused_at')} by "
                       f"{pause.get('paused_by')}: {pause.get('reason') or 'no reason given'}")
        for reason in q["reasons"]:
            click.echo(f"  {q['name']}: {reason}")
    click.echo(f"overall: {report['status'].upper()}  (warning above "
               f"{report['thresholds']['depth_alert']}, bound {report['thresholds']['depth_max']};"
               f" {report['elapsed_ms']} ms)")
    return report
