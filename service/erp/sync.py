"""One ERP stock sync run: start, fetch page by page, apply, finish.

Each step is a transaction of its own, committed here (the point of this module): the
run row is committed before the ERP is asked anything, every page is fetched with no
transaction open (an HTTP call never holds row locks or a connection's transaction),
each product's change commits on its own (its stock, its adjustment and its audit row),
and the page's counts go to the run row after it. One product per transaction because
an audited change takes the audit chain's lock until its commit: a page in one
transaction would hold that lock, which every audited action waits for, while it locked
product after product, and a stock adjustment holding one of those products while
waiting for the chain would deadlock with it. A run that fails half-way keeps what it
applied: setting a level twice changes nothing the second time, and only a run that
succeeds moves the high-water mark the next run starts from.

Start, under the pause flag's row lock:
- paused: the run is recorded as skipped (a retry of a paused run too);
- another run is still `running` (a retry waiting, a slow ERP): skipped, so two syncs
  never interleave; one running for longer than ERP_SYNC_STALE_SECONDS is taken for
  dead (its worker was killed) and marked failed first;
- else the run starts from the last successful run's high-water mark (`since`), or
  continues its own row when it is a retry of the same task.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from flask import current_app
from sqlalchemy import select

from service.audit.actor import Actor
from service.clock import iso, utcnow
from service.erp import services
from service.erp.client import HttpErpClient, StockPage
from service.erp.exceptions import ErpError, ErpUnavailable
from service.erp.metrics import SYNC_RUNS
from service.erp.models import ErpSyncRun, RunStatus
from service.extensions import db
from service.orders import services as orders
from service.orders.exceptions import InvalidChange, ProductNotFound

log = logging.getLogger(__name__)

# Whoever asked for the sync, the stock changes are the ERP's.
ERP_ACTOR = Actor.system("erp")


@dataclass
class SyncOutcome:
    run: dict
    error: ErpError | None = None
    retry: bool = False  # a transient error, and the caller said it may try again

    @property
    def status(self) -> str:
        return self.run["status"]

    @property
    def unreachable(self) -> bool:
        return isinstance(self.error, ErpUnavailable)


@dataclass
class _Started:
    run_id: int
    since: datetime | None
    skipped: dict | None = None  # the skipped run, when it did not start


@dataclass
class _Progress:
    high_water_mark: datetime | None
    counts: dict = field(default_factory=lambda: dict.fromkeys(
        ("fetched", "applied", "unchanged", "rejected", "unknown_skus", "pages"), 0))


def run_sync(*, trigger: str, actor: Actor, task_id: str | None = None, may_retry: bool = False,
             on_page: Callable[[dict], None] | None = None,
             now: Callable[[], datetime] = utcnow, client_factory=None) -> SyncOutcome:
    """Run one sync (or one attempt of a task's sync) and record it; commits its steps, so
    call it with nothing pending in the session.

    Returns the run as recorded. ERP errors do not raise: the outcome carries them, with
    `retry` set when the error is transient and `may_retry` allowed it (the run then
    stays `running` for its retry). Anything else (the database failing) raises.
    """
    config = current_app.config
    started = _start(trigger=trigger, actor=actor, task_id=task_id, now=now())
    if started.skipped is not None:
        SYNC_RUNS.inc(status=RunStatus.SKIPPED)
        return SyncOutcome(run=started.skipped)
    progress = _Progress(high_water_mark=started.since)
    factory = client_factory or (lambda: HttpErpClient.from_config(config))
    try:
        with factory() as client:
            pages = client.stock_pages(since=started.since)
            while True:
                _outside_transaction()
                page = next(pages, None)
                if page is None:
                    break
                _apply_page(started.run_id, page, progress, trigger_actor=actor)
                if on_page is not None:
                    on_page({"page": page.number, **progress.counts})
    except ErpError as exc:
        db.session.rollback()
        retry = may_retry and isinstance(exc, ErpUnavailable)
        run = _finish(started.run_id, error=exc, retrying=retry, now=now())
        if not retry:
            SYNC_RUNS.inc(status=RunStatus.FAILED)
        log.warning("ERP sync run failed", extra={"run_id": started.run_id, "error": str(exc),
                                                  "retrying": retry})
        return SyncOutcome(run=run, error=exc, retry=retry)
    except BaseException as exc:
        db.session.rollback()
        _record_crash(started.run_id, exc, now=now())
        raise
    run = _finish(started.run_id, error=None, retrying=False, now=now())
    SYNC_RUNS.inc(status=RunStatus.SUCCEEDED)
    log.info("ERP sync run succeeded", extra={k: run[k] for k in (
        "id", "fetched", "applied", "unchanged", "unknown_skus", "pages")})
    return SyncOutcome(run=run)


def _outside_transaction() -> None:
    if db.session().in_transaction():
        raise RuntimeError("the ERP is never called inside a database transaction")


def _start(*, trigger: str, actor: Actor, task_id: str | None, now: datetime) -> _Started:
    state = services.lock_state()
    _expire_stale(now=now, keep_task=task_id)
    run = None
    if task_id:
        run = db.session.scalar(select(ErpSyncRun).where(
            ErpSyncRun.task_id == task_id, ErpSyncRun.status == RunStatus.RUNNING))
    if run is None:
        run = ErpSyncRun(trigger=trigger, actor=actor.label[:255], task_id=task_id,
                         started_at=now, status=RunStatus.RUNNING, attempts=0)
        db.session.add(run)
        db.session.flush()
    run.attempts += 1
    # The counts describe the attempt that ends the run; what an earlier attempt changed
    # stays in the audit trail (each row's reason names the run).
    run.fetched = run.applied = run.unchanged = run.rejected = run.unknown_skus = run.pages = 0
    run.unknown_sku_list = "[]"
    skip = None
    if state.paused:
        skip = (f"paused since {iso(state.paused_at)} by {state.paused_by}: "
                f"{state.reason or 'no reason given'}")
    else:
        busy = db.session.scalar(select(ErpSyncRun).where(
            ErpSyncRun.status == RunStatus.RUNNING, ErpSyncRun.id != run.id)
            .order_by(ErpSyncRun.id).limit(1))
        if busy is not None:
            skip = f"run {busy.id} (started {iso(busy.started_at)}) is still running"
    if skip is not None:
        run.status, run.finished_at, run.error = RunStatus.SKIPPED, now, skip[:500]
        db.session.commit()
        return _Started(run_id=run.id, since=None, skipped=run.to_dict())
    if run.attempts == 1:
        success = services.last_success()
        run.since = success.high_water_mark if success is not None else None
    run.high_water_mark = run.since
    db.session.flush()
    started = _Started(run_id=run.id, since=run.since)
    db.session.commit()
    return started


def _expire_stale(*, now: datetime, keep_task: str | None) -> None:
    """Runs `running` past ERP_SYNC_STALE_SECONDS lost their worker: mark them failed."""
    limit = now - timedelta(seconds=current_app.config["ERP_SYNC_STALE_SECONDS"])
    for run in db.session.scalars(select(ErpSyncRun).where(
            ErpSyncRun.status == RunStatus.RUNNING, ErpSyncRun.started_at < limit)):
        if keep_task is not None and run.task_id == keep_task:
            continue
        run.status, run.finished_at = RunStatus.FAILED, now
        run.error = (f"abandoned: still running {int((now - run.started_at).total_seconds())} s"
                     f" after its start (its worker stopped?)"
                     + (f"; last error: {run.error}" if run.error else ""))[:500]


def _apply_page(run_id: int, page: StockPage, progress: _Progress, *, trigger_actor: Actor) -> None:
    """Set each known SKU's stock to the ERP's count, a product per transaction, then add
    the page to the run's counts. Unknown SKUs are counted and listed, not an error; a
    count below zero (a backorder in the ERP) sets the stock to 0."""
    counts = progress.counts
    unknown: list[str] = []
    for item in page.items:
        quantity = max(item.quantity, 0)
        reason = (f"ERP stock sync run {run_id} ({trigger_actor.label}): ERP count "
                  f"{item.quantity}" + (" taken as 0" if item.quantity < 0 else ""))
        try:
            outcome = orders.set_stock_level(sku=item.sku, quantity=quantity, reason=reason,
                                             actor=ERP_ACTOR)
            db.session.commit()
        except ProductNotFound:
            db.session.rollback()
            unknown.append(item.sku)
        except InvalidChange:
            db.session.rollback()
            counts["rejected"] += 1  # a jump beyond what one adjustment may do
        else:
            counts["applied" if outcome.changed else "unchanged"] += 1
        if progress.high_water_mark is None or item.updated_at > progress.high_water_mark:
            progress.high_water_mark = item.updated_at
    counts["fetched"] += len(page.items)
    counts["pages"] += 1
    counts["unknown_skus"] += len(unknown)
    run = db.session.get(ErpSyncRun, run_id)
    for name in ("fetched", "applied", "unchanged", "rejected", "pages"):
        setattr(run, name, counts[name])
    run.note_unknown(unknown)
    run.high_water_mark = progress.high_water_mark
    db.session.commit()


def _finish(run_id: int, *, error: ErpError | None, retrying: bool, now: datetime) -> dict:
    """The run's end (or, `retrying`, the failed attempt's error while it waits)."""
    run = db.session.get(ErpSyncRun, run_id)
    if error is None:
        run.status, run.finished_at, run.error = RunStatus.SUCCEEDED, now, None
    elif retrying:
        run.error = f"attempt {run.attempts} failed, retrying: {error}"[:500]
    else:
        run.status, run.finished_at = RunStatus.FAILED, now
        run.error = (f"{error} (attempt {run.attempts})" if run.attempts > 1 else str(error))[:500]
    result = run.to_dict()
    db.session.commit()
    return result


def _record_crash(run_id: int, exc: BaseException, *, now: datetime) -> None:
    """Best effort: mark the run failed with the error's class (its message may hold SQL
    parameters or worse); if even that fails, the stale-run rule marks it later."""
    try:
        run = db.session.get(ErpSyncRun, run_id)
        run.status, run.finished_at = RunStatus.FAILED, now
        run.error = f"{type(exc).__name__}: the sync stopped on an internal error"
        db.session.commit()
        SYNC_RUNS.inc(status=RunStatus.FAILED)
    except Exception:
        db.session.rollback()
