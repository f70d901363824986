"""The Celery app, built from the Flask app's configuration."""

from __future__ import annotations

from celery import Celery, Task
from celery.signals import worker_process_init
from flask import Flask

from service.extensions import db

QUEUES = ("webhooks", "orders", "erp", "default")


def celery_init_app(app: Flask) -> Celery:
    """Build the Celery app, run every task inside an app context, keep it in extensions."""

    class FlaskTask(Task):
        def __call__(self, *args, **kwargs):
            with app.app_context():
                try:
                    return self.run(*args, **kwargs)
                finally:
                    # A task never leaves a transaction open for the next one.
                    db.session.remove()

    cfg = app.config
    celery = Celery(app.import_name, task_cls=FlaskTask)
    celery.conf.update(
        broker_url=cfg["REDIS_URL"],
        result_backend=None,
        task_ignore_result=True,
        task_default_queue="default",
        task_routes={
            "webhooks.process_event": {"queue": "webhooks"},
            "webhooks.*": {"queue": "default"},
            "orders.*": {"queue": "orders"},
            "erp.*": {"queue": "erp"},
            "queues.*": {"queue": "default"},
        },
        task_soft_time_limit=cfg["DEFAULT_SOFT_TIME_LIMIT"],
        task_time_limit=cfg["DEFAULT_TIME_LIMIT"],
        task_annotations=[
            {name: {"soft_time_limit": cfg["ORDERS_SOFT_TIME_LIMIT"],
                    "time_limit": cfg["ORDERS_TIME_LIMIT"]}
             for name in ("orders.fulfil", "orders.send_confirmation")},
            {"webhooks.process_event": {
                "max_retries": cfg["WEBHOOK_MAX_RETRIES"],
                "retry_backoff": cfg["WEBHOOK_RETRY_BACKOFF"],
                "retry_backoff_max": cfg["WEBHOOK_RETRY_BACKOFF_MAX"],
                "retry_jitter": cfg["WEBHOOK_RETRY_JITTER"],
                "soft_time_limit": cfg["WEBHOOK_SOFT_TIME_LIMIT"],
                "time_limit": cfg["WEBHOOK_TIME_LIMIT"],
            }},
        ],
        task_serializer="json",
        accept_content=["json"],
        worker_prefetch_multiplier=cfg.get("CELERY_PREFETCH_MULTIPLIER", 4),
        worker_hijack_root_logger=False,
        broker_connection_retry_on_startup=True,
        # Celery's own publishes (retries, beat) fail fast when the broker is down: what
        # they carry is in the database and the relays send it again.
        task_publish_retry=False,
        broker_transport_options={
            "visibility_timeout": cfg.get("BROKER_VISIBILITY_TIMEOUT", 3600),
            "socket_connect_timeout": cfg["BROKER_PUBLISH_TIMEOUT_SECONDS"],
            "socket_timeout": max(cfg["BROKER_PUBLISH_TIMEOUT_SECONDS"], 5.0),
            "max_retries": 0,
        },
        broker_pool_limit=cfg.get("BROKER_POOL_LIMIT", 10),
        beat_schedule={
            "webhooks-relay": {
                "task": "webhooks.relay_pending",
                "schedule": cfg["RELAY_INTERVAL_SECONDS"],
                "options": {"expires": max(cfg["RELAY_INTERVAL_SECONDS"], 5.0)},
            },
            "outbox-relay": {
                "task": "queues.relay_outbox",
                "schedule": cfg["RELAY_INTERVAL_SECONDS"],
                "options": {"expires": max(cfg["RELAY_INTERVAL_SECONDS"], 5.0)},
            },
        },
        timezone="UTC",
    )
    celery.conf.update(cfg.get("CELERY", {}))
    celery.set_default()
    app.extensions["celery"] = celery

    @worker_process_init.connect(weak=False)
    def _dispose_engine(**_kwargs):
        # Forked pool processes must not share the parent's database connections.
        with app.app_context():
            db.engine.dispose(close=False)

    return celery
