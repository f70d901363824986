"""The ERP stand-in as `make run` starts it (its own process, a token of the run) and the
embedded default (SQLite, a private redis-server): `flask demo seed`, then `flask erp
sync` applies the stand-in's counts and reports its unknown SKU, a pause makes the next
sync a recorded skip, and after `flask erp resume` beat's runs on a real worker apply
the counts the stand-in keeps changing."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import urllib.request

import pytest

from tests.support.processes import VENV_BIN, Process, free_port, start_worker
from tests.support.redis_server import RedisServer
from tests.support.waiting import wait_until

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOKEN = "e2e-standin-token"


@pytest.fixture
def stack(service_env, tmp_path):
    instance = tmp_path / "instance"
    instance.mkdir()
    port = free_port()
    standin = Process([sys.executable, os.path.join(ROOT, "scripts", "erp_standin.py"),
                       "--port", str(port), "--token", TOKEN, "--drift", "0.5"],
                      log_path=tmp_path / "erp-standin.log")
    standin.wait_for_log("erp-standin: serving", timeout=30)
    with RedisServer(tmp_path / "redis") as redis_server:
        env = {"DATABASE_URL": f"sqlite:///{instance / 'racine.db'}",
               "REDIS_URL": redis_server.url(0), "RACINE_INSTANCE_PATH": str(instance),
               "RACINE_ENV": "development", "LOG_LEVEL": "INFO",
               "ERP_API_URL": f"http://127.0.0.1:{port}", "ERP_API_TOKEN": TOKEN,
               "ERP_SYNC_INTERVAL_SECONDS": "2"}
        try:
            yield env, instance / "racine.db"
        finally:
            standin.stop()


def flask(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(VENV_BIN / "flask"), "--app", "service", *args],
                          env={**os.environ, **env}, capture_output=True, text=True, timeout=120)


def query(path, sql: str) -> list[tuple]:
    with sqlite3.connect(path) as conn:
        return conn.execute(sql).fetchall()


def test_the_standin_refuses_a_request_without_its_token(stack):
    env, _ = stack
    request = urllib.request.Request(env["ERP_API_URL"] + "/health",
                                     headers={"Authorization": "Bearer wrong"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=5)
    assert refused.value.code == 401


def test_sync_pause_and_resume_against_the_standin_on_sqlite(stack, tmp_path):
    env, database = stack
    for step in (("db", "upgrade"), ("demo", "seed", "--orders", "0")):
        done = flask(env, *step)
        assert done.returncode == 0, done.stderr[-2000:]

    synced = flask(env, "erp", "sync", "--json")
    assert synced.returncode == 0, synced.stdout + synced.stderr[-2000:]
    run = json.loads(synced.stdout)
    assert (run["status"], run["fetched"], run["unknown_sku_list"]) == (
        "succeeded", 9, ["ERP-ONLY-0001"])
    assert run["applied"] + run["unchanged"] == 8

    assert flask(env, "erp", "pause", "--reason", "ERP upgrade").returncode == 0
    skipped = flask(env, "erp", "sync")
    assert skipped.returncode == 3 and "ERP upgrade" in skipped.stdout
    assert flask(env, "erp", "resume").returncode == 0

    worker = start_worker(tmp_path, queues="default,erp", concurrency=1, env=env, name="erp-e2e")
    try:
        wait_until(lambda: query(database, "SELECT count(*) FROM erp_sync_runs WHERE trigger"
                                 " = 'beat' AND status = 'succeeded' AND applied > 0")[0][0],
                   90, "a beat sync that applied the stand-in's changes", logs=[worker])
    finally:
        worker.stop()
    erp_rows = query(database, "SELECT count(*) FROM audit_logs WHERE action ="
                     " 'product.stock_adjust' AND actor = 'system:erp'")
    assert erp_rows[0][0] >= 1
    status = json.loads(flask(env, "erp", "status", "--json", "--check").stdout)
    assert status["health"]["ok"] is True and status["paused"] is False
