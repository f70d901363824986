"""The ERP stock sync against the local stand-in and a real PostgreSQL: stock applied
through the audited stock path, unknown SKUs reported, pages followed, incremental runs,
pause and resume, overlapping and abandoned runs, and `flask erp` with its exit codes."""

from __future__ import annotations

import json
import threading
from datetime import datetime, timedelta

import pytest
from sqlalchemy import text

from service.audit.actor import Actor
from service.audit.services import CHAIN_LOCK_KEY
from service.clock import utcnow
from service.erp import services
from service.erp.models import ErpSyncRun, RunStatus
from service.extensions import db
from tests.support.db import rows, scalar
from tests.support.erp import add_products, erp_items, stock_of, stock_requests
from tests.support.waiting import wait_until

AT = datetime(2026, 3, 1, 12, 0, 0)
OPERATOR = Actor(label="cli:ops")


def _sync(**kwargs):
    return services.sync_now(trigger="cli", actor=OPERATOR, **kwargs)


@pytest.fixture
def erp(erp_app):
    with erp_app.app_context():
        yield erp_app
        db.session.rollback()
        db.session.remove()


def _cli(app, *args):
    with app.app_context():
        return app.test_cli_runner().invoke(args=["erp", *args])


def test_a_sync_sets_stock_to_the_erp_counts_with_one_audit_row_per_change(erp, standin):
    ids = add_products(("SKU-A", 10), ("SKU-B", 5), ("SKU-C", 7))
    erp_items(standin, {"SKU-A": 4, "SKU-B": 5, "SKU-C": 30}, at=AT)

    outcome = _sync()

    run = outcome.run
    assert (run["status"], run["fetched"], run["applied"], run["unchanged"]) == (
        RunStatus.SUCCEEDED, 3, 2, 1)
    assert (stock_of("SKU-A"), stock_of("SKU-B"), stock_of("SKU-C")) == (4, 5, 30)
    logs = rows("SELECT entity_id, actor, metadata, reason FROM audit_logs"
                " WHERE action = 'product.stock_adjust' ORDER BY id")
    assert [(log["entity_id"], log["actor"]) for log in logs] == [
        (str(ids["SKU-A"]), "system:erp"), (str(ids["SKU-C"]), "system:erp")]
    first = json.loads(logs[0]["metadata"])
    assert (first["before"], first["after"], first["delta"]) == ({"stock": 10}, {"stock": 4}, -6)
    assert f"run {run['id']} (cli:ops)" in logs[0]["reason"]
    assert scalar("SELECT count(*) FROM stock_adjustments") == 2
    assert (run["trigger"], run["actor"], run["high_water_mark"]) == ("cli", "cli:ops",
                                                                      "2026-03-01T12:00:00Z")


def test_unknown_skus_are_counted_and_listed_not_an_error(erp, standin):
    add_products(("SKU-A", 1))
    erp_items(standin, {"SKU-A": 2, **{f"GHOST-{n:03d}": n for n in range(60)}}, at=AT)

    run = _sync().run

    assert run["status"] == RunStatus.SUCCEEDED and run["error"] is None
    assert (run["applied"], run["unknown_skus"]) == (1, 60)
    assert run["unknown_sku_list"] == [f"GHOST-{n:03d}" for n in range(50)]  # capped
    assert stock_of("SKU-A") == 2


def test_a_count_below_zero_sets_the_stock_to_zero_never_below(erp, standin):
    add_products(("SKU-A", 8))
    erp_items(standin, {"SKU-A": -3}, at=AT)

    run = _sync().run

    assert (run["status"], run["applied"], stock_of("SKU-A")) == (RunStatus.SUCCEEDED, 1, 0)
    [log] = rows("SELECT reason FROM audit_logs WHERE action = 'product.stock_adjust'")
    assert "ERP count -3 taken as 0" in log["reason"]


def test_every_page_is_fetched_and_applied(erp, standin, monkeypatch):
    monkeypatch.setitem(erp.config, "ERP_PAGE_SIZE", 2)
    add_products(*[(f"SKU-{n}", 0) for n in range(5)])
    erp_items(standin, {f"SKU-{n}": n + 1 for n in range(5)}, at=AT)
    pages = []

    run = _sync(on_page=pages.append).run

    assert (run["pages"], run["fetched"], run["applied"]) == (3, 5, 5)
    assert [p["page"] for p in pages] == [1, 2, 3]
    assert [q["page"] for q in stock_requests(standin)] == ["1", "2", "3"]
    assert [stock_of(f"SKU-{n}") for n in range(5)] == [1, 2, 3, 4, 5]


