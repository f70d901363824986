"""Provider webhooks: intake, processing, failures and replay."""

import importlib

from flask import Flask


def init_app(app: Flask) -> None:
    from service.webhooks import models, tasks  # noqa: F401  (tables and tasks)
    from service.webhooks.cli import cli
    from service.webhooks.dedup import DedupCache, RedisTransmissionLog
    from service.webhooks.paypal import PayPalVerifier
    from service.webhooks.verifiers import StripeVerifier
    from service.webhooks.views import bp

    cfg = app.config
    for module in cfg["WEBHOOK_HANDLER_MODULES"]:
        importlib.import_module(module)
    app.extensions["webhook_verifiers"] = {
        "stripe": StripeVerifier(secrets=cfg["STRIPE_WEBHOOK_SECRET"],
                                 tolerance=cfg["STRIPE_TOLERANCE_SECONDS"]),
        "paypal": PayPalVerifier(
            webhook_id=cfg["PAYPAL_WEBHOOK_ID"],
            allowed_hosts=cfg["PAYPAL_CERT_URL_HOSTS"],
            cert_path=cfg["PAYPAL_CERT_PATH"],
            fetch_timeout=cfg["PAYPAL_CERT_TIMEOUT_SECONDS"],
            tolerance=cfg["PAYPAL_TOLERANCE_SECONDS"],
            transmissions=RedisTransmissionLog(client=app.extensions["redis"]),
        ),
    }
    app.extensions["webhook_dedup"] = DedupCache(
        client=app.extensions["redis"], ttl_seconds=cfg["DEDUP_TTL_SECONDS"]
    )
    app.register_blueprint(bp)
    app.cli.add_command(cli)
