"""The Celery app, built from the Flask app's configuration and what the domains register.

Each domain's `init_app` calls `register` with its queue, task routes, per-task options
and beat entries; `create_app` builds the Celery app once every domain has registered.
Nothing here names a domain.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from celery import Celery, Task
from celery.signals import worker_process_init, worker_process_shutdown, worker_shutdown
from flask import Flask

from service.counting import flush_all
from service.extensions import db

_REGISTRY = "racine.celery_registry"


@dataclass
class CeleryRegistry:
    """What the domains asked of Celery, in the order they asked it."""

    queues: list[str] = field(default_factory=list)
    routes: dict[str, dict] = field(default_factory=dict)
    annotations: dict[str, dict] = field(default_factory=dict)
    beat: dict[str, dict] = field(default_factory=dict)


def register(app: Flask, *, queue: str | None = None, routes: dict[str, str] | None = None,
             annotations: dict[str, dict] | None = None, beat: dict[str, dict] | None = None
             ) -> None:
    """Declare a domain's queue, its task routes (`pattern -> queue`), per-task options
    (time limits, retries) and beat entries. Call from the domain's `init_app`."""
    registry = app.extensions.setdefault(_REGISTRY, CeleryRegistry())
    if queue is not None and queue not in registry.queues:
        registry.queues.append(queue)
    for pattern, target in (routes or {}).items():
        registry.routes[pattern] = {"queue": target}
    for task_name, options in (annotations or {}).items():
        registry.annotations.setdefault(task_name, {}).update(options)
    for entry, spec in (beat or {}).items():
        if entry in registry.beat:
            raise ValueError(f"beat entry {entry!r} registered twice")
        registry.beat[entry] = spec


def queues(app: Flask) -> tuple[str, ...]:
    """Every queue the domains declared, in declaration order."""
    registry = app.extensions.get(_REGISTRY)
    return tuple(registry.queues) if registry else ()


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
    registry = app.extensions.setdefault(_REGISTRY, CeleryRegistry())
    celery = Celery(app.import_name, task_cls=FlaskTask)
    celery.conf.update(
        broker_url=cfg["REDIS_URL"],
        result_backend=None,
        task_ignore_result=True,
        task_default_queue="default",
        task_routes=dict(registry.routes),
        task_soft_time_limit=cfg["DEFAULT_SOFT_TIME_LIMIT"],
        task_time_limit=cfg["DEFAULT_TIME_LIMIT"],
        task_annotations=[dict(registry.annotations)],
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
        beat_schedule=dict(registry.beat),
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

    # Counts a pool process or the worker still buffers are added to Redis as it stops
    # (a pool process ends with os._exit, which skips atexit).
    worker_process_shutdown.connect(flush_all, weak=False)
    worker_shutdown.connect(flush_all, weak=False)
    return celery
