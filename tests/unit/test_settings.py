"""Settings: the environment first, then `.env`, then what a running `make run` wrote."""

from __future__ import annotations

import os

import pytest

from service.config import load_settings


@pytest.fixture
def bare_environment(monkeypatch, tmp_path):
    """No REDIS_URL and no `.env` in play; anything loaded is undone afterwards."""
    monkeypatch.delenv("REDIS_URL", raising=False)
    monkeypatch.setenv("RACINE_DOTENV", str(tmp_path / "absent.env"))
    saved = dict(os.environ)
    yield tmp_path
    os.environ.clear()
    os.environ.update(saved)


def test_a_running_embedded_stack_is_found_through_its_run_env(bare_environment):
    instance = bare_environment / "instance"
    instance.mkdir()
    assert load_settings(str(instance))["REDIS_URL"] == "redis://127.0.0.1:6379/0"

    (instance / "run.env").write_text("# written by make run\nREDIS_URL=redis://127.0.0.1:6390/0\n")

    assert load_settings(str(instance))["REDIS_URL"] == "redis://127.0.0.1:6390/0"


def test_the_environment_wins_over_run_env(bare_environment, monkeypatch):
    instance = bare_environment / "instance"
    instance.mkdir()
    (instance / "run.env").write_text("REDIS_URL=redis://127.0.0.1:6390/0\n")
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:6379/7")

    assert load_settings(str(instance))["REDIS_URL"] == "redis://127.0.0.1:6379/7"
