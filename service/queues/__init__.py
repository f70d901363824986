"""Queue protection: routing, the outbox, rate limits, slow jobs, depth bound and health."""

from flask import Flask

from service.celery_app import queues, register
from service.metrics import register as register_metrics


def init_app(app: Flask) -> None:
    from service.queues import hooks, models, tasks  # noqa: F401  (tables and tasks)
    from service.queues.cli import cli
    from service.queues.gauges import QueueGauges
    from service.queues.ratelimit import RateLimiter

    app.extensions["rate_limiter"] = RateLimiter(client=app.extensions["redis"],
                                                 redis_url=app.config["REDIS_URL"])
    hooks.connect(app)
    app.cli.add_command(cli)
    register_metrics(app, QueueGauges(client=app.extensions["redis"], queues=lambda: queues(app)))
    interval = app.config["RELAY_INTERVAL_SECONDS"]
    # The default queue is declared last: housekeeping is listed after the domains' queues.
    beat = {"outbox-relay": {"task": "queues.relay_outbox", "schedule": interval,
                             "options": {"expires": max(interval, 5.0)}}}
    sample_every = app.config["QUEUE_SAMPLE_INTERVAL_SECONDS"]
    if sample_every > 0:
        beat["queue-samples"] = {"task": "queues.record_samples", "schedule": sample_every,
                                 "options": {"expires": sample_every}}
    register(app, queue="default", routes={"queues.*": "default"}, beat=beat)
