"""Production is the default mode, and it refuses to start without real secrets."""

from __future__ import annotations

import os

import pytest

from service.config import (
    DEVELOPMENT_VALUES,
    ConfigError,
    check_settings,
    load_settings,
)

SECRETS = ("STRIPE_WEBHOOK_SECRET", "SECRET_KEY", "PAYPAL_WEBHOOK_ID")


@pytest.fixture
def environment(monkeypatch, tmp_path):
    """No mode, no secrets and no `.env` in play; the test sets what it needs."""
    saved = dict(os.environ)
    for name in (*SECRETS, "RACINE_ENV", "PAYPAL_ENABLED", "STRIPE_LIVEMODE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("RACINE_DOTENV", str(tmp_path / "absent.env"))
    yield monkeypatch, str(tmp_path)
    os.environ.clear()
    os.environ.update(saved)


def settings(environment) -> dict:
    return load_settings(environment[1])


def refusal(environment) -> str:
    with pytest.raises(ConfigError) as refused:
        check_settings(settings(environment))
    return str(refused.value)


def test_production_is_the_default_and_names_every_missing_secret(environment):
    message = refusal(environment)

    assert settings(environment)["RACINE_ENV"] == "production"
    for name in SECRETS:
        assert f"{name} is not set" in message
    assert "RACINE_ENV=development" in message  # how to run locally instead


def test_an_empty_value_counts_as_missing(environment):
    monkeypatch, _ = environment
    monkeypatch.setenv("STRIPE_WEBHOOK_SECRET", " , ")
    monkeypatch.setenv("SECRET_KEY", "")
    monkeypatch.setenv("PAYPAL_WEBHOOK_ID", "WH-REAL-1")

    message = refusal(environment)

    assert "STRIPE_WEBHOOK_SECRET is not set" in message
    assert "SECRET_KEY is not set" in message
    assert "PAYPAL_WEBHOOK_ID" not in message


def test_paypal_webhook_id_is_required_only_when_paypal_is_enabled(environment):
    monkeypatch, _ = environment
    monkeypatch.setenv("STRIPE_WEBHOOK_SECRET", "whsec_live_real")
    monkeypatch.setenv("SECRET_KEY", "a-real-secret-key")
    monkeypatch.setenv("PAYPAL_ENABLED", "false")

    check_settings(settings(environment))

    monkeypatch.setenv("PAYPAL_ENABLED", "true")
    assert "PAYPAL_WEBHOOK_ID is not set" in refusal(environment)


@pytest.mark.parametrize("name", SECRETS)
def test_a_development_value_is_refused_in_production(environment, name):
    monkeypatch, _ = environment
    real = {"STRIPE_WEBHOOK_SECRET": "whsec_live_real", "SECRET_KEY": "a-real-secret-key",
            "PAYPAL_WEBHOOK_ID": "WH-REAL-1"}
    for key, value in real.items():
        monkeypatch.setenv(key, value)
    # Among rotated secrets too: any one of them signs.
    monkeypatch.setenv(name, DEVELOPMENT_VALUES[name] if name != "STRIPE_WEBHOOK_SECRET"
                       else f"whsec_live_real,{DEVELOPMENT_VALUES[name]}")

    message = refusal(environment)

    assert f"{name} holds the built-in development value" in message
    assert [n for n in SECRETS if n in message] == [name]


def test_development_mode_has_the_built_in_values_and_test_mode_stripe(environment):
    monkeypatch, _ = environment
    monkeypatch.setenv("RACINE_ENV", "development")

    found = settings(environment)
    check_settings(found)

    assert found["SECRET_KEY"] == DEVELOPMENT_VALUES["SECRET_KEY"]
    assert found["STRIPE_WEBHOOK_SECRET"] == [DEVELOPMENT_VALUES["STRIPE_WEBHOOK_SECRET"]]
    assert found["PAYPAL_WEBHOOK_ID"] == DEVELOPMENT_VALUES["PAYPAL_WEBHOOK_ID"]
    assert found["STRIPE_LIVEMODE"] is False


def test_production_expects_live_stripe_events_by_default(environment):
    monkeypatch, _ = environment
    assert settings(environment)["STRIPE_LIVEMODE"] is True
    monkeypatch.setenv("STRIPE_LIVEMODE", "false")
    assert settings(environment)["STRIPE_LIVEMODE"] is False


def test_an_unknown_mode_is_refused(environment):
    monkeypatch, _ = environment
    monkeypatch.setenv("RACINE_ENV", "prod")

    with pytest.raises(ConfigError, match="RACINE_ENV must be"):
        settings(environment)
