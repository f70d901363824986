"""Celery tasks of the audit domain."""

from __future__ import annotations

import logging

from celery import shared_task
from flask import current_app

from service.audit.partitions import ensure_partitions

log = logging.getLogger(__name__)


@shared_task(name="audit.create_partitions", ignore_result=True)
def create_partitions() -> list[str]:
    """Beat task: keep AUDIT_PARTITIONS_AHEAD monthly partitions ready (PostgreSQL)."""
    created = ensure_partitions(months_ahead=current_app.config["AUDIT_PARTITIONS_AHEAD"])
    if created:
        log.info("audit partitions created", extra={"count": len(created)})
    return created
