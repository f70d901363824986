"""The queue overload and ERP stock sync runbooks: a dry run finds the deep queue or the
failing ERP and changes nothing; execute runs scale the workers, pause the sync and alert,
then resume and re-run it once the ERP answers again."""

from __future__ import annotations

import json
import time
import uuid
from datetime import timedelta

from service.audit.actor import Actor
from service.clock import utcnow
from service.erp import services as erp
from service.erp.models import ErpSyncRun, RunStatus
from service.extensions import db
from service.queues.depth import ENQUEUED_AT_HEADER
from service.queues.samples import record_samples
from tests.integration.runbooks.conftest import run_runbook
from tests.support.alerting import evaluate_at, incidents
from tests.support.db import rows, scalar
from tests.support.erp import add_products, erp_items, erp_settings, standin, stock_of  # noqa: F401


def _flood(redis, queue: str, count: int, *, waited: float) -> None:
    """`count` messages on `queue`, the oldest enqueued `waited` seconds ago (no worker
    consumes `queue` in this test)."""
    stamp = time.time() - waited
    pipe = redis.pipeline()
    for _ in range(count):
        pipe.lpush(queue, json.dumps({"headers": {ENQUEUED_AT_HEADER: stamp, "id": uuid.uuid4().hex},
                                      "body": ""}))
    pipe.execute()


def _skipped_runs(count: int) -> None:
    at = utcnow()
    db.session.add_all(ErpSyncRun(trigger="beat", actor="system:erp", status=RunStatus.SKIPPED,
                                  started_at=at, finished_at=at) for _ in range(count))
    db.session.commit()


def _env(monkeypatch, settings: dict) -> None:
    """Settings for the notebook's kernel, which builds its app from the environment."""
    for key, value in settings.items():
        monkeypatch.setenv(key, str(value))


def test_queue_runbook_finds_the_deep_queue_and_execute_scales_its_workers(
        clean, build_app, tmp_path, supervisor, monkeypatch):
    settings = {**supervisor.settings(), "QUEUE_DEPTH_ALERT": 50,
                "RUNBOOK_OUTPUT_DIR": str(tmp_path / "runs")}
    _env(monkeypatch, settings)
    app = build_app(settings)
    with app.app_context():
        _flood(app.extensions["redis"], "erp", 120, waited=30)
        record_samples()
        db.session.commit()

    code, dry = run_runbook(app, "queue_overload", "-p", "max_workers", "4")

    summary = dry["summary"]
    assert (code, dry["status"]) == (1, "problem"), dry
    assert summary["parameters"]["queue"] == "erp"  # the deepest queue, found by itself
    assert summary["figures"]["depth"] == 120 and summary["figures"]["workers_now"] == 0
    assert summary["decision"] == "scale erp from 0 to 2 worker processes"
    assert supervisor.running("erp") == []

    code, done = run_runbook(app, "queue_overload", "-p", "queue", "erp", "-p", "workers", "3",
                             "--execute")

    assert (code, done["status"]) == (0, "ok"), done
    assert done["summary"]["next_steps"] == [
        "once the backlog has cleared: flask runbook run queue_overload -p queue erp "
        "-p baseline_workers 0 --execute"]
    assert done["summary"]["actions"] == [{"action": "workers.scale", "queue": "erp", "before": 0,
                                           "after": 3, "layout": "supervisord", "changed": True}]
    assert supervisor.running("erp") == [f"racine-worker-erp-0{n}" for n in (1, 2, 3)]
    with app.app_context():
        assert [json.loads(r["metadata"])["after"] for r in rows(
            "SELECT metadata FROM audit_logs WHERE action = 'workers.scale' ORDER BY id")] == \
            [{"workers": 3}]

    # The backlog clears: the same runbook scales back down to the baseline.
    app.extensions["redis"].delete("erp")
    code, down = run_runbook(app, "queue_overload", "-p", "queue", "erp",
                             "-p", "baseline_workers", "1", "--execute")

    assert (code, down["summary"]["problem"]) == (0, False)
    assert down["summary"]["actions"][0]["after"] == 1
    assert supervisor.running("erp") == ["racine-worker-erp-01"]


