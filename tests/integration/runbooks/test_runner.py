"""The runner around the notebooks: what a failed cell leaves, plain papermill, refused
names and parameters, and the list of runs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import nbformat

from tests.integration.runbooks.conftest import run_runbook
from tests.support.db import rows, scalar
from tests.support.processes import VENV_BIN


def test_a_failing_cell_leaves_the_partial_notebook_and_a_failed_run_and_the_next_run_its_own(
        runbook_app, tmp_path):
    code, run = run_runbook(runbook_app, "webhook_loop_detected", "-p", "since", "soon")

    assert (code, run["status"], run["summary"]) == (2, "failed", None)
    assert "ValueError" in run["error"] and "'soon' is not a duration" in run["error"]
    notebook = nbformat.read(run["output_path"], as_version=4)
    errors = [o for c in notebook.cells if c.cell_type == "code" for o in c.outputs
              if o.output_type == "error"]
    assert [e.ename for e in errors] == ["ValueError"]
    assert run["html_path"].endswith(".html") and "ValueError" in Path(run["html_path"]).read_text()
    with runbook_app.app_context():
        recorded = rows("SELECT status, error, output_path, finished_at FROM runbook_runs")
    assert [(r["status"], r["output_path"]) for r in recorded] == [("failed", run["output_path"])]
    assert recorded[0]["finished_at"] is not None

    again = run_runbook(runbook_app, "webhook_loop_detected")[1]

    assert again["status"] == "ok" and again["output_path"] != run["output_path"]
    assert sorted(p.name for p in (tmp_path / "runs" / "webhook_loop_detected").iterdir()) == \
        sorted(Path(p).name for p in (run["output_path"], run["html_path"], again["output_path"],
                                      again["html_path"]))
    with runbook_app.app_context():
        listed = runbook_app.test_cli_runner().invoke(args=["runbook", "runs", "--json"])
        # A dry run writes no audit row; only execute-mode runs are critical actions.
        assert scalar("SELECT count(*) FROM audit_logs") == 0
    assert [(r["id"], r["status"]) for r in json.loads(listed.output)] == \
        [(again["run_id"], "ok"), (run["run_id"], "failed")]


def test_unknown_runbooks_and_parameters_are_refused_before_anything_is_recorded(runbook_app):
    with runbook_app.app_context():
        cli = runbook_app.test_cli_runner()
        unknown = cli.invoke(args=["runbook", "run", "reboot_everything"])
        bad = cli.invoke(args=["runbook", "run", "queue_overload", "-p", "queues", "orders"])
        listed = cli.invoke(args=["runbook", "list", "--json"])
        assert scalar("SELECT count(*) FROM runbook_runs") == 0

    assert unknown.exit_code == 3 and "no runbook 'reboot_everything'" in unknown.output
    assert bad.exit_code == 3 and "has no parameter 'queues'" in bad.output
    assert [b["runbook"] for b in json.loads(listed.output)] == [
        "payment_processing_failure", "queue_overload", "stock_sync_failure",
        "webhook_loop_detected"]


def test_plain_papermill_runs_a_notebook_too(clean, tmp_path):
    output = tmp_path / "loop.ipynb"
    result = subprocess.run(
        [str(VENV_BIN / "papermill"), "notebooks/webhook_loop_detected.ipynb", str(output),
         "-p", "since", "2h", "-p", "min_repeats", "3"],
        capture_output=True, text=True, timeout=300)

    assert result.returncode == 0, result.stderr[-3000:]
    summary = next(o.data["application/json"] for c in nbformat.read(output, as_version=4).cells
                   for o in c.get("outputs", []) if "application/json" in o.get("data", {}))
    assert (summary["dry_run"], summary["problem"], summary["window"]["length"]) == (True, False, "2h")
    assert summary["actor"].startswith("cli:")


def test_ctrl_c_during_a_run_leaves_a_failed_run_not_a_running_one(runbook_app, tmp_path):
    """A responder's Ctrl-C while the notebook runs: the command stops, and its row says
    how the run ended instead of `running` forever."""
    env = dict(os.environ, RUNBOOK_OUTPUT_DIR=str(tmp_path / "runs"))
    proc = subprocess.Popen([str(VENV_BIN / "flask"), "--app", "service", "runbook", "run",
                             "webhook_loop_detected"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while not list((tmp_path / "runs").glob("*/*.ipynb")):  # the kernel is starting
            assert time.monotonic() < deadline and proc.poll() is None, proc.stdout.read()
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=60)
    finally:
        proc.kill()

    assert proc.returncode != 0, output
    with runbook_app.app_context():
        [run] = rows("SELECT status, error, finished_at FROM runbook_runs")
    assert (run["status"], run["error"]) == ("failed", "interrupted (KeyboardInterrupt)"), output
    assert run["finished_at"] is not None
