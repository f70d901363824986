"""`flask runbook list|run|runs|show` and `flask workers scale`."""

from __future__ import annotations

import json
import sys

import click
from flask.cli import AppGroup

from service.audit.actor import Actor
from service.cli_utils import echo_json, echo_table
from service.extensions import db
from service.runbooks import services
from service.runbooks.exceptions import RunNotFound

runbook_cli = AppGroup("runbook", help="Runbooks: notebooks that diagnose an incident and fix it.")
workers_cli = AppGroup("workers", help="Worker processes per queue group (the scaling playbook).")


def _fail(message: str, code: int) -> None:
    click.echo(f"Error: {message}", err=True)
    sys.exit(code)


@runbook_cli.command("list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def list_command(as_json):
    """The runbooks and the parameters each takes (`-p NAME VALUE`)."""
    from automation import catalog

    books = []
    for name, book in catalog.runbooks().items():
        params = {p.name: p.default for p in book.parameters.values()
                  if p.name not in catalog.RESERVED}
        books.append({"runbook": name, "title": book.title, "parameters": params,
                      "command": f"flask runbook run {name}"})
    if as_json:
        echo_json(books)
        return
    for book in books:
        click.echo(f"{book['runbook']}: {book['title']}")
        click.echo("    " + " ".join(f"-p {k} {v}" for k, v in book["parameters"].items()))


@runbook_cli.command("run")
@click.argument("name")
@click.option("-p", "--parameter", "parameters", type=(str, str), multiple=True,
              metavar="NAME VALUE", help="A notebook parameter, e.g. -p since 2h (repeatable).")
@click.option("--execute", is_flag=True,
              help="Let the resolution cells act (default: a dry run that changes nothing).")
@click.option("--reason", help="Why, for the audit row of an --execute run.")
@click.option("--json", "as_json", is_flag=True, help="Print the run and its summary as JSON.")
def run_command(name, parameters, execute, reason, as_json):
    """Run runbook NAME: diagnose, and with --execute apply the fix.

    Writes the executed notebook (and its HTML) under RUNBOOK_OUTPUT_DIR and records the
    run. Exit 0 when nothing is wrong or it was fixed, 1 when the diagnosis found a
    problem this run did not fix (a dry run fixes nothing), 2 when the runbook failed
    (a cell raised: see the output notebook), 3 when NAME or a parameter is wrong.
    """
    from automation import catalog, runner

    given = dict(parameters)
    try:
        outcome = runner.run(name, parameters=given, execute=execute, actor=Actor.cli(),
                             reason=reason, progress=not as_json)
    except catalog.RunbookError as exc:
        db.session.rollback()
        _fail(str(exc), 3)
    if as_json:
        echo_json(outcome.as_dict())
    else:
        _print_outcome(outcome)
    sys.exit(outcome.exit_code)


def _print_outcome(outcome) -> None:
    summary = outcome.summary or {}
    mode = "dry run" if summary.get("dry_run", True) else "execute"
    click.echo(f"runbook {outcome.runbook} run #{outcome.run_id} ({mode}): {outcome.status}")
    # What the diagnosis measured, by name: the figures a responder reads the problem against.
    for name, value in sorted((summary.get("figures") or {}).items()):
        click.echo(f"  figure: {name} = {json.dumps(value, sort_keys=True, default=str)}")
    for finding in summary.get("findings", []):
        click.echo(f"  problem: {finding['finding']}")
    for note in summary.get("notes", []):
        click.echo(f"  ok: {note}")
    if summary.get("decision"):
        click.echo(f"  decision: {summary['decision']}")
    for planned in summary.get("planned", []):
        click.echo(f"  not done (dry run): {planned}")
    for action in summary.get("actions", []):
        details = {k: v for k, v in action.items() if k != "action"}
        click.echo(f"  done: {action['action']} {json.dumps(details, sort_keys=True)}")
    for step in summary.get("next_steps", []):
        click.echo(f"  next: {step}")
    if outcome.error:
        click.echo(f"  error: {outcome.error}", err=True)
    click.echo(f"  notebook: {outcome.output_path}")
    if outcome.html_path:
        click.echo(f"  html:     {outcome.html_path}")
    if outcome.status == "problem" and summary.get("dry_run"):
        click.echo(f"  to apply the fix: flask runbook run {outcome.runbook} --execute")


@runbook_cli.command("runs")
@click.option("--runbook", help="Only this runbook's runs.")
@click.option("--limit", type=int, default=20, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def runs_command(runbook, limit, as_json):
    """The latest runbook runs, newest first."""
    runs = services.list_runs(runbook=runbook, limit=limit)
    if as_json:
        echo_json(runs)
        return
    echo_table([{**r, "execute": "yes" if r["execute"] else "no",
                 "problem": (r["summary"] or {}).get("problem")} for r in runs],
               ["id", "runbook", "execute", "status", "problem", "actor", "started_at",
                "output_path"])


@runbook_cli.command("show")
@click.argument("run_id", type=int)
def show_command(run_id):
    """One run: its parameters, summary and output notebook (JSON)."""
    try:
        echo_json(services.get_run(run_id))
    except RunNotFound as exc:
        _fail(str(exc), 1)


@workers_cli.command("scale")
@click.argument("queue")
@click.argument("workers", type=int)
@click.option("--check", is_flag=True, help="Show what would change; change nothing.")
@click.option("--reason", help="Why, for the audit row.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def scale_command(queue, workers, check, reason, as_json):
    """Set QUEUE's worker processes to WORKERS through the scaling playbook.

    Exit 0 when done (or nothing to change), 1 when the playbook failed, 3 when the
    queue or number is refused.
    """
    from automation import scaling

    try:
        result = scaling.scale(queue, workers, check=check, actor=Actor.cli(), reason=reason)
    except scaling.ScalingRefused as exc:
        _fail(str(exc), 3)
    if as_json:
        echo_json(result.as_dict())
    else:
        verb = "would change" if check else "changed"
        if not result.ok:
            click.echo(f"scaling {queue} failed: {result.error}", err=True)
        elif result.changed:
            click.echo(f"{queue}: {verb} from {result.before} to {result.after} worker processes "
                       f"({result.layout})")
        else:
            click.echo(f"{queue}: already {result.after} worker processes ({result.layout}); "
                       "nothing to change")
    sys.exit(0 if result.ok else 1)
