"""The Celery app, built from the Flask app's configuration and what the domains register.

Each domain's `init_app` calls `register` with its queue, task routes, per-task options
and beat entries; `create_app` builds the Celery app once every domain has registered.
Nothing here names a domain.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from celery import Celery, Task
from celery.exceptions import Ignore, Retry
from celery.signals import worker_process_init, worker_process_shutdown, worker_shutdown
from celery.utils.time import get_exponential_backoff_interval
from flask import Flask

from service.counting import flush_all
from service.extensions import db
from service.logs import quieten
from service.metrics import SharedCounter
from service.metrics import register as register_metrics

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


TASK_RUNS = SharedCounter("racine_task_runs", "Task runs by task and outcome "
                          "(succeeded, retried, ignored, failed).", ("task", "outcome"))


class AppTask(Task):
    """The base of every task: one run is one transaction, and its outcome is counted.

    The run happens inside the Flask app context. The session is committed when the task
    returns, or ends with Ignore (its work stands: a rate-limited job put back in the
    outbox); rolled back when it raises, a retry included; and removed afterwards, so no
    transaction outlives the run. A commit that fails with an error the task retries
    (`autoretry_for`) is retried like any other. Task code therefore never commits,
    except where a separate transaction is the point, and such places say so.
    """

    abstract = True

    def __call__(self, *args, **kwargs):
        with self.app.flask_app.app_context():
            try:
                result = self.run(*args, **kwargs)
                self._commit()
            except Retry:
                db.session.rollback()
                TASK_RUNS.inc(task=self.name, outcome="retried")
                raise
            except Ignore:
                self._commit()
                TASK_RUNS.inc(task=self.name, outcome="ignored")
                raise
            except BaseException:
                db.session.rollback()
                TASK_RUNS.inc(task=self.name, outcome="failed")
                raise
            else:
                TASK_RUNS.inc(task=self.name, outcome="succeeded")
                return result
            finally:
                db.session.remove()

    def _commit(self) -> None:
        try:
            db.session.commit()
        except Exception as exc:
            db.session.rollback()
            if not isinstance(exc, tuple(getattr(self, "autoretry_for", ()))):
                raise
            countdown = get_exponential_backoff_interval(
                factor=int(getattr(self, "retry_backoff", 1) or 1),
                retries=self.request.retries,
                maximum=getattr(self, "retry_backoff_max", 600),
                full_jitter=getattr(self, "retry_jitter", True))
            raise self.retry(exc=exc, countdown=countdown) from None


def celery_init_app(app: Flask) -> Celery:
    """Build the Celery app (tasks derive from AppTask) and keep it in extensions."""
    cfg = app.config
    registry = app.extensions.setdefault(_REGISTRY, CeleryRegistry())
    celery = Celery(app.import_name, task_cls=AppTask)
    celery.flask_app = app
    register_metrics(app, TASK_RUNS)
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
        worker_prefetch_multiplier=cfg["CELERY_PREFETCH_MULTIPLIER"],
        worker_hijack_root_logger=False,
        broker_connection_retry_on_startup=True,
        # Celery's own publishes (retries, beat) fail fast when the broker is down: what
        # they carry is in the database and the relays send it again.
        task_publish_retry=False,
        broker_transport_options={
            "visibility_timeout": cfg["BROKER_VISIBILITY_TIMEOUT"],
            "socket_connect_timeout": cfg["BROKER_PUBLISH_TIMEOUT_SECONDS"],
            "socket_timeout": max(cfg["BROKER_PUBLISH_TIMEOUT_SECONDS"], 5.0),
            "max_retries": 0,
        },
        broker_pool_limit=cfg["BROKER_POOL_LIMIT"],
        beat_schedule=dict(registry.beat),
        timezone="UTC",
    )
    celery.conf.update(cfg.get("CELERY", {}))
    # Beat's tasks are housekeeping every few seconds: Celery's own line per run would
    # bury what matters; they log themselves when they move something.
    quieten(spec["task"] for spec in registry.beat.values())
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
