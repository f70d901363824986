"""Alert signals, incidents and notification channels."""

from flask import Flask


def init_app(app: Flask) -> None:
    from service.alerts import models  # noqa: F401  (registers the tables)
