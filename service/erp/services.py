"""The ERP sync's state and its critical actions: pause, resume, status, and a sync now.

Pausing and resuming are critical actions (`erp.pause`, `erp.resume`): each writes its
audit row in the caller's transaction, with the actor and the reason. The stock changes
a sync makes are audited one by one by `orders.services.set_stock_level`
(`product.stock_adjust`, actor `system:erp`); the run row is the record of the sync.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from urllib.parse import urlsplit

from flask import current_app
from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from service.alerts.services import raise_signal
from service.audit.actor import Actor
from service.audit.registry import critical, not_critical, register_action
from service.audit.services import record
from service.clock import iso, utcnow
from service.erp.exceptions import InvalidReason
from service.erp.models import ErpSyncRun, ErpSyncState, RunStatus, Trigger
from service.extensions import db
from service.queues import outbox

STATE_ID = 1
ENTITY_TYPE = "erp_sync"
ENTITY_ID = "stock"

register_action(
    "erp.pause", entity_type=ENTITY_TYPE,
    description="The ERP stock sync paused: beat's runs and retries are skipped until resumed",
    entry_points=("flask erp pause", "POST /api/admin/erp/pause"))
register_action(
    "erp.resume", entity_type=ENTITY_TYPE,
    description="The ERP stock sync resumed after a pause",
    entry_points=("flask erp resume", "POST /api/admin/erp/resume"))


def _reason(reason: str | None, *, required: bool) -> str | None:
    text = (reason or "").strip()[:500]
    if required and not text:
        raise InvalidReason("say why the sync is paused (a reason is required)")
    return text or None


@not_critical("makes the single state row on first use; changes nothing")
def lock_state() -> ErpSyncState:
    """The pause flag's row, locked until the caller's commit (made on first use).

    Every start of a sync and every pause or resume takes this lock first, so they are
    applied one after the other: a run never starts on a pause it did not see.
    """
    insert = postgresql_insert if db.session.get_bind().dialect.name == "postgresql" \
        else sqlite_insert
    db.session.execute(insert(ErpSyncState).values(id=STATE_ID, paused=False,
                                                   updated_at=utcnow())
                       .on_conflict_do_nothing(index_elements=["id"]))
    return db.session.scalar(select(ErpSyncState).where(ErpSyncState.id == STATE_ID)
                             .with_for_update().execution_options(populate_existing=True))


@not_critical("reads only")
def pause_state() -> dict:
    """`{"paused": bool, "paused_at", "paused_by", "reason", "updated_at"}`."""
    state = db.session.get(ErpSyncState, STATE_ID)
    if state is None:
        return {"paused": False, "paused_at": None, "paused_by": None, "reason": None,
                "updated_at": None}
    return state.to_dict()


@critical("erp.pause")
def pause(*, actor: Actor, reason: str) -> tuple[dict, bool]:
    """Pause the sync; the caller commits. Returns (state, changed): pausing a paused sync
    changes nothing and writes no row. A run already fetching finishes; the next runs,
    and the retries of a failed one, are skipped and recorded as skipped."""
    reason = _reason(reason, required=True)
    state = lock_state()
    if state.paused:
        return state.to_dict(), False
    now = utcnow()
    before = state.to_dict()
    state.paused, state.paused_at, state.paused_by, state.reason = True, now, actor.label[:255], \
        reason
    state.updated_at = now
    db.session.flush()
    record(action="erp.pause", entity_type=ENTITY_TYPE, entity_id=ENTITY_ID, actor=actor,
           before={"paused": before["paused"]},
           after={"paused": True, "paused_at": iso(now)}, reason=reason)
    return state.to_dict(), True


@critical("erp.resume")
def resume(*, actor: Actor, reason: str | None = None) -> tuple[dict, bool]:
    """Resume a paused sync; the caller commits. Returns (state, changed). The next beat
    run (or `flask erp sync`) continues from the last successful run's mark."""
    reason = _reason(reason, required=False)
    state = lock_state()
    if not state.paused:
        return state.to_dict(), False
    before = {"paused": True, "paused_at": iso(state.paused_at), "paused_by": state.paused_by,
              "reason": state.reason}
    state.paused, state.paused_at, state.paused_by, state.reason = False, None, None, None
    state.updated_at = utcnow()
    db.session.flush()
    record(action="erp.resume", entity_type=ENTITY_TYPE, entity_id=ENTITY_ID, actor=actor,
           before=before, after={"paused": False}, reason=reason)
    return state.to_dict(), True


