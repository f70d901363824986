"""Test session set-up: a fresh PostgreSQL database and a private Redis database.

The servers come from DATABASE_URL / REDIS_URL (set by `scripts/testenv.py`, which
starts throwaway ones when none is running). Every test session creates its own
database, migrates it with the real migrations and drops it at the end. Settings are
exported to the environment so the workers and web servers that tests start as real
processes use the same database, broker and timings.
"""

from __future__ import annotations

import os
import uuid
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from loadtests.stack import claim_redis_db
from tests.support.processes import stop_all

# Fixtures shared by several modules (the provider stand-ins for refunds, the ERP stand-in).
pytest_plugins = ("tests.support.providers", "tests.support.erp")

BASE_DATABASE_URL = os.environ.get("DATABASE_URL") or "postgresql://postgres@127.0.0.1:5432/test"
BASE_REDIS_URL = os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0"

STRIPE_SECRET = "whsec_test_primary"
STRIPE_OLD_SECRET = "whsec_test_rotated_out"
PAYPAL_WEBHOOK_ID = "WH-TEST-0001"

# Timings shortened so relay, leases and retries are observable within a test.
TEST_SETTINGS = {
    "RACINE_DOTENV": "/nonexistent/.env",
    # Production is the default mode; the tests run in the explicit development mode
    # (their own secrets, test-mode Stripe events).
    "RACINE_ENV": "development",
    "STRIPE_WEBHOOK_SECRET": f"{STRIPE_SECRET},{STRIPE_OLD_SECRET}",
    "PAYPAL_WEBHOOK_ID": PAYPAL_WEBHOOK_ID,
    "WEBHOOK_HANDLER_MODULES": "tests.support.test_handlers",
    "RELAY_INTERVAL_SECONDS": "1",
    "RELAY_MIN_AGE_SECONDS": "1",
    "PROCESSING_LEASE_SECONDS": "30",
    "WEBHOOK_RETRY_BACKOFF": "1",
    "WEBHOOK_RETRY_JITTER": "false",
    "WEBHOOK_MAX_RETRIES": "3",
    # An event whose order is missing fails after 1 + 2 s of waiting.
    "ORDER_WAIT_RETRIES": "2",
    "LOG_LEVEL": "INFO",
}


def _with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, parts.fragment))


def _plain(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


@pytest.fixture(scope="session")
def paypal_signing(tmp_path_factory):
    """A throwaway key and certificate; the app pins the certificate via PAYPAL_CERT_PATH."""
    from tests.support.paypal_keys import make_certificate

    key, pem = make_certificate()
    path = tmp_path_factory.mktemp("paypal") / "cert.pem"
    path.write_bytes(pem)
    return key, str(path)


@pytest.fixture(scope="session")
def redis_claim():
    """The Redis database this session marked as its own; `reset()` empties it."""
    claim = claim_redis_db(BASE_REDIS_URL)
    yield claim
    claim.release()


@pytest.fixture(scope="session")
def service_env(tmp_path_factory, paypal_signing, redis_claim):
    """Create the test database and Redis namespace, and export the settings."""
    name = f"racine_test_{uuid.uuid4().hex[:10]}"
    admin = _plain(BASE_DATABASE_URL)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    env = {
        **TEST_SETTINGS,
        "DATABASE_URL": _with_database(admin, name),
        "REDIS_URL": redis_claim.url,
        "PAYPAL_CERT_PATH": paypal_signing[1],
        "RACINE_INSTANCE_PATH": str(tmp_path_factory.mktemp("instance")),
    }
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    yield env
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def app(service_env):
    from flask_migrate import upgrade

    from service import create_app

    app = create_app({"TESTING": True})
    with app.app_context():
        upgrade()
    return app


@pytest.fixture
def clean(app, redis_claim):
    """Empty every table and the Redis namespace before the test."""
    from service.extensions import db

    with app.app_context():
        tables = ", ".join(
            f'"{t.name}"' for t in db.metadata.sorted_tables
        )
        # A module's live worker and beat (relays every second) may hold row locks the
        # TRUNCATE needs; PostgreSQL then breaks the deadlock by failing one side, and
        # when that is the TRUNCATE it is simply run again.
        for attempt in range(5):
            try:
                # The audit tables refuse TRUNCATE by trigger; the test database's superuser
                # switches user triggers off for this one transaction.
                db.session.execute(text("SET LOCAL session_replication_role = replica"))
                db.session.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
                db.session.commit()
                break
            except OperationalError as exc:
                db.session.rollback()
                if not isinstance(exc.orig, psycopg.errors.DeadlockDetected) or attempt == 4:
                    raise
        db.session.remove()
    redis_claim.reset()
    # A pause of intake's direct publishing (a full queue, a broker down) ends with its test.
    app.extensions["webhook_direct_publishing"].resume()
    yield app


@pytest.fixture
def ctx(clean):
    """An app context with empty tables, for tests of services and models."""
    from service.extensions import db

    with clean.app_context():
        yield db.session
        db.session.rollback()
        db.session.remove()


@pytest.fixture
def client(clean):
    return clean.test_client()


@pytest.fixture
def build_app(app):
    """Build further apps with other settings; the session app's Celery is restored after."""
    from service import create_app
    from service.extensions import db
    from tests.support.apps import use_celery_of

    built = []

    def factory(overrides: dict):
        other = create_app({"TESTING": True, **overrides})
        built.append(other)
        return other

    yield factory
    for other in built:
        with other.app_context():
            db.session.remove()
            db.engine.dispose()
    use_celery_of(app)


@pytest.fixture
def processes():
    """Every process a test starts (append them), stopped at the end whatever happened."""
    started = []
    yield started
    stop_all(reversed(started))
