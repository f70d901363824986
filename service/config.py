"""Configuration: embedded defaults, then the environment (and `.env`), then test overrides.

Every setting a deployment may change is read from an environment variable of the same
name. The defaults run the whole service on one machine with no set-up: a SQLite file
under `instance/` and a Redis on the standard local port.

Production is the default mode: there the secrets have no defaults, and `check_settings`
refuses to start without them (see the money-safety block below). The built-in
development values exist only with `RACINE_ENV=development`, which `make run` and the
tests set.
"""

from __future__ import annotations

import os
from pathlib import Path

import click
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


def instance_path() -> str | None:
    """Where the instance folder is (SQLite file, run.env, beat schedule); None: Flask's
    default, `instance/` beside the package."""
    return os.environ.get("RACINE_INSTANCE_PATH") or None


def sudo_user() -> str | None:
    """The operator behind `sudo`, who a CLI command's audit row names (sudo sets it)."""
    return os.environ.get("SUDO_USER") or None


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
        **money_safety_settings(),
        "SQLALCHEMY_DATABASE_URI": database_url,
        "REDIS_URL": redis_url,
        # Reverse proxies in front of gunicorn whose X-Forwarded-For/-Proto are trusted
        # (the audit trail's IP is then the client's, not the proxy's). 0: none; set it to
        # the number of proxies that append to the header, never more.
        "TRUSTED_PROXIES": _env_int("TRUSTED_PROXIES", 0),
        "LOG_LEVEL": _env_str("LOG_LEVEL", "INFO"),
        "LOG_JSON": _env_bool("LOG_JSON", True),
        # How often a process adds its buffered counts to Redis (and at exit in any case).
        "METRICS_FLUSH_SECONDS": _env_float("METRICS_FLUSH_SECONDS", 1.0),
        # Intake
        "STRIPE_TOLERANCE_SECONDS": _env_int("STRIPE_TOLERANCE_SECONDS", 300),
        "WEBHOOK_MAX_BODY_BYTES": _env_int("WEBHOOK_MAX_BODY_BYTES", 256 * 1024),
        # Extra modules whose @handles functions are registered (plug-ins, test handlers).
        "WEBHOOK_HANDLER_MODULES": _env_list("WEBHOOK_HANDLER_MODULES", ""),
        "DEDUP_TTL_SECONDS": _env_int("DEDUP_TTL_SECONDS", 300),
        # The "webhook loop" rule (P2): an event id delivered again this many times within
        # the window (read at the duplicate counts' 5-minute resolution). A provider's
        # ordinary retries are a redelivery or two.
        "WEBHOOK_LOOP_MIN_REPEATS": _env_int("WEBHOOK_LOOP_MIN_REPEATS", 5),
        "WEBHOOK_LOOP_WINDOW_SECONDS": _env_int("WEBHOOK_LOOP_WINDOW_SECONDS", 900),
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
        # Relay: what the beat task re-enqueues, and how often it looks. A pass keeps
        # claiming and publishing while there is work and room, for up to
        # RELAY_PASS_SECONDS; a `received` row is the relay's at once (a row about to be
        # published by intake is `queued` under its publish lease).
        "RELAY_INTERVAL_SECONDS": _env_float("RELAY_INTERVAL_SECONDS", 1.0),
        "RELAY_MIN_AGE_SECONDS": _env_int("RELAY_MIN_AGE_SECONDS", 0),
        "RELAY_PASS_SECONDS": _env_float("RELAY_PASS_SECONDS", 2.0),
        # Events per `webhooks.process_events` message the relay sends.
        "WEBHOOK_EVENTS_PER_JOB": _env_int("WEBHOOK_EVENTS_PER_JOB", 50),
        # Intake publishes an event itself only while the `webhooks` depth is below this;
        # above it, it stores the row and leaves it to the relay's batches.
        "WEBHOOK_DIRECT_PUBLISH_DEPTH": _env_int("WEBHOOK_DIRECT_PUBLISH_DEPTH", 100),
        "RELAY_QUEUED_STALE_SECONDS": _env_int("RELAY_QUEUED_STALE_SECONDS", 3600),
        # Database connections (PostgreSQL pool per process; SQLite's busy wait).
        "DB_PING_IDLE_SECONDS": _env_float("DB_PING_IDLE_SECONDS", 2.0),
        "DB_POOL_SIZE": _env_int("DB_POOL_SIZE", 5),
        "DB_MAX_OVERFLOW": _env_int("DB_MAX_OVERFLOW", 10),
        "DB_POOL_TIMEOUT": _env_float("DB_POOL_TIMEOUT", 10.0),
        "DB_CONNECT_TIMEOUT": _env_int("DB_CONNECT_TIMEOUT", 3),
        "SQLITE_BUSY_TIMEOUT": _env_float("SQLITE_BUSY_TIMEOUT", 30.0),
        "RELAY_BATCH_SIZE": _env_int("RELAY_BATCH_SIZE", 500),
        "BROKER_PUBLISH_TIMEOUT_SECONDS": _env_float("BROKER_PUBLISH_TIMEOUT_SECONDS", 1.0),
        # Celery: how long Redis keeps an unacknowledged message before redelivering it,
        # broker connections kept per process, messages a worker process reserves.
        "BROKER_VISIBILITY_TIMEOUT": _env_int("BROKER_VISIBILITY_TIMEOUT", 3600),
        "BROKER_POOL_LIMIT": _env_int("BROKER_POOL_LIMIT", 10),
        "CELERY_PREFETCH_MULTIPLIER": _env_int("CELERY_PREFETCH_MULTIPLIER", 4),
        # Thresholds used by later domains; read here so one place lists them all.
        "SLOW_JOB_SECONDS": _env_float("SLOW_JOB_SECONDS", 30.0),
        # Per-task thresholds: "orders.fulfil=10,webhooks.process_event=5".
        "SLOW_JOB_OVERRIDES": _env_mapping("SLOW_JOB_OVERRIDES"),
        "ORDER_NOTIFY_URL": os.environ.get("ORDER_NOTIFY_URL") or None,
        "QUEUE_DEPTH_ALERT": _env_int("QUEUE_DEPTH_ALERT", 1000),
        "QUEUE_DEPTH_MAX": _env_int("QUEUE_DEPTH_MAX", 2000),
        "QUEUE_PUBLISH_HEADROOM": _env_int("QUEUE_PUBLISH_HEADROOM", 50),
        "ORDERS_RATE_LIMIT": _env_str("ORDERS_RATE_LIMIT", "100/minute"),
        # Queue samples (depth, oldest wait, jobs per minute) for the runbooks' charts;
        # 0 turns the beat entry off.
        "QUEUE_SAMPLE_INTERVAL_SECONDS": _env_float("QUEUE_SAMPLE_INTERVAL_SECONDS", 60.0),
        "QUEUE_SAMPLE_RETENTION_DAYS": _env_int("QUEUE_SAMPLE_RETENTION_DAYS", 7),
        **_alert_settings(),
        **_erp_settings(),
        # Bootstrap only: accepted as an admin until the first active admin user exists.
        "ADMIN_API_TOKENS": _env_list("ADMIN_API_TOKENS", ""),
        # A token's last use is written at most this often (each use would be a write).
        "TOKEN_LAST_USED_RESOLUTION_SECONDS": _env_int("TOKEN_LAST_USED_RESOLUTION_SECONDS", 60),
        # Audit trail: partitions kept ready, how often beat checks, where archives go.
        "AUDIT_PARTITIONS_AHEAD": _env_int("AUDIT_PARTITIONS_AHEAD", 3),
        "AUDIT_PARTITION_CHECK_SECONDS": _env_float("AUDIT_PARTITION_CHECK_SECONDS", 6 * 3600.0),
        "AUDIT_ARCHIVE_DIR": _env_str("AUDIT_ARCHIVE_DIR",
                                      str(Path(instance_path) / "audit-archives")),
        # Runbooks (notebooks/, run by `flask runbook run`): where executed notebooks go,
        # the Jupyter kernel they run in (`make venv` installs "racine"), a cell's time limit.
        "RUNBOOK_OUTPUT_DIR": _env_str("RUNBOOK_OUTPUT_DIR", str(Path(instance_path) / "runbooks")),
        "RUNBOOK_KERNEL": _env_str("RUNBOOK_KERNEL", "racine"),
        "RUNBOOK_CELL_TIMEOUT_SECONDS": _env_int("RUNBOOK_CELL_TIMEOUT_SECONDS", 900),
        # Worker scaling (playbooks/scale_workers.yml through ansible-runner): the process
        # layout it drives, the inventory, supervisord's files, a ceiling, extra variables.
        "SCALING_LAYOUT": _env_str("SCALING_LAYOUT", "supervisord"),
        "SCALING_INVENTORY": _env_str("SCALING_INVENTORY", ""),
        "SCALING_MAX_WORKERS": _env_int("SCALING_MAX_WORKERS", 32),
        "SCALING_EXTRA_VARS": _env_str("SCALING_EXTRA_VARS", "{}"),
        "SUPERVISOR_CONFIG": _env_str("SUPERVISOR_CONFIG", "/etc/supervisor/supervisord.conf"),
        "SUPERVISOR_PROGRAM_DIR": _env_str("SUPERVISOR_PROGRAM_DIR", "/etc/supervisor/conf.d"),
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


