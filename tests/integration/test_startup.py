"""Starting the real processes: production refuses to start without real secrets, Flower
never starts without credentials, and the probes guard what they expose or lock."""

from __future__ import annotations

import os
import shlex
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from service.config import DEVELOPMENT_VALUES
from tests.support.processes import VENV_BIN

ROOT = Path(__file__).resolve().parents[2]
SECRETS = ("STRIPE_WEBHOOK_SECRET", "SECRET_KEY", "PAYPAL_WEBHOOK_ID")
REAL = {"STRIPE_WEBHOOK_SECRET": "whsec_live_not_public", "SECRET_KEY": "k" * 40,
        "PAYPAL_WEBHOOK_ID": "WH-LIVE-0001"}

ENTRY_POINTS = {
    "web": [str(VENV_BIN / "gunicorn"), "-w", "1", "-b", "127.0.0.1:0", "service.wsgi:app"],
    "worker": [str(VENV_BIN / "celery"), "-A", "service.worker", "worker", "-Q", "default",
               "-c", "1", "--without-mingle", "--without-gossip"],
    "beat": [str(VENV_BIN / "celery"), "-A", "service.worker", "beat", "--schedule",
             "/nonexistent/beat-schedule"],
    "cli": [str(VENV_BIN / "flask"), "--app", "service", "webhooks", "stats"],
}


def production_env(service_env, **settings: str) -> dict:
    env = {key: value for key, value in os.environ.items() if key not in SECRETS}
    env.update(service_env)
    for key in SECRETS:
        env.pop(key, None)
    env.update(RACINE_ENV="production", **settings)
    return env


def start(argv: list[str], env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(argv, env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("process", sorted(ENTRY_POINTS))
def test_process_refuses_to_start_in_production_without_secrets(service_env, process):
    result = start(ENTRY_POINTS[process], production_env(service_env, STRIPE_WEBHOOK_SECRET=""))

    assert result.returncode == 4, result.stdout + result.stderr
    message = result.stderr
    for name in SECRETS:
        assert f"{name} is not set" in message, message
    # One message, not a traceback.
    assert "Traceback" not in message, message
    assert message.count("refuses to start in production mode") == 1, message


@pytest.mark.parametrize("process", ["web", "worker"])
def test_process_refuses_a_development_secret_in_production(service_env, process):
    env = production_env(service_env, **{**REAL, "SECRET_KEY": DEVELOPMENT_VALUES["SECRET_KEY"]})

    result = start(ENTRY_POINTS[process], env)

    assert result.returncode == 4, result.stdout + result.stderr
    assert "SECRET_KEY holds the built-in development value" in result.stderr
    assert "STRIPE_WEBHOOK_SECRET" not in result.stderr


def test_flower_procfile_line_fails_clearly_without_credentials():
    line = next(entry.split(":", 1)[1] for entry in (ROOT / "Procfile").read_text().splitlines()
                if entry.startswith("flower:"))
    env = {key: value for key, value in os.environ.items() if key != "FLOWER_BASIC_AUTH"}

    for unset in (env, {**env, "FLOWER_BASIC_AUTH": ""}):
        began = time.monotonic()
        # honcho runs each Procfile line through the shell, as this does.
        result = subprocess.run(["sh", "-c", line], env=unset, cwd=ROOT, capture_output=True,
                                text=True, timeout=30)
        assert result.returncode != 0
        assert "FLOWER_BASIC_AUTH" in result.stderr and "credentials" in result.stderr
        assert time.monotonic() - began < 5  # refused by the shell, before Celery loads
    assert shlex.split(line)[:3] == ["celery", "-A", "service.worker"]


# ---- probes ---------------------------------------------------------------------------

def test_metrics_need_the_bearer_token_in_production(build_app):
    token = "metrics-token-for-the-test"
    app = build_app({**REAL, "RACINE_ENV": "production", "METRICS_TOKEN": token})
    client = app.test_client()

    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.get("/metrics", headers={"Authorization": f"Basic {token}"}).status_code == 401
    allowed = client.get("/metrics", headers={"Authorization": f"Bearer {token}"})
    assert allowed.status_code == 200
    assert "racine_webhooks_deliveries_total" in allowed.get_data(as_text=True)


def test_metrics_are_closed_in_production_without_a_token(build_app):
    app = build_app({**REAL, "RACINE_ENV": "production", "METRICS_TOKEN": None})

    response = app.test_client().get("/metrics")

    assert response.status_code == 403
    assert "METRICS_TOKEN" in response.get_json()["reason"]


def test_readyz_on_sqlite_answers_while_a_writer_holds_the_lock(build_app, tmp_path):
    path = tmp_path / "racine.db"
    app = build_app({"SQLALCHEMY_DATABASE_URI": f"sqlite:///{path}",
                     "SQLALCHEMY_ENGINE_OPTIONS": {"connect_args": {"timeout": 3}}})
    writer = sqlite3.connect(path, isolation_level=None)
    writer.execute("PRAGMA journal_mode=WAL")
    writer.execute("CREATE TABLE IF NOT EXISTS t (x INTEGER)")
    writer.execute("BEGIN IMMEDIATE")
    writer.execute("INSERT INTO t VALUES (1)")
    try:
        began = time.monotonic()
        response = app.test_client().get("/readyz")
        took = time.monotonic() - began
    finally:
        writer.rollback()
        writer.close()

    assert response.status_code == 200, response.get_json()
    assert response.get_json()["checks"]["database"] == "ok"
    # Queued behind the writer, it would have waited out the busy timeout (3 s here).
    assert took < 1.5, took
