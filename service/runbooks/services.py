"""Runbook runs and worker scaling as the service records them.

A run is recorded before its notebook starts (committed by the caller, so a run that
dies still has its row) and finished afterwards. An execute-mode run, whose resolution
cells act, is a critical action: its audit row is written with the run's row. Scaling
the workers of a queue is one too, recorded once the playbook has made the change.
"""

from __future__ import annotations

import json

from sqlalchemy import select

from service.audit import services as audit
from service.audit.actor import Actor
from service.audit.registry import critical, not_critical, register_action
from service.clock import utcnow
from service.extensions import db
from service.runbooks.exceptions import RunNotFound
from service.runbooks.models import RunbookRun, RunStatus

register_action(
    "runbook.execute", entity_type="runbook_run",
    description="A runbook run in execute mode: its resolution cells act (retries, scaling, "
                "pausing the ERP sync, ...), each action audited on its own as well",
    entry_points=("flask runbook run --execute",))
register_action(
    "workers.scale", entity_type="worker_pool",
    description="The number of worker processes of a queue group changed by the scaling "
                "playbook",
    entry_points=("flask workers scale",))

MAX_ERROR = 1000


@critical("runbook.execute")
def start_run(*, runbook: str, parameters: dict, execute: bool, actor: Actor,
              reason: str | None = None) -> RunbookRun:
    """Record a run about to start (the caller commits before the notebook runs); an
    execute-mode run writes its `runbook.execute` audit row in the same transaction."""
    run = RunbookRun(runbook=runbook, execute=execute, status=RunStatus.RUNNING,
                     actor=actor.label, parameters=json.dumps(parameters, sort_keys=True,
                                                               default=str),
                     started_at=utcnow())
    db.session.add(run)
    db.session.flush()
    if execute:
        audit.record(action="runbook.execute", entity_type="runbook_run", entity_id=run.id,
                     actor=actor, before=None,
                     after={"runbook": runbook, "status": run.status, "execute": True},
                     reason=reason, details={"parameters": parameters})
    return run


@not_critical("records how a run ended; an execute-mode run was audited when it started, "
              "and each action it took is audited by its own service")
def finish_run(run_id: int, *, status: str, summary: dict | None, output_path: str | None,
               html_path: str | None, error: str | None = None) -> RunbookRun:
    if status not in RunStatus.ALL or status == RunStatus.RUNNING:
        raise ValueError(f"a run finishes as ok, problem or failed, not {status!r}")
    run = db.session.get(RunbookRun, run_id)
    if run is None:
        raise RunNotFound(f"runbook run {run_id} does not exist")
    run.status = status
    run.summary = None if summary is None else json.dumps(summary, sort_keys=True, default=str)
    run.output_path = output_path
    run.html_path = html_path
    run.error = None if error is None else error[:MAX_ERROR]
    run.finished_at = utcnow()
    return run


@not_critical("records where a run's notebook is written, before it runs")
def set_output(run_id: int, *, output_path: str) -> None:
    run = db.session.get(RunbookRun, run_id)
    if run is None:
        raise RunNotFound(f"runbook run {run_id} does not exist")
    run.output_path = output_path


@not_critical("reads")
def list_runs(*, runbook: str | None = None, limit: int = 20) -> list[dict]:
    """The latest runs, newest first."""
    query = select(RunbookRun).order_by(RunbookRun.started_at.desc(), RunbookRun.id.desc())
    if runbook:
        query = query.where(RunbookRun.runbook == runbook)
    return [run.to_dict() for run in db.session.scalars(query.limit(limit))]


@not_critical("reads")
def get_run(run_id: int) -> dict:
    run = db.session.get(RunbookRun, run_id)
    if run is None:
        raise RunNotFound(f"runbook run {run_id} does not exist")
    return run.to_dict()


@critical("workers.scale")
def record_scaling(*, queue: str, before: int | None, after: int, layout: str, actor: Actor,
                   reason: str | None = None, details: dict | None = None) -> int:
    """Audit a change of a queue group's worker processes, made by the playbook just
    before (nothing of it is in the database: the row is the record). The caller commits."""
    return audit.record(action="workers.scale", entity_type="worker_pool", entity_id=queue,
                        actor=actor, before={"workers": before}, after={"workers": after},
                        reason=reason, details={"layout": layout, **(details or {})})
