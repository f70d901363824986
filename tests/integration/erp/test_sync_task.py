"""`erp.sync_stock` on a real Celery worker consuming the `erp` queue: transient errors
(500, a read timeout) are retried with backoff and continue the same run row; a refused
token is not retried; retries run out into a failed run; a paused sync is skipped; the
admin API's sync runs with its caller as the run's actor."""

from __future__ import annotations

import pytest

from scripts.erp_standin import ErpStandIn
from service.audit.actor import Actor
from service.erp import services
from service.erp.models import RunStatus
from service.extensions import db
from service.queues.outbox import relay_outbox
from tests.support.admin import caller
from tests.support.db import rows
from tests.support.erp import TOKEN, add_products, erp_items, erp_settings, stock_of
from tests.support.processes import start_worker
from tests.support.waiting import wait_until

MAX_RETRIES = 2


@pytest.fixture(scope="module")
def module_standin():
    server = ErpStandIn(token=TOKEN, slow_seconds=3.0).start()
    yield server
    server.stop()


def _worker_settings(standin) -> dict[str, str]:
    return {key: str(value) for key, value in {
        **erp_settings(standin), "ERP_SYNC_MAX_RETRIES": MAX_RETRIES,
        "ERP_SYNC_RETRY_BACKOFF": 0.2, "ERP_SYNC_RETRY_JITTER": "false",
        "ERP_SYNC_INTERVAL_SECONDS": 0}.items()}


@pytest.fixture(scope="module")
def erp_worker(service_env, module_standin, tmp_path_factory):
    proc = start_worker(tmp_path_factory.mktemp("erp-worker"), queues="erp", concurrency=1,
                        beat=False, name="erp", env=_worker_settings(module_standin))
    yield proc
    proc.stop()


@pytest.fixture
def erp(clean, module_standin, erp_worker, monkeypatch):
    module_standin.reset()
    for key, value in erp_settings(module_standin).items():
        monkeypatch.setitem(clean.config, key, value)
    with clean.app_context():
        yield clean
        db.session.rollback()
        db.session.remove()


TESTS = Actor.system("tests")


def _enqueue() -> None:
    services.enqueue_sync(trigger="runbook", actor=TESTS)
    db.session.commit()
    _relay()


def _relay() -> None:
    assert relay_outbox().published == 1
    db.session.commit()


def _finished_run(worker, timeout: float = 60.0) -> dict:
    def finished():
        found = rows("SELECT * FROM erp_sync_runs WHERE status <> 'running' ORDER BY id")
        return found[-1] if found else None
    return wait_until(finished, timeout, "a finished ERP sync run", logs=[worker])


def test_a_500_is_retried_with_backoff_and_the_same_run_succeeds(erp, module_standin, erp_worker):
    add_products(("SKU-A", 1))
    erp_items(module_standin, {"SKU-A": 9})
    module_standin.fail_next("500", times=2)

    _enqueue()
    run = _finished_run(erp_worker)

    assert (run["status"], run["attempts"], run["applied"]) == (RunStatus.SUCCEEDED, 3, 1)
    assert (run["trigger"], run["actor"]) == ("runbook", "system:tests")
    assert len(rows("SELECT id FROM erp_sync_runs")) == 1
    assert stock_of("SKU-A") == 9


def test_a_read_timeout_is_retried(erp, module_standin, erp_worker):
    add_products(("SKU-A", 1))
    erp_items(module_standin, {"SKU-A": 2})
    module_standin.fail_next("slow")

    _enqueue()
    run = _finished_run(erp_worker)

    assert (run["status"], run["attempts"], stock_of("SKU-A")) == (RunStatus.SUCCEEDED, 2, 2)


def test_a_refused_token_fails_the_run_at_once(erp, module_standin, erp_worker):
    module_standin.fail_next("401", times=5)

    _enqueue()
    run = _finished_run(erp_worker)

    assert (run["status"], run["attempts"]) == (RunStatus.FAILED, 1)
    assert "answered 401" in run["error"]
    assert len([r for r in module_standin.requests if r["path"] == "/stock"]) == 1
    erp_worker.wait_for_log("SyncFailed")


def test_retries_run_out_into_a_failed_run(erp, module_standin, erp_worker):
    module_standin.fail_next("503", times=MAX_RETRIES + 5)

    _enqueue()
    run = _finished_run(erp_worker)

    assert (run["status"], run["attempts"]) == (RunStatus.FAILED, MAX_RETRIES + 1)
    assert run["error"] == f"ERP /stock answered 503 (attempt {MAX_RETRIES + 1})"


def test_a_paused_sync_is_skipped_by_the_worker(erp, module_standin, erp_worker):
    services.pause(actor=TESTS, reason="ERP maintenance")
    db.session.commit()

    _enqueue()
    run = _finished_run(erp_worker)

    assert run["status"] == RunStatus.SKIPPED and "ERP maintenance" in run["error"]
    assert module_standin.requests == []


def test_the_admin_api_sync_runs_on_the_worker_as_its_caller(erp, module_standin, erp_worker):
    add_products(("SKU-A", 1))
    erp_items(module_standin, {"SKU-A": 4})
    who = caller(erp, "operator", email="stock-lead@x.test")

    response = who.post("/api/admin/erp/sync")
    assert response.status_code == 202, response.get_json()
    _relay()
    run = _finished_run(erp_worker)

    assert (run["status"], run["trigger"], run["actor"]) == (RunStatus.SUCCEEDED, "api",
                                                             "user:stock-lead@x.test")
    [log] = rows("SELECT actor, reason FROM audit_logs WHERE action = 'product.stock_adjust'")
    assert log["actor"] == "system:erp" and "(user:stock-lead@x.test)" in log["reason"]
