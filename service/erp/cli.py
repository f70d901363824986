"""`flask erp status|pause|resume|sync`: the ERP stock sync for responders and scripts.

Exit codes (`sync`): 0 succeeded (or enqueued), 1 failed (token refused, malformed
answer, ...), 2 ERP unreachable (connection, timeout, 5xx), 3 skipped (paused, or
another sync still running). `status`: 0, or 1 when the last finished run failed, or 2
with `--check` when the ERP cannot be reached or refuses the token. A missing
ERP_API_URL is 2 for `sync` and for `status --check`.
"""

from __future__ import annotations

import sys

import click
from flask import current_app
from flask.cli import AppGroup

from service.audit.actor import Actor
from service.cli_utils import echo_json, echo_table
from service.erp import services
from service.erp.exceptions import ErpError, ErpNotConfigured, ErpUnavailable
from service.erp.models import RunStatus, Trigger
from service.extensions import db

cli = AppGroup("erp", help="The ERP stock sync: status, pause, resume, sync now.")

EXIT_OK, EXIT_FAILED, EXIT_UNREACHABLE, EXIT_SKIPPED = 0, 1, 2, 3


def _fail(message: str, code: int):
    click.echo(f"Error: {message}", err=True)
    sys.exit(code)


@cli.command("status")
@click.option("--limit", default=10, show_default=True, type=click.IntRange(1, 500),
              help="How many of the latest runs to show.")
@click.option("--check", is_flag=True, help="Also ask the ERP's /health (token included).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status_command(limit, check, as_json):
    """Paused or not, the last success, the next `since`, and the latest runs.

    Exit 0; 1 when the last finished run failed; 2 with --check when the ERP is not
    configured, unreachable, or refuses the token.
    """
    report = services.status(limit=limit)
    db.session.commit()
    code = EXIT_FAILED if report["last_finished_status"] == RunStatus.FAILED else EXIT_OK
    if check:
        report["health"] = _check_health()
        if not report["health"]["ok"]:
            code = EXIT_UNREACHABLE
    if as_json:
        echo_json(report)
        sys.exit(code)
    erp = report["erp"] or "not configured (set ERP_API_URL)"
    click.echo(f"ERP: {erp}")
    if report["configured"]:
        every = report["interval_seconds"]
        click.echo(f"beat: every {every:g} s" if every else "beat: off (ERP_SYNC_INTERVAL_SECONDS=0)")
    pause = report["pause"]
    if pause["paused"]:
        click.echo(f"PAUSED since {pause['paused_at']} by {pause['paused_by']}: {pause['reason']}")
    else:
        click.echo("not paused")
    success = report["last_success"]
    click.echo(f"last success: run {success['id']} at {success['finished_at']}" if success
               else "last success: none")
    click.echo(f"next since: {report['next_since'] or 'everything (no successful run yet)'}")
    if check:
        health = report["health"]
        click.echo(f"health: {'ok' if health['ok'] else 'FAILED'} ({health['detail']})")
    echo_table([{**r, "unknown": r["unknown_skus"], "error": r["error"] or ""}
                for r in report["runs"]],
               ["id", "status", "trigger", "actor", "started_at", "attempts", "fetched",
                "applied", "unchanged", "unknown", "pages", "error"])
    sys.exit(code)


def _check_health() -> dict:
    return services.check_health()


@cli.command("pause")
@click.option("--reason", required=True, help="Why (kept in the audit trail and shown in status).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def pause_command(reason, as_json):
    """Pause the sync: beat's runs (and retries) are skipped and recorded as skipped.

    A run already fetching finishes. Audited (erp.pause). Exit 0, also when it already was.
    """
    try:
        state, changed = services.pause(actor=Actor.cli(), reason=reason)
    except ErpError as exc:
        _fail(str(exc), EXIT_FAILED)
    db.session.commit()
    _said({**state, "changed": changed}, as_json,
          "paused" if changed else f"already paused (since {state['paused_at']} by "
                                   f"{state['paused_by']})")


@cli.command("resume")
@click.option("--reason", default=None, help="What changed (kept in the audit trail).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def resume_command(reason, as_json):
    """Resume a paused sync; the next run continues from the last success. Audited
    (erp.resume). Exit 0, also when it was not paused."""
    state, changed = services.resume(actor=Actor.cli(), reason=reason)
    db.session.commit()
    _said({**state, "changed": changed}, as_json, "resumed" if changed else "was not paused")


def _said(data: dict, as_json: bool, text: str) -> None:
    if as_json:
        echo_json(data)
    else:
        click.echo(text)


@cli.command("sync")
@click.option("--enqueue", is_flag=True,
              help="Hand the sync to the erp workers (with their retries) instead of running it here.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def sync_command(enqueue, as_json):
    """Sync stock from the ERP now, here, once (no retries), with progress per page.

    Exit 0 succeeded, 1 failed, 2 ERP unreachable or not configured, 3 skipped (paused,
    or another sync running).
    """
    actor = Actor.cli()
    if not current_app.config.get("ERP_API_URL"):
        _fail(str(ErpNotConfigured("ERP_API_URL is not set: there is no ERP to sync with")),
              EXIT_UNREACHABLE)
    if enqueue:
        services.enqueue_sync(trigger=Trigger.CLI, actor=actor)
        db.session.commit()
        _said({"enqueued": True, "queue": "erp"}, as_json,
              "enqueued: the erp workers run it shortly (see `flask erp status`)")
        sys.exit(EXIT_OK)

    def progress(counts: dict) -> None:
        click.echo(f"page {counts['page']}: fetched {counts['fetched']}, applied "
                   f"{counts['applied']}, unchanged {counts['unchanged']}, unknown "
                   f"{counts['unknown_skus']}", err=True)

    outcome = services.sync_now(trigger=Trigger.CLI, actor=actor, on_page=progress)
    run = outcome.run
    if as_json:
        echo_json(run)
    else:
        click.echo(f"run {run['id']}: {run['status']}"
                   + (f" ({run['error']})" if run["error"] else ""))
        click.echo(f"  fetched {run['fetched']} in {run['pages']} page(s): applied "
                   f"{run['applied']}, unchanged {run['unchanged']}, rejected {run['rejected']}, "
                   f"unknown SKUs {run['unknown_skus']}")
        if run["unknown_sku_list"]:
            click.echo(f"  unknown: {', '.join(run['unknown_sku_list'])}"
                       + (" ..." if run["unknown_skus"] > len(run["unknown_sku_list"]) else ""))
    if run["status"] == RunStatus.SUCCEEDED:
        sys.exit(EXIT_OK)
    if run["status"] == RunStatus.SKIPPED:
        sys.exit(EXIT_SKIPPED)
    sys.exit(EXIT_UNREACHABLE if isinstance(outcome.error, ErpUnavailable) else EXIT_FAILED)