# Escalation policy (service/alerts). Per-severity settings read "P0=300,P1=900,...";
# a severity left out keeps its default.
_SEVERITIES = ("P0", "P1", "P2", "P3")


def _env_severities(name: str, default: str) -> dict[str, float]:
    values = {}
    for source in (default, _env_str(name, "")):
        for part in (p.strip() for p in source.split(",") if p.strip()):
            key, sep, value = part.partition("=")
            key = key.strip().upper()
            try:
                seconds = float(value)
            except ValueError:
                sep = ""
            if not sep or key not in _SEVERITIES or seconds < 0:
                raise ValueError(f"{name} entries look like P1=900 (severity P0..P3, seconds "
                                 f">= 0), got {part!r}")
            values[key] = seconds
    return values


def _env_levels(name: str) -> list[list[str]]:
    """Escalation contact lists: levels separated by ';', contacts within one by ','."""
    return [[c.strip() for c in level.split(",") if c.strip()]
            for level in _env_str(name, "").split(";") if level.strip()]


def _alert_settings() -> dict:
    return {
        # Channels, as apprise URLs (slack://..., mailtos://...?from=..., twilio://...).
        "ALERT_SLACK_URL": os.environ.get("ALERT_SLACK_URL") or None,
        "ALERT_EMAIL_URL": os.environ.get("ALERT_EMAIL_URL") or None,
        "ALERT_SMS_URL": os.environ.get("ALERT_SMS_URL") or None,
        # Who is told first, per severity: e-mail addresses, +phone numbers, @slack handles.
        "ALERT_RECIPIENTS": {"P0": _env_list("ALERT_RECIPIENTS_P0", ""),
                             "P1": _env_list("ALERT_RECIPIENTS_P1", ""),
                             "P2": _env_list("ALERT_RECIPIENTS_P2", "")},  # P3: log only
        # Who is told next when an incident stays unacknowledged past its response time.
        "ALERT_ESCALATION_CONTACTS": _env_levels("ALERT_ESCALATION_CONTACTS"),
        # Shown in messages as where to acknowledge (the admin API's base URL).
        "ALERT_ADMIN_URL": _env_str("ALERT_ADMIN_URL", "").rstrip("/") or None,
        # 0 turns the beat entry off (evaluate with `flask alerts evaluate`).
        "ALERT_EVALUATE_INTERVAL_SECONDS": _env_float("ALERT_EVALUATE_INTERVAL_SECONDS", 60.0),
        # Rule thresholds.
        "ALERT_PAYMENT_STALL_SECONDS": _env_int("ALERT_PAYMENT_STALL_SECONDS", 300),
        "ALERT_FAILED_STREAK": _env_int("ALERT_FAILED_STREAK", 5),
        "ALERT_INTAKE_503_SECONDS": _env_int("ALERT_INTAKE_503_SECONDS", 60),
        "ALERT_INTAKE_503_GAP_SECONDS": _env_int("ALERT_INTAKE_503_GAP_SECONDS", 120),
        "ALERT_FAILURES_PER_HOUR": _env_int("ALERT_FAILURES_PER_HOUR", 10),
        "ALERT_SUCCESS_TARGET": _env_float("ALERT_SUCCESS_TARGET", 0.999),
        "ALERT_SUCCESS_MIN_VOLUME": _env_int("ALERT_SUCCESS_MIN_VOLUME", 100),
        "ALERT_QUEUE_AGE_SECONDS": _env_int("ALERT_QUEUE_AGE_SECONDS", 600),
        "ALERT_SIGNAL_WINDOW_SECONDS": _env_int("ALERT_SIGNAL_WINDOW_SECONDS", 3600),
        # Damping, response, repetition.
        "ALERT_HOLD_SECONDS": _env_severities("ALERT_HOLD_SECONDS", "P0=0,P1=60,P2=120,P3=0"),
        "ALERT_CLEAR_SECONDS": _env_severities("ALERT_CLEAR_SECONDS", "P0=300,P1=300,P2=300,P3=0"),
        "ALERT_RESPONSE_SECONDS": _env_severities("ALERT_RESPONSE_SECONDS", "P0=300,P1=900,P2=3600"),
        "ALERT_REPEAT_SECONDS": _env_severities("ALERT_REPEAT_SECONDS", "P0=900,P1=3600,P2=14400"),
        # Sending: attempts per message and recipient, and the backoff between them.
        "ALERT_SEND_MAX_ATTEMPTS": _env_int("ALERT_SEND_MAX_ATTEMPTS", 6),
        "ALERT_SEND_BACKOFF_SECONDS": _env_float("ALERT_SEND_BACKOFF_SECONDS", 30.0),
        "ALERT_SEND_BACKOFF_MAX_SECONDS": _env_float("ALERT_SEND_BACKOFF_MAX_SECONDS", 900.0),
        "ALERT_SEND_LEASE_SECONDS": _env_int("ALERT_SEND_LEASE_SECONDS", 300),
        # The report's goals.
        "ALERT_MTTR_GOAL_SECONDS": _env_severities("ALERT_MTTR_GOAL_SECONDS", "P1=1800"),
    }


