"""Running runbooks from the tests: `flask runbook run` through the CLI runner, with the
executed notebooks written under the test's own folder."""

from __future__ import annotations

import json

import pytest

from tests.support.supervisor import Supervisor


@pytest.fixture
def runbook_app(clean, build_app, tmp_path):
    """An app on empty tables whose runbook runs write under tmp_path."""
    return build_app({"RUNBOOK_OUTPUT_DIR": str(tmp_path / "runs")})


def run_runbook(app, name: str, *args: str) -> tuple[int, dict]:
    """`flask runbook run NAME ARGS --json`: (exit code, the run as JSON)."""
    with app.app_context():
        result = app.test_cli_runner().invoke(args=["runbook", "run", name, *args, "--json"])
    try:
        return result.exit_code, json.loads(result.output)
    except ValueError:
        raise AssertionError(f"exit {result.exit_code}: {result.output}") from result.exception


@pytest.fixture
def supervisor(tmp_path):
    """A real supervisord of the test's own (see tests/support/supervisor.py)."""
    supervisor = Supervisor(tmp_path / "supervisor").start()
    yield supervisor
    supervisor.stop()