def test_the_next_run_asks_only_for_changes_since_the_last_successful_mark(erp, standin):
    """`since` is inclusive (a change at the mark itself is not lost; asked again, it
    changes nothing)."""
    add_products(("SKU-A", 0), ("SKU-B", 0))
    erp_items(standin, {"SKU-A": 1}, at=AT - timedelta(minutes=1))
    erp_items(standin, {"SKU-B": 2}, at=AT)
    first = _sync().run
    erp_items(standin, {"SKU-B": 9}, at=AT + timedelta(minutes=5))
    standin.requests.clear()

    second = _sync().run

    assert stock_requests(standin)[0]["since"] == "2026-03-01T12:00:00Z"
    assert (second["since"], second["fetched"], second["applied"]) == (first["high_water_mark"],
                                                                       1, 1)
    assert second["high_water_mark"] == "2026-03-01T12:05:00Z"
    assert stock_of("SKU-B") == 9


def test_a_failed_run_does_not_move_the_mark(erp, standin):
    add_products(("SKU-A", 0))
    erp_items(standin, {"SKU-A": 1}, at=AT)
    _sync()
    erp_items(standin, {"SKU-A": 2}, at=AT + timedelta(minutes=5))
    standin.fail_next("500")

    failed = _sync()
    retried = _sync()

    assert (failed.status, failed.unreachable, failed.retry) == (RunStatus.FAILED, True, False)
    assert failed.run["error"] == "ERP /stock answered 500"
    assert retried.run["since"] == "2026-03-01T12:00:00Z"
    assert (retried.status, stock_of("SKU-A")) == (RunStatus.SUCCEEDED, 2)


def test_a_repeated_sync_changes_nothing_the_second_time(erp, standin):
    add_products(("SKU-A", 3))
    erp_items(standin, {"SKU-A": 6}, at=AT)
    _sync()
    db.session.execute(db.update(ErpSyncRun).values(status=RunStatus.FAILED))  # from scratch
    db.session.commit()

    again = _sync().run

    assert again["since"] is None and (again["applied"], again["unchanged"]) == (0, 1)
    assert scalar("SELECT count(*) FROM audit_logs WHERE action = 'product.stock_adjust'") == 1


def test_a_paused_sync_is_skipped_and_recorded_without_asking_the_erp(erp, standin):
    add_products(("SKU-A", 3))
    erp_items(standin, {"SKU-A": 6}, at=AT)
    services.pause(actor=OPERATOR, reason="ERP maintenance")
    db.session.commit()

    skipped = _sync().run

    assert skipped["status"] == RunStatus.SKIPPED
    assert "paused" in skipped["error"] and "cli:ops: ERP maintenance" in skipped["error"]
    assert standin.requests == [] and stock_of("SKU-A") == 3

    state, changed = services.resume(actor=OPERATOR, reason="ERP back")
    db.session.commit()
    resumed = _sync().run

    assert changed and not state["paused"]
    assert (resumed["status"], stock_of("SKU-A")) == (RunStatus.SUCCEEDED, 6)


def test_pause_and_resume_are_audited_once_and_idempotent(erp):
    assert services.pause(actor=OPERATOR, reason="why")[1] is True
    db.session.commit()
    state, changed = services.pause(actor=OPERATOR, reason="again")
    db.session.commit()

    assert changed is False and state["reason"] == "why" and state["paused_by"] == "cli:ops"
    assert services.resume(actor=OPERATOR)[1] is True
    assert services.resume(actor=OPERATOR)[1] is False
    db.session.commit()
    logs = rows("SELECT action, entity_type, entity_id, actor, reason FROM audit_logs ORDER BY id")
    assert [(r["action"], r["entity_type"], r["entity_id"], r["actor"]) for r in logs] == [
        ("erp.pause", "erp_sync", "stock", "cli:ops"), ("erp.resume", "erp_sync", "stock",
                                                         "cli:ops")]


def test_a_sync_while_another_runs_is_skipped(erp, standin):
    db.session.add(ErpSyncRun(trigger="beat", actor="system:erp", status=RunStatus.RUNNING,
                              started_at=utcnow() - timedelta(seconds=30)))
    db.session.commit()

    run = _sync().run

    assert run["status"] == RunStatus.SKIPPED and "is still running" in run["error"]
    assert standin.requests == []