def _erp_settings() -> dict:
    """The ERP stock sync (service/erp): where the ERP is, how long to wait for it, how
    often to sync, how to retry, and when the escalation policy calls it failing."""
    return {
        # Unset: no ERP; the beat entry is not registered and `flask erp sync` says so.
        "ERP_API_URL": os.environ.get("ERP_API_URL") or None,
        "ERP_API_TOKEN": os.environ.get("ERP_API_TOKEN") or None,
        "ERP_CONNECT_TIMEOUT_SECONDS": _env_float("ERP_CONNECT_TIMEOUT_SECONDS", 5.0),
        "ERP_READ_TIMEOUT_SECONDS": _env_float("ERP_READ_TIMEOUT_SECONDS", 30.0),
        "ERP_PAGE_SIZE": _env_int("ERP_PAGE_SIZE", 200),
        # 0 turns the beat entry off (sync with `flask erp sync`).
        "ERP_SYNC_INTERVAL_SECONDS": _env_float("ERP_SYNC_INTERVAL_SECONDS", 300.0),
        # Transient errors (unreachable, timeout, 5xx) are retried this many times, after
        # backoff * 2^n seconds (capped); a refused token is not retried.
        "ERP_SYNC_MAX_RETRIES": _env_int("ERP_SYNC_MAX_RETRIES", 3),
        "ERP_SYNC_RETRY_BACKOFF": _env_float("ERP_SYNC_RETRY_BACKOFF", 30.0),
        "ERP_SYNC_RETRY_BACKOFF_MAX": _env_float("ERP_SYNC_RETRY_BACKOFF_MAX", 300.0),
        "ERP_SYNC_RETRY_JITTER": _env_bool("ERP_SYNC_RETRY_JITTER", True),
        # A run still `running` this long after it started is taken for dead (its worker
        # was killed): it is marked failed and no longer holds the next runs back. Longer
        # than a live run can last: its attempts, each within the task's time limit
        # (DEFAULT_TIME_LIMIT), and the backoffs between them.
        "ERP_SYNC_STALE_SECONDS": _env_int("ERP_SYNC_STALE_SECONDS", 1800),
        # The "ERP sync failing" rule (P2): the last N finished runs all failed, or no
        # run has succeeded for this long while the sync is not paused.
        "ERP_ALERT_FAILED_RUNS": _env_int("ERP_ALERT_FAILED_RUNS", 3),
        "ERP_ALERT_STALE_SECONDS": _env_int("ERP_ALERT_STALE_SECONDS", 1800),
    }