@not_critical("reads only")
def list_runs(*, limit: int = 10, status: str | tuple[str, ...] | None = None) -> list[dict]:
    """The latest runs, newest first; `status` one status or several."""
    query = select(ErpSyncRun).order_by(ErpSyncRun.id.desc()).limit(limit)
    if status is not None:
        query = query.where(ErpSyncRun.status.in_((status,) if isinstance(status, str) else status))
    return [run.to_dict() for run in db.session.scalars(query)]


@not_critical("reads only")
def last_success() -> ErpSyncRun | None:
    return db.session.scalar(select(ErpSyncRun).where(ErpSyncRun.status == RunStatus.SUCCEEDED)
                             .order_by(ErpSyncRun.id.desc()).limit(1))


@not_critical("reads only")
def status(*, limit: int = 10) -> dict:
    """Everything `flask erp status` and `GET /api/admin/erp` show: where the ERP is (host
    only), the pause flag, the next run's `since`, the last success and the latest runs."""
    cfg = current_app.config
    url = cfg.get("ERP_API_URL")
    success = last_success()
    pause = pause_state()
    runs = list_runs(limit=limit)
    finished = next((r for r in runs if r["status"] in (RunStatus.SUCCEEDED, RunStatus.FAILED)),
                    None)
    return {
        "configured": bool(url),
        "erp": _host_of(url),
        "interval_seconds": cfg["ERP_SYNC_INTERVAL_SECONDS"] if url else 0,
        "paused": pause["paused"],
        "pause": pause,
        "next_since": iso(success.high_water_mark) if success else None,
        "last_success": success.to_dict() if success else None,
        "last_finished_status": finished["status"] if finished else None,
        "running": [r["id"] for r in runs if r["status"] == RunStatus.RUNNING],
        "runs": runs,
    }


def _host_of(url: str | None) -> str | None:
    """The ERP's scheme, host and port: a URL may hold credentials, never shown."""
    if not url:
        return None
    parts = urlsplit(url)
    host = parts.hostname or ""
    return f"{parts.scheme}://{host}{f':{parts.port}' if parts.port else ''}"


@not_critical("its stock changes are audited one by one (product.stock_adjust, system:erp);"
              " the run row is the record of the sync")
def sync_now(*, trigger: str, actor: Actor, task_id: str | None = None,
             may_retry: bool = False, on_page: Callable[[dict], None] | None = None,
             now: Callable[[], datetime] = utcnow):
    """Run one sync here and now (see `service.erp.sync.run_sync`); commits its steps."""
    from service.erp.sync import run_sync

    return run_sync(trigger=trigger, actor=actor, task_id=task_id, may_retry=may_retry,
                    on_page=on_page, now=now)


SYNC_TASK = "erp.sync_stock"


@not_critical("queues a sync; what the sync changes is audited as it applies")
def enqueue_sync(*, trigger: str, actor: Actor) -> None:
    """Add a sync job for the erp workers to the current transaction; the caller commits
    and the relay publishes it (within RELAY_INTERVAL_SECONDS)."""
    if trigger not in Trigger.ALL:
        raise ValueError(f"trigger must be one of {Trigger.ALL}, got {trigger!r}")
    outbox.add_jobs([(SYNC_TASK, [trigger, actor.label])], queue="erp")


@not_critical("asks the ERP's /health with the configured token; changes nothing")
def check_health() -> dict:
    """Whether the ERP answers, with our token: {"ok", "detail", "error"}, where `error`
    is the exception class (`ErpCredentialsRejected` for a refused token, `ErpTimeout`,
    `ErpServerError`, `ErpNotConfigured`, ...). No transaction is needed around it."""
    from service.erp.client import HttpErpClient
    from service.erp.exceptions import ErpError

    try:
        with HttpErpClient.from_config(current_app.config) as client:
            answer = client.health()
    except ErpError as exc:
        return {"ok": False, "detail": str(exc), "error": type(exc).__name__}
    return {"ok": True, "detail": str(answer.get("status", "answered"))[:100], "error": None}


@not_critical("a symptom for the escalation policy; the signal row is its record")
def raise_sync_alert(*, title: str, details: dict) -> None:
    """Raise an `erp_sync_failed` signal (P2) in the caller's transaction; the ERP sync
    failing rule folds it into its incident (runbook `stock_sync_failure`)."""
    raise_signal(severity="P2", kind="erp_sync_failed", source="erp:stock",
                 details={"title": title[:200], **details})
