"""`erp.sync_stock`: the ERP stock sync as a task, on the `erp` queue (beat: every
ERP_SYNC_INTERVAL_SECONDS; also enqueued by the admin API and `flask erp sync --enqueue`).

The decision to retry is taken here, once: an ERP that is unreachable, times out or
answers 5xx is tried again after backoff * 2^n seconds (capped, with jitter), up to
ERP_SYNC_MAX_RETRIES times, continuing the same run row; a refused token or a malformed
answer fails the run at once (trying again would meet the same answer).
"""

from __future__ import annotations

import random

from celery import shared_task
from flask import current_app

from service.audit.actor import Actor
from service.erp.exceptions import SyncFailed
from service.erp.models import RunStatus, Trigger
from service.erp.services import sync_now


@shared_task(bind=True, name="erp.sync_stock", ignore_result=True)
def sync_stock(self, trigger: str = Trigger.BEAT, actor: str | None = None) -> dict:
    """One sync run (or one attempt of it); `actor` is the label of who asked for it."""
    cfg = current_app.config
    max_retries = cfg["ERP_SYNC_MAX_RETRIES"]
    outcome = sync_now(trigger=trigger if trigger in Trigger.ALL else Trigger.BEAT,
                       actor=Actor(label=actor) if actor else Actor.system("erp"),
                       task_id=self.request.id, may_retry=self.request.retries < max_retries)
    if outcome.retry:
        raise self.retry(countdown=retry_delay(self.request.retries, cfg),
                         max_retries=max_retries)
    if outcome.status == RunStatus.FAILED:
        raise SyncFailed(f"ERP stock sync run {outcome.run['id']} failed: {outcome.run['error']}")
    return outcome.run


def retry_delay(retries: int, cfg) -> float:
    """backoff * 2^retries seconds, capped; with jitter, drawn from the upper half."""
    delay = min(cfg["ERP_SYNC_RETRY_BACKOFF"] * (2 ** retries), cfg["ERP_SYNC_RETRY_BACKOFF_MAX"])
    return random.uniform(delay / 2, delay) if cfg["ERP_SYNC_RETRY_JITTER"] else delay
