"""Orders, payments, refunds, products and customers."""

from flask import Flask

from service.celery_app import register


def init_app(app: Flask) -> None:
    from service.orders import models, tasks  # noqa: F401  (tables and tasks)
    from service.orders.cli import demo_cli, stock_cli
    from service.orders.gateways import gateways_from_config
    from service.orders.notify import HttpNotifier, LogNotifier
    from service.queues.ratelimit import register_rate_limit

    url = app.config["ORDER_NOTIFY_URL"]
    app.extensions["order_notifier"] = HttpNotifier(url=url) if url else LogNotifier()
    app.extensions["refund_gateways"] = gateways_from_config(app.config)
    app.cli.add_command(demo_cli)
    app.cli.add_command(stock_cli)
    limits = {"soft_time_limit": app.config["ORDERS_SOFT_TIME_LIMIT"],
              "time_limit": app.config["ORDERS_TIME_LIMIT"]}
    register_rate_limit(app, "orders", key="orders", setting="ORDERS_RATE_LIMIT")
    register(app, queue="orders", routes={"orders.*": "orders"},
             annotations={"orders.fulfil": limits, "orders.send_confirmation": limits})