def engine_options(settings: dict) -> dict:
    """Connection options that suit the database `SQLALCHEMY_DATABASE_URI` names."""
    if settings["SQLALCHEMY_DATABASE_URI"].startswith("sqlite"):
        # SQLite serialises writers; a long busy timeout turns lock contention into waiting.
        return {"connect_args": {"timeout": settings["SQLITE_BUSY_TIMEOUT"]},
                "hide_parameters": True}
    return {
        # Statement parameters are payload values and personal data: never in an error.
        "hide_parameters": True,
        "pool_size": settings["DB_POOL_SIZE"],
        "max_overflow": settings["DB_MAX_OVERFLOW"],
        "pool_timeout": settings["DB_POOL_TIMEOUT"],
        "connect_args": {
            "connect_timeout": settings["DB_CONNECT_TIMEOUT"],
            # A worker whose host is lost leaves no FIN behind: the server probes its
            # socket and, after some 25 s of silence, ends the session, releasing the
            # row locks its open transaction held (the event itself comes back with its
            # lease). Ignored over a Unix socket.
            "options": "-c tcp_keepalives_idle=10 -c tcp_keepalives_interval=5"
                       " -c tcp_keepalives_count=3",
        },
    }


# ---- Money safety --------------------------------------------------------------------
# Production mode, its secrets, the money rule's settings, PayPal's strict verification
# and the processing edges (leases, attempts, retention). `check_settings` is called by
# `create_app`, so the web process, the workers and beat refuse to start alike.