def test_a_run_left_running_past_the_stale_limit_is_failed_and_no_longer_blocks(erp, standin):
    add_products(("SKU-A", 0))
    erp_items(standin, {"SKU-A": 1}, at=AT)
    db.session.add(ErpSyncRun(trigger="beat", actor="system:erp", status=RunStatus.RUNNING,
                              started_at=utcnow() - timedelta(hours=1), error="ERP /stock answered 500"))
    db.session.commit()

    run = _sync().run

    assert run["status"] == RunStatus.SUCCEEDED
    [old] = rows("SELECT status, error, finished_at FROM erp_sync_runs WHERE id <> :i", i=run["id"])
    assert old["status"] == RunStatus.FAILED and old["finished_at"] is not None
    assert old["error"].startswith("abandoned") and "answered 500" in old["error"]


def test_cli_sync_exit_codes_say_what_happened(erp, standin):
    add_products(("SKU-A", 0))
    erp_items(standin, {"SKU-A": 5, "GHOST": 1}, at=AT)

    ok = _cli(erp, "sync")
    assert ok.exit_code == 0, ok.output
    assert "succeeded" in ok.output and "unknown: GHOST" in ok.output
    assert "page 1: fetched 2" in ok.output  # progress (stderr, mixed in by the runner)

    standin.fail_next("401")
    refused = _cli(erp, "sync", "--json")
    assert refused.exit_code == 1
    assert "ERP_API_TOKEN" in refused.output

    standin.fail_next("500")
    assert _cli(erp, "sync").exit_code == 2

    assert _cli(erp, "pause", "--reason", "maintenance").exit_code == 0
    paused = _cli(erp, "sync")
    assert paused.exit_code == 3 and "skipped" in paused.output


def test_cli_status_shows_the_pause_and_the_runs(erp, standin):
    add_products(("SKU-A", 0))
    erp_items(standin, {"SKU-A": 5}, at=AT)
    _sync()
    _cli(erp, "pause", "--reason", "ERP upgrade tonight")
    standin.fail_next("500")

    report = _cli(erp, "status", "--json", "--check")
    text = _cli(erp, "status")

    assert report.exit_code == 2  # the --check met the 500
    data = json.loads(report.output)
    assert data["paused"] is True and data["pause"]["reason"] == "ERP upgrade tonight"
    assert data["pause"]["paused_by"].startswith("cli:")
    assert data["health"]["ok"] is False and "500" in data["health"]["detail"]
    assert data["next_since"] == "2026-03-01T12:00:00Z"
    assert [r["status"] for r in data["runs"]] == ["succeeded"]
    assert data["erp"] == standin.url
    assert text.exit_code == 0
    assert "PAUSED since" in text.output and "ERP upgrade tonight" in text.output


def test_cli_status_exit_code_is_one_after_a_failed_run(erp, standin):
    standin.fail_next("malformed")

    assert _cli(erp, "sync").exit_code == 1
    assert _cli(erp, "status").exit_code == 1
    assert _cli(erp, "resume", "--json").exit_code == 0


def test_cli_sync_without_an_erp_says_so(clean):
    result = _cli(clean, "sync")

    assert result.exit_code == 2 and "ERP_API_URL is not set" in result.output


def test_cli_sync_enqueue_leaves_a_job_for_the_erp_queue(erp):
    result = _cli(erp, "sync", "--enqueue")

    assert result.exit_code == 0, result.output
    [job] = rows("SELECT task_name, queue, args FROM outbox_jobs")
    assert (job["task_name"], job["queue"]) == ("erp.sync_stock", "erp")
    assert json.loads(job["args"])[0] == "cli"


def test_each_product_commits_alone_so_the_audit_chain_is_never_held_across_products(erp, standin):
    """A stock adjustment holding product B while it waits for the audit chain must not
    deadlock with the sync: by the time the sync waits for B, it holds no chain lock
    (A's change, audit row included, is committed)."""
    add_products(("SKU-A", 1), ("SKU-B", 1))
    erp_items(standin, {"SKU-A": 2, "SKU-B": 3}, at=AT)
    outcome = {}
    with db.engine.connect() as other:
        other.execute(text("SET lock_timeout = '10s'"))
        other.execute(text("SELECT id FROM products WHERE sku = 'SKU-B' FOR UPDATE"))
        sync = threading.Thread(target=_sync_in_thread, args=(erp, outcome))
        sync.start()
        wait_until(lambda: stock_of("SKU-A") == 2, 30, "SKU-A's change committed on its own")
        # What adjust_stock does next while holding B: take the chain. The sync waits on B.
        other.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": CHAIN_LOCK_KEY})
        other.rollback()
        sync.join(30)

    assert outcome["run"]["status"] == RunStatus.SUCCEEDED, outcome
    assert (stock_of("SKU-A"), stock_of("SKU-B")) == (2, 3)


def _sync_in_thread(app, outcome: dict) -> None:
    with app.app_context():
        try:
            outcome["run"] = _sync().run
        finally:
            db.session.remove()
