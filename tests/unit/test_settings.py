"""Settings: the environment first, then `.env`, then what a running `make run` wrote."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from service.config import engine_options, load_settings


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


ROOT = Path(__file__).resolve().parents[2]
_READS = re.compile(r'(?:_env_[a-z]+|os\.environ\.get)\(\s*"([A-Z][A-Z0-9_]*)"')


def _variables_read(path: Path) -> set[str]:
    return set(_READS.findall(path.read_text()))


def _configuration_table() -> str:
    readme = (ROOT / "README.md").read_text()
    start = readme.index("## Configuration")
    return readme[start:readme.index("\n## ", start + 1)]


def test_every_variable_the_service_reads_is_in_the_readme_table():
    read = _variables_read(ROOT / "service" / "config.py")
    documented = set(re.findall(r"`([A-Z][A-Z0-9_]*)`", _configuration_table()))

    assert {"DATABASE_URL", "DB_POOL_SIZE", "BROKER_VISIBILITY_TIMEOUT"} <= read
    assert read - documented == set()


def test_only_the_config_module_reads_the_environment():
    readers = sorted(
        str(path.relative_to(ROOT)) for path in (ROOT / "service").rglob("*.py")
        if path.name != "config.py" and re.search(r"os\.environ|os\.getenv", path.read_text())
    )

    assert readers == []


def test_database_pool_settings_come_from_the_environment(bare_environment, monkeypatch):
    monkeypatch.setenv("DATABASE_URL", "postgresql://racine@db.internal/racine")
    monkeypatch.setenv("DB_POOL_SIZE", "12")
    monkeypatch.setenv("DB_CONNECT_TIMEOUT", "7")
    settings = load_settings(str(bare_environment))

    options = engine_options(settings)

    assert settings["SQLALCHEMY_DATABASE_URI"].startswith("postgresql+psycopg://")
    assert options["pool_size"] == 12
    assert options["connect_args"]["connect_timeout"] == 7
    # Statement parameters are payload values and personal data: never in an error.
    assert options["hide_parameters"] is True


def test_a_setting_that_is_not_a_number_is_refused_with_its_name(bare_environment, monkeypatch):
    monkeypatch.setenv("BROKER_POOL_LIMIT", "ten")

    with pytest.raises(ValueError, match="BROKER_POOL_LIMIT must be an integer"):
        load_settings(str(bare_environment))


def test_make_run_scales_its_own_workers_and_tells_the_cli_beside_it(bare_environment,
                                                                    monkeypatch):
    """`make run`'s workers run under honcho: its processes and the commands that read its
    run.env use the embedded layout, not supervisord (the default elsewhere)."""
    from scripts import run

    monkeypatch.delenv("SCALING_LAYOUT", raising=False)
    instance = bare_environment / "instance"
    instance.mkdir()
    env = run.local_env(instance)
    assert env["SCALING_LAYOUT"] == "embedded"
    assert load_settings(str(instance))["SCALING_LAYOUT"] == "supervisord"

    run.write_run_env(instance / "run.env", {"SCALING_LAYOUT": env["SCALING_LAYOUT"]})

    assert load_settings(str(instance))["SCALING_LAYOUT"] == "embedded"
    monkeypatch.setenv("SCALING_LAYOUT", "systemd")
    assert run.local_env(instance)["SCALING_LAYOUT"] == "systemd"
