"""Queue protection: routing, the outbox, rate limits, slow jobs, depth bound and health."""

from flask import Flask

from service.celery_app import register


def init_app(app: Flask) -> None:
    from service.queues import models, signals, tasks  # noqa: F401  (tables and tasks)
    from service.queues.cli import cli
    from service.queues.gauges import queue_gauges
    from service.queues.ratelimit import RateLimiter

    app.extensions["rate_limiter"] = RateLimiter(client=app.extensions["redis"],
                                                 redis_url=app.config["REDIS_URL"])
    signals.connect(app)
    app.cli.add_command(cli)
    app.extensions.setdefault("metrics_collectors", []).append(queue_gauges)
    interval = app.config["RELAY_INTERVAL_SECONDS"]
    # The default queue is declared last: housekeeping is listed after the domains' queues.
    register(app, queue="default", routes={"queues.*": "default"},
             beat={"outbox-relay": {"task": "queues.relay_outbox", "schedule": interval,
                                    "options": {"expires": max(interval, 5.0)}}})
