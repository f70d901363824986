"""Stock synchronisation with the ERP, on its own pausable `erp` queue.

`init_app` registers the tables, the `erp.sync_stock` task (its queue, retries and beat
entry), `flask erp`, the pause flag for queue health, the "ERP sync failing" alert rule
and the metrics.
"""

from flask import Flask

from service.celery_app import register
from service.metrics import register as register_metrics


class _ErpQueuePause:
    """Queue health's view of the pause flag."""

    def pause_state(self) -> dict | None:
        from service.erp.services import pause_state

        state = pause_state()
        return state if state["paused"] else None


def init_app(app: Flask) -> None:
    from service.alerts.rules import register_rule
    from service.erp import models, tasks  # noqa: F401  (tables and tasks)
    from service.erp.cli import cli
    from service.erp.metrics import SYNC_RUNS, ErpSyncCollector
    from service.erp.rules import ErpSyncFailingRule
    from service.queues.health import register_pause

    cfg = app.config
    app.cli.add_command(cli)
    register_metrics(app, SYNC_RUNS, ErpSyncCollector(app=app))
    register_pause(app, "erp", _ErpQueuePause())
    register_rule(app, ErpSyncFailingRule())
    interval = cfg["ERP_SYNC_INTERVAL_SECONDS"]
    # Without an ERP there is nothing to sync: no beat entry (`flask erp sync` says so).
    beat = {"erp-sync-stock": {"task": "erp.sync_stock", "schedule": interval,
                               "kwargs": {"trigger": "beat"},
                               "options": {"expires": interval}}} \
        if interval > 0 and cfg["ERP_API_URL"] else {}
    register(app, queue="erp", routes={"erp.*": "erp"}, beat=beat)
