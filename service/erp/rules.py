"""The escalation policy's "ERP sync failing" rule (P2, runbook `stock_sync_failure`),
registered by this domain's `init_app` (`service.alerts.rules.register_rule`).

It reads the run records, the one source of truth about the sync; the sync itself
raises no signal. Signals of kind `erp_sync_failed` (a runbook that pauses the sync and
alerts, say) are folded into this rule's incident rather than opening one of their own.
A pause silences the staleness check, so a sync paused because it failed (such a signal
raised since the pause) holds the condition on its own until it is resumed: the pause
never hides a failing ERP from the responders.
"""

from __future__ import annotations

import json

from sqlalchemy import func, select

from service.alerts.rules import STOCK_RUNBOOK, BaseRule, Finding, RuleContext
from service.alerts.services import latest_signal
from service.clock import iso
from service.erp.models import ErpSyncRun, ErpSyncState, RunStatus
from service.extensions import db


class ErpSyncFailingRule(BaseRule):
    name = "erp_sync_failing"
    severity = "P2"
    runbook = STOCK_RUNBOOK
    signal_kinds = ("erp_sync_failed",)

    @property
    def summary(self) -> str:
        return ("the last ERP_ALERT_FAILED_RUNS ERP stock syncs failed, or none succeeded "
                "for ERP_ALERT_STALE_SECONDS while the sync is scheduled and not paused")

    def evaluate(self, ctx: RuleContext) -> list[Finding]:
        cfg = ctx.config
        if not cfg.get("ERP_API_URL"):
            return []
        streak = cfg["ERP_ALERT_FAILED_RUNS"]
        resolved = ctx.resolved_at(self.key())
        finished = select(ErpSyncRun).where(
            ErpSyncRun.status.in_((RunStatus.SUCCEEDED, RunStatus.FAILED)),
            ErpSyncRun.finished_at <= ctx.now)
        if resolved is not None:
            # What a responder resolved does not reopen the incident on its own.
            finished = finished.where(ErpSyncRun.finished_at > resolved)
        latest = db.session.scalars(finished.order_by(ErpSyncRun.finished_at.desc(),
                                                      ErpSyncRun.id.desc()).limit(streak)).all()
        last_success_at = db.session.scalar(
            select(func.max(ErpSyncRun.finished_at)).where(
                ErpSyncRun.status == RunStatus.SUCCEEDED, ErpSyncRun.finished_at <= ctx.now))
        state = db.session.get(ErpSyncState, 1)
        paused = bool(state and state.paused)
        details = {"last_success_at": iso(last_success_at), "paused": paused,
                   "failed_runs_threshold": streak,
                   "stale_seconds_threshold": cfg["ERP_ALERT_STALE_SECONDS"],
                   "latest_runs": [{"id": r.id, "status": r.status, "error": r.error,
                                    "finished_at": iso(r.finished_at)} for r in latest]}
        if streak > 0 and len(latest) == streak and \
                all(r.status == RunStatus.FAILED for r in latest):
            return [Finding(
                title=(f"ERP sync failing: the last {streak} runs failed (latest: "
                       f"{latest[0].error or 'no error recorded'})")[:255],
                details=details, since=latest[-1].started_at)]
        alert = self._paused_for_failure(ctx, state)
        if alert is not None:
            title = json.loads(alert["details"] or "{}").get("title")
            return [Finding(title=(title or "ERP sync paused after a failure")[:255],
                            details={**details, "paused_at": iso(state.paused_at),
                                     "paused_by": state.paused_by},
                            since=state.paused_at)]
        stale = self._stale_since(ctx, last_success_at, paused)
        if stale is not None:
            minutes = int((ctx.now - stale).total_seconds() // 60)
            return [Finding(title=f"ERP sync failing: no successful sync for {minutes} min",
                            details=details, since=stale)]
        return []

    def _paused_for_failure(self, ctx: RuleContext, state: ErpSyncState | None):
        """The latest `erp_sync_failed` signal raised since the sync was paused (and since
        a responder last resolved the incident), or None."""
        if state is None or not state.paused or state.paused_at is None:
            return None
        since = state.paused_at
        resolved = ctx.resolved_at(self.key())
        if resolved is not None and resolved > since:
            since = resolved
        return latest_signal(self.signal_kinds, since=since, until=ctx.now)

    def _stale_since(self, ctx: RuleContext, last_success_at, paused: bool):
        """When the sync went stale, or None: a paused sync, or one beat does not run, is
        expected to be behind."""
        cfg = ctx.config
        if paused or cfg["ERP_SYNC_INTERVAL_SECONDS"] <= 0 or cfg["ERP_ALERT_STALE_SECONDS"] <= 0:
            return None
        baseline = last_success_at or db.session.scalar(
            select(func.min(ErpSyncRun.started_at)).where(ErpSyncRun.started_at <= ctx.now))
        if baseline is None:
            return None
        resolved = ctx.resolved_at(self.key())
        if resolved is not None and resolved > baseline:
            baseline = resolved
        if (ctx.now - baseline).total_seconds() <= cfg["ERP_ALERT_STALE_SECONDS"]:
            return None
        return baseline
