"""Scaling the worker processes of a queue group: `playbooks/scale_workers.yml` run through
ansible-runner, with the layout and paths from the settings, and the change audited.

`flask workers scale QUEUE N [--check]` and the queue overload runbook both come here.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from flask import current_app

from automation import INVENTORIES, PLAYBOOKS
from service.audit.actor import Actor
from service.celery_app import queues
from service.extensions import db
from service.runbooks import services

PLAYBOOK = PLAYBOOKS / "scale_workers.yml"
REPORT_TASK = "Report the result"


class ScalingRefused(Exception):
    """The queue or the number of workers is not one the playbook may set."""


@dataclass(frozen=True)
class ScaleResult:
    queue: str
    layout: str
    check: bool
    ok: bool
    changed: bool
    before: int | None
    after: int | None
    error: str | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def _bin(name: str) -> str:
    """A tool installed beside this interpreter (the venv), else the one on PATH."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else (shutil.which(name) or name)


def playbook_vars(queue: str, workers: int) -> dict:
    config = current_app.config
    extra = json.loads(config["SCALING_EXTRA_VARS"] or "{}")
    if not isinstance(extra, dict):
        raise ScalingRefused("SCALING_EXTRA_VARS must be a JSON object")
    return {
        "layout": config["SCALING_LAYOUT"],
        "max_workers": config["SCALING_MAX_WORKERS"],
        "supervisor_config": config["SUPERVISOR_CONFIG"],
        "supervisor_program_dir": config["SUPERVISOR_PROGRAM_DIR"],
        "supervisorctl": _bin("supervisorctl"),
        "python": sys.executable,
        **extra,
        "queue": queue,
        "workers": workers,
    }


def _run_playbook(variables: dict, *, check: bool) -> tuple[dict | None, str | None]:
    """(the playbook's report, None) or (None, what failed)."""
    import ansible_runner

    config = current_app.config
    inventory = config["SCALING_INVENTORY"] or str(INVENTORIES / "local.ini")
    venv_bin = str(Path(sys.executable).parent)
    with tempfile.TemporaryDirectory(prefix="racine-scale-") as private:
        result = ansible_runner.run(
            private_data_dir=private, project_dir=str(PLAYBOOKS), playbook=PLAYBOOK.name,
            inventory=inventory, extravars=variables, quiet=True,
            cmdline="--check --diff" if check else None,
            envvars={"PATH": f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}",
                     "ANSIBLE_NOCOLOR": "1", "ANSIBLE_RETRY_FILES_ENABLED": "0"})
        report, failure = None, None
        for event in result.events:
            data = event.get("event_data", {})
            if event.get("event") == "runner_on_ok" and data.get("task") == REPORT_TASK:
                report = data["res"]["msg"]["racine_scale"]
            elif event.get("event") in ("runner_on_failed", "runner_on_unreachable") and \
                    not data.get("ignore_errors"):
                res = data.get("res", {})
                failure = f"{data.get('task')}: {res.get('msg') or res.get('stderr') or 'failed'}"
        if result.status != "successful" or report is None:
            return None, (failure or f"ansible-playbook ended {result.status} (rc {result.rc})")[:500]
        return report, None


def scale(queue: str, workers: int, *, check: bool = False, actor: Actor | None = None,
          reason: str | None = None) -> ScaleResult:
    """Set `queue`'s worker processes to `workers` (with `check`, only say what would
    change). A change made is audited as `workers.scale` and committed."""
    config = current_app.config
    if queue not in queues(current_app):
        raise ScalingRefused(f"no queue {queue!r}; there are: {', '.join(queues(current_app))}")
    if not 0 <= workers <= config["SCALING_MAX_WORKERS"]:
        raise ScalingRefused(f"workers must be 0..{config['SCALING_MAX_WORKERS']} "
                             "(SCALING_MAX_WORKERS)")
    variables = playbook_vars(queue, workers)
    layout = variables["layout"]
    report, error = _run_playbook(variables, check=check)
    if report is None:
        return ScaleResult(queue, layout, check, False, False, None, None, error)
    before, after = int(report["before"]), int(report["after"])
    changed = _truthy(report["changed"])
    if changed and not check:
        services.record_scaling(queue=queue, before=before, after=after, layout=layout,
                                actor=actor or Actor.cli(), reason=reason)
        db.session.commit()
    return ScaleResult(queue, layout, check, True, changed, before, after)


def current(queue: str) -> ScaleResult:
    """How many worker processes `queue` has now: the playbook in check mode, asked for
    one process, reports what it found (`after` here is the current number)."""
    try:
        report, error = _run_playbook(playbook_vars(queue, 1), check=True)
    except ScalingRefused as exc:
        report, error = None, str(exc)
    layout = current_app.config["SCALING_LAYOUT"]
    if report is None:
        return ScaleResult(queue, layout, True, False, False, None, None, error)
    now = int(report["before"])
    return ScaleResult(queue, layout, True, True, False, now, now)


def _truthy(value) -> bool:
    return value is True or str(value).strip().lower() in ("true", "yes", "1")
