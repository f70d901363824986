"""Provider webhooks: intake, processing, failures and replay."""

import importlib

from celery.schedules import crontab
from flask import Flask

from service.celery_app import register
from service.metrics import register as register_metrics


def init_app(app: Flask) -> None:
    from service.alerts.rules import register_rule
    from service.alerts.services import register_payment_events
    from service.queues.health import register_backlog
    from service.webhooks import models, tasks  # noqa: F401  (tables and tasks)
    from service.webhooks.cli import cli
    from service.webhooks.dedup import DedupCache
    from service.webhooks.intake import DirectPublishing
    from service.webhooks.leases import LeaseKeeper
    from service.webhooks.metrics import ALL as METRICS
    from service.webhooks.paypal import PayPalVerifier
    from service.webhooks.rules import WebhookLoopRule
    from service.webhooks.services import WebhookBacklog, WebhookPaymentEvents
    from service.webhooks.transmissions import DatabaseTransmissionLog
    from service.webhooks.verifiers import StripeVerifier
    from service.webhooks.views import bp

    cfg = app.config
    for module in cfg["WEBHOOK_HANDLER_MODULES"]:
        importlib.import_module(module)
    verifiers = {
        "stripe": StripeVerifier(secrets=cfg["STRIPE_WEBHOOK_SECRET"],
                                 tolerance=cfg["STRIPE_TOLERANCE_SECONDS"],
                                 max_depth=cfg["WEBHOOK_MAX_JSON_DEPTH"]),
    }
    if cfg["PAYPAL_ENABLED"]:
        verifiers["paypal"] = PayPalVerifier(
            webhook_id=cfg["PAYPAL_WEBHOOK_ID"],
            allowed_hosts=cfg["PAYPAL_CERT_URL_HOSTS"],
            cert_path=cfg["PAYPAL_CERT_PATH"],
            cert_url_path=cfg["PAYPAL_CERT_URL_PATH"],
            subjects=cfg["PAYPAL_CERT_SUBJECTS"],
            ca_bundle=cfg["PAYPAL_CA_BUNDLE"],
            fetch_timeout=cfg["PAYPAL_CERT_TIMEOUT_SECONDS"],
            fetches_per_minute=cfg["PAYPAL_CERT_FETCHES_PER_MINUTE"],
            failure_ttl=cfg["PAYPAL_CERT_FAILURE_TTL_SECONDS"],
            tolerance=cfg["PAYPAL_TOLERANCE_SECONDS"],
            max_depth=cfg["WEBHOOK_MAX_JSON_DEPTH"],
            transmissions=DatabaseTransmissionLog(),
        )
    app.extensions["webhook_verifiers"] = verifiers
    app.extensions["lease_keeper"] = LeaseKeeper(
        app=app, lease_seconds=cfg["PROCESSING_LEASE_SECONDS"],
        renew_every=cfg["LEASE_RENEW_SECONDS"])
    app.extensions["webhook_direct_publishing"] = DirectPublishing()
    app.extensions["webhook_dedup"] = DedupCache(
        client=app.extensions["redis"], ttl_seconds=cfg["DEDUP_TTL_SECONDS"]
    )
    app.register_blueprint(bp)
    app.cli.add_command(cli)
    register_metrics(app, *METRICS)
    register_backlog(app, "webhooks", WebhookBacklog())
    register_payment_events(app, WebhookPaymentEvents())
    register_rule(app, WebhookLoopRule())
    retry_policy = {
        "max_retries": cfg["WEBHOOK_MAX_RETRIES"],
        "retry_backoff": cfg["WEBHOOK_RETRY_BACKOFF"],
        "retry_backoff_max": cfg["WEBHOOK_RETRY_BACKOFF_MAX"],
        "retry_jitter": cfg["WEBHOOK_RETRY_JITTER"],
        "soft_time_limit": cfg["WEBHOOK_SOFT_TIME_LIMIT"],
        "time_limit": cfg["WEBHOOK_TIME_LIMIT"],
    }
    register(
        app, queue="webhooks",
        routes={"webhooks.process_event": "webhooks", "webhooks.process_events": "webhooks",
                "webhooks.*": "default"},
        # A batch's time limits are an event's: a batch runs in well under a second, and
        # past its soft limit it hands its remaining events back one by one.
        annotations={"webhooks.process_event": retry_policy,
                     "webhooks.process_events": retry_policy},
        beat={
            "webhooks-relay": {
                "task": "webhooks.relay_pending",
                "schedule": cfg["RELAY_INTERVAL_SECONDS"],
                # A pass lasts up to RELAY_PASS_SECONDS: passes that would wait behind it
                # expire rather than pile up.
                "options": {"expires": max(cfg["RELAY_INTERVAL_SECONDS"], 1.0)},
            },
            # Daily, at a quiet hour (UTC).
            "webhooks-purge-payloads": {
                "task": "webhooks.purge_payloads",
                "schedule": crontab(hour=3, minute=17),
                "options": {"expires": 3600},
            },
        },
    )
