"""The audit trail: one writer, a hash chain, verification, monthly partitions, archives."""

from flask import Flask

from service.celery_app import register
from service.extensions import leave_tables_to_domain


def init_app(app: Flask) -> None:
    from service.audit import models, tasks  # noqa: F401  (tables and tasks)
    from service.audit.cli import cli
    from service.audit.partitions import is_partition_name

    leave_tables_to_domain(is_partition_name)
    app.cli.add_command(cli)
    register(app, routes={"audit.*": "default"}, beat={"audit-create-partitions": {
        "task": "audit.create_partitions",
        "schedule": app.config["AUDIT_PARTITION_CHECK_SECONDS"],
        "options": {"expires": 600},
    }})
