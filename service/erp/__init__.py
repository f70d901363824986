"""Stock synchronisation with the ERP, on its own pausable `erp` queue."""

from flask import Flask

from service.celery_app import register


def init_app(app: Flask) -> None:
    from service.erp import models  # noqa: F401  (tables)

    register(app, queue="erp", routes={"erp.*": "erp"})
