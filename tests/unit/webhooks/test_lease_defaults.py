"""Production's lease settings bound what a worker killed outright costs: under a minute."""

from __future__ import annotations

import os

import pytest

from service.config import load_settings


@pytest.fixture
def defaults(monkeypatch, tmp_path):
    names = ("PROCESSING_LEASE_SECONDS", "LEASE_RENEW_SECONDS", "PUBLISH_GRACE_SECONDS",
             "RELAY_INTERVAL_SECONDS", "WEBHOOK_TIME_LIMIT", "WEBHOOK_MAX_ATTEMPTS",
             "WEBHOOK_MAX_RETRIES")
    saved = dict(os.environ)
    for name in names:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("RACINE_DOTENV", str(tmp_path / "absent.env"))
    yield load_settings(str(tmp_path))
    os.environ.clear()
    os.environ.update(saved)


def test_a_killed_worker_delays_its_running_events_by_under_a_minute(defaults):
    # Its lease was renewed at most one interval before the kill, for one lease more;
    # the relay finds the expired lease within one of its intervals.
    worst = defaults["PROCESSING_LEASE_SECONDS"] + defaults["RELAY_INTERVAL_SECONDS"]
    assert worst <= 45
    assert defaults["LEASE_RENEW_SECONDS"] * 3 <= defaults["PROCESSING_LEASE_SECONDS"]


def test_a_killed_worker_delays_its_prefetched_events_by_under_a_minute(defaults):
    worst = defaults["PUBLISH_GRACE_SECONDS"] + defaults["RELAY_INTERVAL_SECONDS"]
    assert worst <= 45


def test_every_retry_fits_in_the_attempts_cap(defaults):
    # The cap ends loops of hard kills; it must not cut the ordinary retries short.
    assert defaults["WEBHOOK_MAX_ATTEMPTS"] > defaults["WEBHOOK_MAX_RETRIES"]
