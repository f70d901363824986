"""Orders, payments, refunds, products and customers."""

from flask import Flask


def init_app(app: Flask) -> None:
    from service.orders import models  # noqa: F401  (registers the tables)
    from service.orders.cli import demo_cli

    app.cli.add_command(demo_cli)