DEVELOPMENT = "development"
PRODUCTION = "production"

# The built-in values of development mode. Production refuses each of them, even when
# set explicitly: they are public (in this repository), so anyone could sign with them.
DEVELOPMENT_VALUES = {
    "SECRET_KEY": "dev-only-change-me",
    "STRIPE_WEBHOOK_SECRET": "whsec_racine_dev_secret",
    "PAYPAL_WEBHOOK_ID": "WH-RACINE-DEV",
}

# What to tell an operator about each required setting.
_HOW_TO_SET = {
    "SECRET_KEY": "a long random string, e.g. the output of "
                  "`python -c 'import secrets; print(secrets.token_urlsafe(48))'`",
    "STRIPE_WEBHOOK_SECRET": "the signing secret (whsec_...) of the Stripe webhook endpoint, "
                             "from the Stripe dashboard; comma-separated during a rotation",
    "PAYPAL_WEBHOOK_ID": "the id of the PayPal webhook, from the PayPal developer dashboard "
                         "(or PAYPAL_ENABLED=false when PayPal is not used)",
}

# PayPal redelivers a failed webhook for about 3 days, with the transmission time of its
# first try: the tolerance must be wider than that, or a late redelivery is lost.
PAYPAL_DEFAULT_TOLERANCE_SECONDS = 4 * 24 * 3600


class ConfigError(click.ClickException, RuntimeError):
    """The settings do not allow the service to start; the message says what to set.

    A ClickException, so a `flask ...` command refused by it prints the message and
    exits with status 4, as the web process and the workers do, instead of a traceback.
    """

    exit_code = 4


