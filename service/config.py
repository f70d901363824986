"""Configuration: embedded defaults, then the environment (and `.env`), then test overrides.

Every setting a deployment may change is read from an environment variable of the same
name. The defaults run the whole service on one machine with no set-up: a SQLite file
under `instance/` and a Redis on the standard local port.
"""

from __future__ import annotations

import os
from pathlib import Path

from dotenv import load_dotenv

_TRUE = {"1", "true", "yes", "on"}


def _env_str(name: str, default: str) -> str:
    value = os.environ.get(name)
    return default if value is None or value == "" else value


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value.strip() == "":
        return default
    try:
        return int(value)
    except ValueError as exc:
        raise ValueError(f"{name} must be an integer, got {value!r}") from exc


def _env_float(name: str, default: float) -> float:
    value = os.environ.get(name)
    if value is None or value.strip() == "":
        return default
    try:
        return float(value)
    except ValueError as exc:
        raise ValueError(f"{name} must be a number, got {value!r}") from exc


def _env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None or value.strip() == "":
        return default
    return value.strip().lower() in _TRUE


def _env_list(name: str, default: str) -> list[str]:
    return [part.strip() for part in _env_str(name, default).split(",") if part.strip()]


def _env_mapping(name: str) -> dict[str, float]:
    mapping = {}
    for part in _env_list(name, ""):
        key, sep, value = part.partition("=")
        try:
            mapping[key.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep:
            raise ValueError(f"{name} entries look like task.name=seconds, got {part!r}")
    return mapping


def normalise_database_url(url: str) -> str:
    """Point plain `postgres://` and `postgresql://` URLs at the psycopg 3 driver."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


def load_settings(instance_path: str) -> dict:
    """Read every setting from the environment, with the embedded defaults."""
    load_dotenv(os.environ.get("RACINE_DOTENV", ".env"), override=False)
    # What a running `make run` chose (its private Redis), for commands run beside it.
    load_dotenv(Path(instance_path) / "run.env", override=False)
    sqlite_path = Path(instance_path) / "racine.db"
    database_url = normalise_database_url(
        _env_str("DATABASE_URL", f"sqlite:///{sqlite_path}")
    )
    redis_url = _env_str("REDIS_URL", "redis://127.0.0.1:6379/0")
    return {
        "SECRET_KEY": _env_str("SECRET_KEY", "dev-only-change-me"),
        "SQLALCHEMY_DATABASE_URI": database_url,
        "REDIS_URL": redis_url,
        "LOG_LEVEL": _env_str("LOG_LEVEL", "INFO"),
        "LOG_JSON": _env_bool("LOG_JSON", True),
        # Intake
        "STRIPE_WEBHOOK_SECRET": _env_list("STRIPE_WEBHOOK_SECRET", "whsec_racine_dev_secret"),
        "STRIPE_TOLERANCE_SECONDS": _env_int("STRIPE_TOLERANCE_SECONDS", 300),
        "PAYPAL_WEBHOOK_ID": _env_str("PAYPAL_WEBHOOK_ID", "WH-RACINE-DEV"),
        "PAYPAL_CERT_URL_HOSTS": _env_list("PAYPAL_CERT_URL_HOSTS", ".paypal.com"),
        "PAYPAL_CERT_PATH": os.environ.get("PAYPAL_CERT_PATH") or None,
        # 0 accepts any transmission time: a replayed delivery is caught by de-duplication,
        # while rejecting late redeliveries could lose an event the provider retried.
        "PAYPAL_TOLERANCE_SECONDS": _env_int("PAYPAL_TOLERANCE_SECONDS", 0),
        "PAYPAL_CERT_TIMEOUT_SECONDS": _env_float("PAYPAL_CERT_TIMEOUT_SECONDS", 5.0),
        "WEBHOOK_MAX_BODY_BYTES": _env_int("WEBHOOK_MAX_BODY_BYTES", 256 * 1024),
        # Extra modules whose @handles functions are registered (plug-ins, test handlers).
        "WEBHOOK_HANDLER_MODULES": _env_list("WEBHOOK_HANDLER_MODULES", ""),
        "DEDUP_TTL_SECONDS": _env_int("DEDUP_TTL_SECONDS", 300),
        # Processing and retries
        "WEBHOOK_MAX_RETRIES": _env_int("WEBHOOK_MAX_RETRIES", 8),
        "WEBHOOK_RETRY_BACKOFF": _env_float("WEBHOOK_RETRY_BACKOFF", 2.0),
        "WEBHOOK_RETRY_BACKOFF_MAX": _env_int("WEBHOOK_RETRY_BACKOFF_MAX", 600),
        "WEBHOOK_RETRY_JITTER": _env_bool("WEBHOOK_RETRY_JITTER", True),
        "ORDERS_SOFT_TIME_LIMIT": _env_int("ORDERS_SOFT_TIME_LIMIT", 60),
        "ORDERS_TIME_LIMIT": _env_int("ORDERS_TIME_LIMIT", 90),
        "DEFAULT_SOFT_TIME_LIMIT": _env_int("DEFAULT_SOFT_TIME_LIMIT", 240),
        "DEFAULT_TIME_LIMIT": _env_int("DEFAULT_TIME_LIMIT", 300),
        "WEBHOOK_SOFT_TIME_LIMIT": _env_int("WEBHOOK_SOFT_TIME_LIMIT", 60),
        "WEBHOOK_TIME_LIMIT": _env_int("WEBHOOK_TIME_LIMIT", 90),
        # A lease outlives the hard time limit, so a live worker never loses its event.
        "PROCESSING_LEASE_SECONDS": _env_int("PROCESSING_LEASE_SECONDS", 300),
        # Relay: what the beat task re-enqueues, and how often it looks.
        "RELAY_INTERVAL_SECONDS": _env_float("RELAY_INTERVAL_SECONDS", 10.0),
        "RELAY_MIN_AGE_SECONDS": _env_int("RELAY_MIN_AGE_SECONDS", 30),
        "RELAY_QUEUED_STALE_SECONDS": _env_int("RELAY_QUEUED_STALE_SECONDS", 3600),
        # A stored event whose publish never happened (the process died right after the
        # commit) is republished by the relay this long after it arrived.
        "PUBLISH_GRACE_SECONDS": _env_int("PUBLISH_GRACE_SECONDS", 60),
        "DB_PING_IDLE_SECONDS": _env_float("DB_PING_IDLE_SECONDS", 2.0),
        "RELAY_BATCH_SIZE": _env_int("RELAY_BATCH_SIZE", 500),
        "BROKER_PUBLISH_TIMEOUT_SECONDS": _env_float("BROKER_PUBLISH_TIMEOUT_SECONDS", 1.0),
        # Thresholds used by later domains; read here so one place lists them all.
        "SLOW_JOB_SECONDS": _env_float("SLOW_JOB_SECONDS", 30.0),
        # Per-task thresholds: "orders.fulfil=10,webhooks.process_event=5".
        "SLOW_JOB_OVERRIDES": _env_mapping("SLOW_JOB_OVERRIDES"),
        "ORDER_NOTIFY_URL": os.environ.get("ORDER_NOTIFY_URL") or None,
        "QUEUE_DEPTH_ALERT": _env_int("QUEUE_DEPTH_ALERT", 1000),
        "QUEUE_DEPTH_MAX": _env_int("QUEUE_DEPTH_MAX", 2000),
        "QUEUE_PUBLISH_HEADROOM": _env_int("QUEUE_PUBLISH_HEADROOM", 50),
        "ORDERS_RATE_LIMIT": _env_str("ORDERS_RATE_LIMIT", "100/minute"),
        "ALERT_SLACK_URL": os.environ.get("ALERT_SLACK_URL") or None,
        "ALERT_EMAIL_URL": os.environ.get("ALERT_EMAIL_URL") or None,
        "ALERT_SMS_URL": os.environ.get("ALERT_SMS_URL") or None,
        # Bootstrap only: accepted as an admin until the first active admin user exists.
        "ADMIN_API_TOKENS": _env_list("ADMIN_API_TOKENS", ""),
        # A token's last use is written at most this often (each use would be a write).
        "TOKEN_LAST_USED_RESOLUTION_SECONDS": _env_int("TOKEN_LAST_USED_RESOLUTION_SECONDS", 60),
        # Audit trail: partitions kept ready, how often beat checks, where archives go.
        "AUDIT_PARTITIONS_AHEAD": _env_int("AUDIT_PARTITIONS_AHEAD", 3),
        "AUDIT_PARTITION_CHECK_SECONDS": _env_float("AUDIT_PARTITION_CHECK_SECONDS", 6 * 3600.0),
        "AUDIT_ARCHIVE_DIR": _env_str("AUDIT_ARCHIVE_DIR",
                                      str(Path(instance_path) / "audit-archives")),
        # Provider refund calls (admin-initiated refunds).
        "STRIPE_API_KEY": os.environ.get("STRIPE_API_KEY") or None,
        "STRIPE_API_BASE": _env_str("STRIPE_API_BASE", "https://api.stripe.com"),
        "PAYPAL_API_BASE": _env_str("PAYPAL_API_BASE", "https://api-m.paypal.com"),
        "PAYPAL_CLIENT_ID": os.environ.get("PAYPAL_CLIENT_ID") or None,
        "PAYPAL_CLIENT_SECRET": os.environ.get("PAYPAL_CLIENT_SECRET") or None,
        "REFUND_PROVIDER_TIMEOUT_SECONDS": _env_float("REFUND_PROVIDER_TIMEOUT_SECONDS", 10.0),
        # A refund left pending this long (the process died, the provider timed out) is
        # asked of the provider again, with the same key, when its request is repeated.
        "REFUND_PENDING_RETRY_SECONDS": _env_int("REFUND_PENDING_RETRY_SECONDS", 60),
        "FLOWER_BASIC_AUTH": os.environ.get("FLOWER_BASIC_AUTH") or None,
    }


def engine_options(database_url: str) -> dict:
    """Connection options that suit the database the URL names."""
    if database_url.startswith("sqlite"):
        # SQLite serialises writers; a long busy timeout turns lock contention into waiting.
        return {"connect_args": {"timeout": 30}}
    return {
        "pool_size": _env_int("DB_POOL_SIZE", 5),
        "max_overflow": _env_int("DB_MAX_OVERFLOW", 10),
        "pool_timeout": _env_float("DB_POOL_TIMEOUT", 10.0),
        "connect_args": {"connect_timeout": _env_int("DB_CONNECT_TIMEOUT", 3)},
    }