def test_stock_runbook_pauses_a_sync_the_erp_refuses_then_resumes_and_reruns_it(
        clean, build_app, tmp_path, standin, monkeypatch):  # noqa: F811
    # The rule's own streak needs 5 failures here: the incident after the pause below comes
    # from the pause itself.
    refused = erp_settings(standin, ERP_API_TOKEN="wrong-token", ERP_ALERT_FAILED_RUNS=5,
                           RUNBOOK_OUTPUT_DIR=str(tmp_path / "runs"))
    _env(monkeypatch, refused)
    app = build_app(refused)
    with app.app_context():
        add_products(("SKU-A", 5), ("SKU-B", 7))
        erp_items(standin, {"SKU-A": 11, "SKU-B": 7})
        for _ in range(3):
            assert erp.sync_now(trigger="cli", actor=Actor.cli()).status == "failed"
        # Then more skipped runs than the runbook shows (a pause, since lifted): they do not
        # break the failed streak.
        _skipped_runs(12)

    code, dry = run_runbook(app, "stock_sync_failure")

    summary = dry["summary"]
    assert (code, dry["status"]) == (1, "problem"), dry
    assert summary["figures"]["failed_in_a_row"] == 3
    assert summary["figures"]["erp_health"]["error"] == "ErpCredentialsRejected"
    assert summary["planned"][0].startswith("pause the ERP sync")
    with app.app_context():
        assert erp.pause_state()["paused"] is False
        assert scalar("SELECT count(*) FROM alert_signals") == 0

    code, paused = run_runbook(app, "stock_sync_failure", "--execute")

    # Paused and alerted, but the ERP side still needs a person: not fixed, exit 1.
    assert (code, paused["status"]) == (1, "problem")
    assert [a["action"] for a in paused["summary"]["actions"]] == \
        ["erp.pause", "raised erp_sync_failed alert"]
    with app.app_context():
        db.session.remove()
        assert erp.pause_state()["paused"] is True
        assert [r["kind"] for r in rows("SELECT kind FROM alert_signals")] == ["erp_sync_failed"]
        assert scalar("SELECT count(*) FROM audit_logs WHERE action = 'erp.pause'") == 1
        # Responders are told: the paused-for-a-failure sync opens the P2 incident.
        now = utcnow()
        evaluate_at(now + timedelta(seconds=1))
        evaluate_at(now + timedelta(seconds=125))
        [incident] = incidents(rule="erp_sync_failing")
        assert (incident["status"], incident["severity"], incident["signal_count"]) == \
            ("open", "P2", 1)

    # The token is fixed: the runbook resumes the sync and re-runs it.
    fixed = erp_settings(standin, RUNBOOK_OUTPUT_DIR=str(tmp_path / "runs"))
    _env(monkeypatch, fixed)
    app = build_app(fixed)
    code, rerun = run_runbook(app, "stock_sync_failure", "--execute")

    assert (code, rerun["status"]) == (0, "ok"), rerun
    actions = rerun["summary"]["actions"]
    assert [a["action"] for a in actions] == ["erp.resume", "erp sync re-run"]
    assert (actions[1]["status"], actions[1]["applied"]) == ("succeeded", 1)
    with app.app_context():
        assert stock_of("SKU-A") == 11
        assert erp.pause_state()["paused"] is False
        assert scalar("SELECT count(*) FROM runbook_runs WHERE execute") == 2


def test_stock_runbook_finds_a_sync_that_stopped_succeeding_and_reruns_it(
        clean, build_app, tmp_path, standin, monkeypatch):  # noqa: F811
    """The alert's other trigger: no success for 30 min, no failure either (the runs stuck
    or never started). The ERP answers: the runbook finds it and re-runs the sync."""
    settings = erp_settings(standin, RUNBOOK_OUTPUT_DIR=str(tmp_path / "runs"))
    _env(monkeypatch, settings)
    app = build_app(settings)
    with app.app_context():
        add_products(("SKU-A", 5))
        erp_items(standin, {"SKU-A": 9})
        long_ago = utcnow() - timedelta(hours=2)
        db.session.add_all([
            ErpSyncRun(trigger="beat", actor="system:erp", status=RunStatus.SUCCEEDED,
                       started_at=long_ago, finished_at=long_ago),
            ErpSyncRun(trigger="beat", actor="system:erp", status=RunStatus.RUNNING,
                       started_at=long_ago + timedelta(minutes=5))])
        db.session.commit()

    code, dry = run_runbook(app, "stock_sync_failure")

    assert (code, dry["status"]) == (1, "problem"), dry
    assert dry["summary"]["figures"]["stale"] is True
    assert dry["summary"]["figures"]["failed_in_a_row"] == 0
    assert dry["summary"]["findings"][0]["finding"].startswith(
        "no successful ERP sync for more than 30m")
    assert dry["summary"]["planned"] == ["re-run the sync now"]

    code, done = run_runbook(app, "stock_sync_failure", "--execute")

    assert (code, done["status"]) == (0, "ok"), done
    assert [a["action"] for a in done["summary"]["actions"]] == ["erp sync re-run"]
    with app.app_context():
        assert stock_of("SKU-A") == 9
