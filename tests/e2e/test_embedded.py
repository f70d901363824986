"""The embedded default that `make run` uses, end to end: SQLite (WAL) and a private
redis-server, migrated and seeded by the CLI, gunicorn and a Celery worker with beat,
and a signed test event from `flask webhooks send-test` followed from intake to a paid,
fulfilled order."""

from __future__ import annotations

import os
import sqlite3
import subprocess

import pytest

from tests.support.processes import VENV_BIN, start_gunicorn, start_worker
from tests.support.redis_server import RedisServer
from tests.support.waiting import wait_until


@pytest.fixture
def embedded(service_env, tmp_path):
    """The settings `make run` gives its processes: SQLite under the instance folder, a
    redis-server of its own, and the explicit development mode (production, the default,
    would refuse to start without real secrets)."""
    instance = tmp_path / "instance"
    instance.mkdir()
    with RedisServer(tmp_path / "redis") as redis_server:
        env = {"DATABASE_URL": f"sqlite:///{instance / 'racine.db'}",
               "REDIS_URL": redis_server.url(0), "RACINE_INSTANCE_PATH": str(instance),
               "RACINE_ENV": "development", "LOG_LEVEL": "INFO"}
        yield env, instance / "racine.db"


def flask(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(VENV_BIN / "flask"), "--app", "service", *args],
                          env={**os.environ, **env}, capture_output=True, text=True,
                          timeout=120)


def query(path, sql: str) -> list[tuple]:
    with sqlite3.connect(path) as conn:
        return conn.execute(sql).fetchall()


def test_a_test_payment_goes_from_intake_to_a_fulfilled_order_on_sqlite(embedded, tmp_path):
    env, database = embedded
    for step in (("db", "upgrade"), ("demo", "seed", "--orders", "3")):
        done = flask(env, *step)
        assert done.returncode == 0, done.stderr[-2000:]
    assert query(database, "PRAGMA journal_mode") == [("wal",)]
    web, base = start_gunicorn(tmp_path, workers=2, threads=4, env=env)
    worker = start_worker(tmp_path, queues="webhooks,orders,default,erp", concurrency=2,
                          env=env)
    try:
        sent = flask(env, "webhooks", "send-test", "--url", f"{base}/webhooks/stripe")

        assert sent.returncode == 0, sent.stdout + sent.stderr[-2000:]
        assert "HTTP 200" in sent.stdout and '"stored"' in sent.stdout
        order_id = int(sent.stdout.split()[1].rstrip(":"))
        wait_until(lambda: query(database, "SELECT status FROM webhook_events")
                   == [("processed",)], 60, "the event processed", logs=[web, worker])
        wait_until(lambda: query(database, "SELECT order_id FROM fulfilments")
                   == [(order_id,)], 60, "the order handed to fulfilment",
                   logs=[web, worker])
    finally:
        worker.stop()
        web.stop()
    assert query(database, f"SELECT status FROM orders WHERE id = {order_id}") == [("paid",)]
    assert query(database, "SELECT provider, status FROM payments") == [("stripe", "succeeded")]
