"""Racine resilience service: the Flask app factory."""

from __future__ import annotations

import logging
import os
import sys
import uuid

import redis
from flask import Flask, g, request
from werkzeug.middleware.proxy_fix import ProxyFix

from service.celery_app import celery_init_app
from service.config import (
    ConfigError,
    check_settings,
    engine_options,
    instance_path,
    load_settings,
    normalise_database_url,
)
from service.extensions import configure_sqlite, db, migrate, ping_when_idle
from service.logs import configure_logging, request_id_var

log = logging.getLogger(__name__)


def create_app(test_config: dict | None = None) -> Flask:
    """Build the app: defaults, then the environment, then `test_config`."""
    app = Flask(__name__, instance_path=instance_path())
    os.makedirs(app.instance_path, exist_ok=True)
    app.config.from_mapping(load_settings(app.instance_path))
    if test_config:
        app.config.from_mapping(test_config)
    check_settings(app.config)
    app.config["SQLALCHEMY_DATABASE_URI"] = normalise_database_url(
        app.config["SQLALCHEMY_DATABASE_URI"])
    app.config.setdefault("SQLALCHEMY_ENGINE_OPTIONS", engine_options(app.config))

    configure_logging(app.config["LOG_LEVEL"], json_output=app.config["LOG_JSON"])
    db.init_app(app)
    migrate.init_app(app, db, directory=os.path.join(os.path.dirname(__file__), "..", "migrations"))
    with app.app_context():
        configure_sqlite(db.engine)
        if db.engine.dialect.name != "sqlite":
            ping_when_idle(db.engine, app.config["DB_PING_IDLE_SECONDS"])
    # Intake publishes through this client (queues.publishing): an unreachable broker must
    # cost a request no more than BROKER_PUBLISH_TIMEOUT_SECONDS.
    publish_timeout = app.config["BROKER_PUBLISH_TIMEOUT_SECONDS"]
    app.extensions["redis"] = redis.Redis.from_url(
        app.config["REDIS_URL"], socket_timeout=publish_timeout,
        socket_connect_timeout=publish_timeout, health_check_interval=30,
    )
    _install_request_id(app)
    if app.config["TRUSTED_PROXIES"] > 0:
        hops = app.config["TRUSTED_PROXIES"]
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops)

    from service import (
        accounts,
        admin,
        alerts,
        audit,
        erp,
        health,
        metrics,
        orders,
        queues,
        runbooks,
        webhooks,
    )

    # Each domain registers its blueprints, CLI, tables, queue, routes and beat entries;
    # queues are listed (queue health, metrics) in the order their domains come here.
    health.init_app(app)
    metrics.init_app(app)
    audit.init_app(app)
    accounts.init_app(app)
    alerts.init_app(app)
    webhooks.init_app(app)
    orders.init_app(app)
    erp.init_app(app)
    queues.init_app(app)
    runbooks.init_app(app)
    admin.init_app(app)
    celery_init_app(app)
    return app


# gunicorn's "app failed to load" status: its arbiter stops instead of respawning workers
# that would fail the same way; Celery and any other caller simply exit with it.
CONFIG_ERROR_EXIT = 4


def create_app_or_exit() -> Flask:
    """`create_app` for the process entry points (web, workers, beat).

    Settings that do not allow a start end the process with one clear message on stderr
    and exit status 4, rather than a traceback.
    """
    try:
        return create_app()
    except ConfigError as exc:
        print(f"racine: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(CONFIG_ERROR_EXIT) from None


def _install_request_id(app: Flask) -> None:
    @app.before_request
    def _assign_request_id():
        incoming = request.headers.get("X-Request-ID", "")
        # Accept a caller's id only when it is short and plain, so logs stay clean.
        rid = incoming if 0 < len(incoming) <= 64 and incoming.isascii() and \
            incoming.replace("-", "").isalnum() else uuid.uuid4().hex
        g.request_id = rid
        g.request_id_token = request_id_var.set(rid)

    @app.after_request
    def _echo_request_id(response):
        if "request_id" in g:
            response.headers["X-Request-ID"] = g.request_id
        return response

    @app.teardown_request
    def _clear_request_id(_exc):
        token = g.pop("request_id_token", None)
        if token is not None:
            request_id_var.reset(token)
