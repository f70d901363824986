"""Running a runbook: papermill executes its notebook into a new file, nbconvert renders it
to HTML beside it, and the run is recorded (`runbook_runs`, plus an audit row in execute
mode).

The run's row is committed before the notebook starts, so a run that dies still has its
record; papermill saves the output notebook after every cell and before it raises, so a
failed cell leaves the partial notebook (with the error under that cell) and a `failed`
run whose `error` names it.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from flask import current_app

from automation import catalog
from service.audit.actor import Actor
from service.clock import utcnow
from service.extensions import db
from service.runbooks import services
from service.runbooks.models import RunStatus

log = logging.getLogger(__name__)

EXIT_CODES = {RunStatus.OK: 0, RunStatus.PROBLEM: 1, RunStatus.FAILED: 2}


@dataclass(frozen=True)
class RunOutcome:
    run_id: int
    runbook: str
    status: str
    summary: dict | None
    output_path: str
    html_path: str | None
    error: str | None

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.status]

    def as_dict(self) -> dict:
        return {"run_id": self.run_id, "runbook": self.runbook, "status": self.status,
                "output_path": self.output_path, "html_path": self.html_path,
                "error": self.error, "summary": self.summary}


def run(name: str, *, parameters: dict[str, str], execute: bool, actor: Actor,
        reason: str | None = None, progress=None) -> RunOutcome:
    """Run runbook `name` with the `-p` values given; raises catalog.RunbookError before
    anything is recorded when the runbook or a parameter is wrong."""
    book = catalog.get(name)
    values = book.coerce(parameters)
    config = current_app.config
    record = services.start_run(runbook=name, parameters=values, execute=execute, actor=actor,
                                reason=reason)
    db.session.commit()
    run_id = record.id
    output = _claim_output(Path(config["RUNBOOK_OUTPUT_DIR"]), name, run_id, execute)
    services.set_output(run_id, output_path=str(output))
    db.session.commit()
    values.update(dry_run=not execute, actor=actor.label, run_id=run_id)
    error = None
    try:
        _execute(book.path, output, values, kernel=config["RUNBOOK_KERNEL"],
                 timeout=config["RUNBOOK_CELL_TIMEOUT_SECONDS"], progress=progress)
    except Exception as exc:  # any failure is the run's outcome, recorded
        error = _describe(exc)
        log.error("runbook failed", extra={"runbook": name, "run_id": run_id, "error": error})
    except BaseException as exc:  # Ctrl-C or an exit: recorded, then let it stop us
        _record_interrupted(name, run_id, output, exc)
        raise
    summary = read_summary(output) if output.exists() and output.stat().st_size else None
    html = render_html(output)
    if error is not None:
        status = RunStatus.FAILED
    elif summary is None:
        status, error = RunStatus.FAILED, "the notebook recorded no summary"
    elif summary.get("problem") and not summary.get("resolved"):
        status = RunStatus.PROBLEM
    else:
        status = RunStatus.OK
    services.finish_run(run_id, status=status, summary=summary, output_path=str(output),
                        html_path=None if html is None else str(html), error=error)
    db.session.commit()
    return RunOutcome(run_id, name, status, summary, str(output),
                      None if html is None else str(html), error)


def _record_interrupted(name: str, run_id: int, output: Path, exc: BaseException) -> None:
    """A run stopped from outside (KeyboardInterrupt, SystemExit) ends `failed`, never left
    `running`; its partial notebook stays. Recording it never hides the interruption."""
    error = f"interrupted ({type(exc).__name__})"
    log.error("runbook interrupted", extra={"runbook": name, "run_id": run_id, "error": error})
    try:
        db.session.rollback()
        services.finish_run(run_id, status=RunStatus.FAILED, summary=None,
                            output_path=str(output), html_path=None, error=error)
        db.session.commit()
    except Exception:
        log.exception("could not record the interrupted runbook run",
                      extra={"runbook": name, "run_id": run_id})


def _claim_output(directory: Path, name: str, run_id: int, execute: bool) -> Path:
    """A new file for this run's notebook, created exclusively: never another run's."""
    folder = directory / name
    folder.mkdir(parents=True, exist_ok=True)
    stamp = utcnow().strftime("%Y%m%dT%H%M%SZ")
    mode = "execute" if execute else "dry-run"
    for attempt in range(100):
        suffix = f"-{attempt}" if attempt else ""
        path = folder / f"{stamp}-run{run_id}-{mode}{suffix}.ipynb"
        try:
            with path.open("x"):
                return path
        except FileExistsError:
            continue
    raise FileExistsError(f"no free output name in {folder}")


def _execute(source: Path, output: Path, parameters: dict, *, kernel: str, timeout: int,
             progress) -> None:
    import papermill

    papermill.execute_notebook(
        str(source), str(output), parameters=parameters, kernel_name=kernel,
        progress_bar=bool(progress), log_output=False, execution_timeout=timeout,
        request_save_on_cell_execute=True, cwd=str(source.parent.parent))


def _describe(exc: Exception) -> str:
    from papermill.exceptions import PapermillExecutionError

    if isinstance(exc, PapermillExecutionError):
        return f"cell {exc.exec_count} raised {exc.ename}: {exc.evalue}"[:1000]
    return f"{type(exc).__name__}: {exc}"[:1000]


def read_summary(path: Path) -> dict | None:
    """The JSON the notebook's last cell showed (`Runbook.finish`), if it got there."""
    from automation.notebook import SUMMARY_MIME

    try:
        notebook = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    for cell in reversed(notebook.get("cells", [])):
        for output in cell.get("outputs", []) if cell.get("cell_type") == "code" else []:
            data = output.get("data", {})
            if SUMMARY_MIME in data:
                value = data[SUMMARY_MIME]
                return json.loads(value) if isinstance(value, str) else value
    return None


def render_html(path: Path) -> Path | None:
    """The executed notebook as HTML beside it; None (logged) when it cannot be rendered."""
    if not path.exists() or not path.stat().st_size:
        return None
    try:
        import nbformat
        from nbconvert import HTMLExporter

        body, _ = HTMLExporter().from_notebook_node(nbformat.read(str(path), as_version=4))
        html = path.with_suffix(".html")
        html.write_text(body)
        return html
    except Exception as exc:  # the notebook itself is the record
        log.warning("runbook HTML not rendered", extra={"path": str(path), "error": str(exc)})
        return None