def money_safety_settings() -> dict:
    """The settings of the money-safety block, read from the environment."""
    mode = _env_str("RACINE_ENV", PRODUCTION).strip().lower()
    if mode not in (DEVELOPMENT, PRODUCTION):
        raise ConfigError(f"RACINE_ENV must be {PRODUCTION!r} or {DEVELOPMENT!r}, got {mode!r}")
    development = mode == DEVELOPMENT

    def secret(name: str) -> str:
        return _env_str(name, DEVELOPMENT_VALUES[name] if development else "")

    return {
        "RACINE_ENV": mode,
        "SECRET_KEY": secret("SECRET_KEY"),
        "STRIPE_WEBHOOK_SECRET": _env_list(
            "STRIPE_WEBHOOK_SECRET",
            DEVELOPMENT_VALUES["STRIPE_WEBHOOK_SECRET"] if development else ""),
        # A test-mode event never pays a live order: events whose `livemode` differs from
        # this are refused (recorded as failures and signalled).
        "STRIPE_LIVEMODE": _env_bool("STRIPE_LIVEMODE", not development),
        "PAYPAL_ENABLED": _env_bool("PAYPAL_ENABLED", True),
        "PAYPAL_WEBHOOK_ID": secret("PAYPAL_WEBHOOK_ID"),
        "PAYPAL_CERT_URL_HOSTS": _env_list("PAYPAL_CERT_URL_HOSTS", ".paypal.com"),
        # Certificate URLs must lie under this path on an allowed host.
        "PAYPAL_CERT_URL_PATH": _env_str("PAYPAL_CERT_URL_PATH", "/v1/notifications/certs/"),
        "PAYPAL_CERT_PATH": os.environ.get("PAYPAL_CERT_PATH") or None,
        # Roots a fetched certificate must chain to (and that the fetch's TLS trusts);
        # unset: the system trust store.
        "PAYPAL_CA_BUNDLE": os.environ.get("PAYPAL_CA_BUNDLE") or None,
        # The subject common name PayPal's message-verification certificate carries; add
        # messageverificationcerts.sandbox.paypal.com for a sandbox webhook.
        "PAYPAL_CERT_SUBJECTS": _env_list("PAYPAL_CERT_SUBJECTS",
                                          "messageverificationcerts.paypal.com"),
        "PAYPAL_CERT_TIMEOUT_SECONDS": _env_float("PAYPAL_CERT_TIMEOUT_SECONDS", 5.0),
        "PAYPAL_CERT_FETCHES_PER_MINUTE": _env_int("PAYPAL_CERT_FETCHES_PER_MINUTE", 10),
        "PAYPAL_CERT_FAILURE_TTL_SECONDS": _env_int("PAYPAL_CERT_FAILURE_TTL_SECONDS", 30),
        "PAYPAL_TOLERANCE_SECONDS": _env_int("PAYPAL_TOLERANCE_SECONDS",
                                             PAYPAL_DEFAULT_TOLERANCE_SECONDS),
        # Bodies nested deeper than this are refused (400) before anything walks them.
        "WEBHOOK_MAX_JSON_DEPTH": _env_int("WEBHOOK_MAX_JSON_DEPTH", 32),
        # Empty: /metrics is closed in production and open in development.
        "METRICS_TOKEN": os.environ.get("METRICS_TOKEN") or None,
        # Leases: short, and renewed while the task runs, so a worker killed outright
        # delays its events by at most lease + relay interval (40 s by default).
        "PROCESSING_LEASE_SECONDS": _env_int("PROCESSING_LEASE_SECONDS", 30),
        "LEASE_RENEW_SECONDS": _env_float("LEASE_RENEW_SECONDS", 10.0),
        # A stored event whose publish never happened (the process died right after the
        # commit, or the worker that prefetched it was killed) is republished by the
        # relay this long after it was queued.
        "PUBLISH_GRACE_SECONDS": _env_int("PUBLISH_GRACE_SECONDS", 30),
        # Every attempt counts, lease expiries after hard kills included.
        "WEBHOOK_MAX_ATTEMPTS": _env_int("WEBHOOK_MAX_ATTEMPTS", 10),
        # An event whose order is not there yet (its commit may be in flight) is tried
        # again this many times before it becomes a failure row.
        "ORDER_WAIT_RETRIES": _env_int("ORDER_WAIT_RETRIES", 4),
        # Payloads of processed events older than this lose their personal data (daily).
        "PAYLOAD_RETENTION_DAYS": _env_int("PAYLOAD_RETENTION_DAYS", 90),
    }


def check_settings(config) -> None:
    """Refuse to start in production mode without real secrets; one message for all."""
    if config.get("RACINE_ENV") == DEVELOPMENT:
        return
    required = ["STRIPE_WEBHOOK_SECRET", "SECRET_KEY"]
    if config.get("PAYPAL_ENABLED", True):
        required.append("PAYPAL_WEBHOOK_ID")
    problems = []
    for name in required:
        value = config.get(name)
        values = [v for v in value if v.strip()] if isinstance(value, list | tuple) \
            else ([value] if isinstance(value, str) and value.strip() else [])
        if not values:
            problems.append(f"  - {name} is not set (an empty value counts as unset): "
                            f"{_HOW_TO_SET[name]}")
        elif DEVELOPMENT_VALUES[name] in values:
            problems.append(f"  - {name} holds the built-in development value, which is "
                            f"public: set {_HOW_TO_SET[name]}")
    if problems:
        raise ConfigError(
            "Racine refuses to start in production mode (RACINE_ENV is not 'development'):\n"
            + "\n".join(problems)
            + "\nSet them in the environment (or in .env). For a local run with the built-in "
              "development values, use `make run` or set RACINE_ENV=development."
        )
