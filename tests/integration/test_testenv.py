"""The test command's servers: `scripts/testenv.py` and the Redis database claim.

Run against a private redis-server, so a developer's Redis (and its data) is never part
of the experiment.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from loadtests.stack import LEASE_KEY, OWNER_KEY, claim_redis_db
from tests.support.processes import free_port
from tests.support.redis_server import RedisServer

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def private_redis(tmp_path, monkeypatch):
    monkeypatch.delenv("TEST_REDIS_DB", raising=False)
    with RedisServer(tmp_path / "redis") as server:
        yield server


def db(server: RedisServer, number: int) -> redis.Redis:
    return redis.Redis.from_url(server.url(number))


def test_a_claim_skips_a_database_holding_someone_elses_data(private_redis):
    db(private_redis, 1).set("user:1", "precious")

    claim = claim_redis_db(private_redis.url(0))
    claim.reset()
    claim.release()

    assert claim.url == private_redis.url(2)
    assert db(private_redis, 1).get("user:1") == b"precious"
    assert db(private_redis, 1).exists(OWNER_KEY) == 0


def test_a_database_marked_by_an_earlier_run_is_emptied_and_taken_again(private_redis):
    first = claim_redis_db(private_redis.url(0))
    db(private_redis, 1).set("left:over", "by a run that crashed")
    first.release()

    second = claim_redis_db(private_redis.url(0))

    assert second.url == private_redis.url(1)
    assert db(private_redis, 1).exists("left:over") == 0
    assert db(private_redis, 1).get(OWNER_KEY) == b"racine tests"
    second.release()


def test_a_database_leased_by_a_running_session_is_not_shared(private_redis):
    running = claim_redis_db(private_redis.url(0))

    other = claim_redis_db(private_redis.url(0))

    assert (running.url, other.url) == (private_redis.url(1), private_redis.url(2))
    running.reset()  # emptying keeps it marked and leased
    assert db(private_redis, 1).exists(OWNER_KEY, LEASE_KEY) == 2
    running.release()
    other.release()
    assert db(private_redis, 1).exists(LEASE_KEY) == 0


def _testenv(env: dict, tmp_path: Path) -> tuple[subprocess.CompletedProcess, dict]:
    report = tmp_path / "seen.json"
    program = ("import json, os, sys; json.dump({k: os.environ.get(k) for k in "
               "('DATABASE_URL', 'REDIS_URL')}, open(sys.argv[1], 'w'))")
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "testenv.py"), "--", sys.executable, "-c",
         program, str(report)],
        env=env, capture_output=True, text=True, timeout=60, cwd=ROOT)
    return done, json.loads(report.read_text()) if report.exists() else {}


def test_testenv_uses_the_redis_that_answers_on_its_port(private_redis, tmp_path):
    env = {"PATH": "/usr/bin:/bin", "DATABASE_URL": "postgresql://given@127.0.0.1:1/x",
           "TESTENV_REDIS_PORT": str(private_redis.port)}

    done, seen = _testenv(env, tmp_path)

    assert done.returncode == 0, done.stderr
    assert seen == {"DATABASE_URL": "postgresql://given@127.0.0.1:1/x",
                    "REDIS_URL": f"redis://127.0.0.1:{private_redis.port}/0"}


def test_testenv_starts_a_throwaway_redis_when_none_answers_and_stops_it(tmp_path):
    silent = free_port()  # nothing listens there
    env = {"PATH": "/usr/bin:/bin", "DATABASE_URL": "postgresql://given@127.0.0.1:1/x",
           "TESTENV_REDIS_PORT": str(silent)}

    done, seen = _testenv(env, tmp_path)

    assert done.returncode == 0, done.stderr
    assert "starting a throwaway Redis" in done.stderr
    port = int(seen["REDIS_URL"].split(":")[-1].split("/")[0])
    assert port != silent
    with pytest.raises(redis.ConnectionError):
        redis.Redis(port=port, socket_connect_timeout=1).ping()


def test_testenv_returns_the_commands_exit_status(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "DATABASE_URL": "postgresql://given@127.0.0.1:1/x",
           "REDIS_URL": "redis://127.0.0.1:1/0"}

    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "testenv.py"), "--",
                           sys.executable, "-c", "raise SystemExit(7)"],
                          env=env, capture_output=True, text=True, timeout=60)

    assert done.returncode == 7
