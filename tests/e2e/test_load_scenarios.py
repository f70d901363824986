"""CI's load run: the Locust scenarios against a real stack, checked end to end.

`loadtests.run` starts gunicorn, workers and beat on a database of its own, runs each
scenario headless and counts in the database that every accepted event was processed
exactly once; it exits non-zero when a threshold in loadtests/thresholds.toml is missed.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RATE = os.environ.get("CI_LOAD_RATE", "1000")
DURATION = os.environ.get("CI_LOAD_DURATION", "60")


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_steady_duplicate_storm_and_bad_actors_meet_their_thresholds(service_env):
    env = {**os.environ, "DATABASE_URL": os.environ.get("LOAD_BASE_DATABASE_URL", "")
           or _server_url(service_env["DATABASE_URL"])}
    result = subprocess.run(
        [sys.executable, "-m", "loadtests.run", "--scenario", "steady,duplicate_storm,bad_actors",
         "--rate", RATE, "--duration", DURATION, "--json"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=850,
    )
    sys.stderr.write(result.stderr[-6000:])
    assert result.returncode == 0, result.stderr[-3000:]
    reports = json.loads(result.stdout)
    assert [r["scenario"] for r in reports] == ["steady", "duplicate_storm", "bad_actors"]
    for report in reports:
        figures = report["figures"]
        assert report["passed"], report
        assert figures["lost"] == 0 and figures["effects_twice"] == 0
        assert figures["accepted_events"] > 0
    steady = reports[0]["figures"]
    # The rate asked for was really sent (within Locust's pacing).
    assert steady["events_per_minute_sent"] >= 0.9 * float(RATE)
    assert reports[2]["figures"]["forged_sent"] > 0


def _server_url(database_url: str) -> str:
    """The session database's server, with the maintenance database `postgres`."""
    base, _, _name = database_url.rpartition("/")
    return f"{base}/postgres"
