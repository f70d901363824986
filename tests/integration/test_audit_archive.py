"""Archiving months of the audit trail, verifying archives, reading the trail (CLI, API),
and the append-only triggers on the embedded SQLite database."""

from __future__ import annotations

import gzip
import json
from datetime import datetime, timedelta

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from service.audit import head
from service.audit import services as audit
from service.audit.actor import Actor
from service.audit.models import AuditArchive
from service.audit.partitions import Month, create_partition_sql, existing
from service.extensions import db
from tests.support.admin import caller
from tests.support.audit import chain_rows, insert_raw


@pytest.fixture
def old_months(clean):
    """Months 2001-01 and 2001-02 holding rows 1..30 of a valid chain; newer rows follow."""
    months = [Month(2001, 1), Month(2001, 2)]
    with clean.app_context():
        for month in months:
            for statement in create_partition_sql(month):
                db.session.execute(text(statement))
        db.session.commit()
        rows = list(chain_rows(30, start=datetime(2001, 1, 20), step=timedelta(days=1)))
        insert_raw(rows)
        for n in range(3):
            audit.record(action="product.stock_adjust", entity_type="product", entity_id=n,
                         actor=Actor.system("test"), before={"stock": n}, after={"stock": n + 1})
            db.session.commit()
        db.session.remove()
    yield months
    with clean.app_context():
        for month in months:
            db.session.execute(text(f"DROP TABLE IF EXISTS {month.table}"))
        db.session.commit()


def _cli(app, *args):
    with app.app_context():
        return app.test_cli_runner().invoke(args=list(args))


def test_archive_round_trip_keeps_the_chain_verifiable(clean, old_months, tmp_path):
    result = _cli(clean, "audit", "archive", "--before", "2001-03", "--dir", str(tmp_path),
                  "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert [(a["month"], a["rows"]) for a in summary["archived"]] == [("2001-01", 12),
                                                                      ("2001-02", 18)]
    with clean.app_context():
        assert Month(2001, 1) not in existing() and Month(2001, 2) not in existing()
        assert db.session.execute(text("SELECT min(id), count(*) FROM audit_logs")).one() == \
            (31, 5)  # 3 records + 2 audit.archive rows
        db.session.remove()
    for archive in summary["archived"]:
        checked = _cli(clean, "audit", "verify", "--archive", archive["path"], "--json")
        assert checked.exit_code == 0, checked.output
        assert json.loads(checked.stdout)["checked"] == archive["rows"]
    # The live chain starts where the newest archive ends, and verifies.
    live = _cli(clean, "audit", "verify", "--json")
    assert live.exit_code == 0, live.output
    assert json.loads(live.stdout)["first_id"] == 31
    with clean.app_context():
        # Archiving dropped the oldest rows, not the newest: the witness is the last row.
        assert head.read().id == json.loads(live.stdout)["last_id"] == 35
        db.session.remove()
    with gzip.open(summary["archived"][0]["path"], "rt") as handle:
        header = json.loads(handle.readline())
        first = json.loads(handle.readline())
    assert header["row_count"] == 12 and first["id"] == 1 and first["hash"]


def test_a_tampered_archive_fails_verification(clean, old_months, tmp_path):
    result = _cli(clean, "audit", "archive", "--before", "2001-02", "--dir", str(tmp_path),
                  "--json")
    path = json.loads(result.stdout)["archived"][0]["path"]
    with gzip.open(path, "rt") as handle:
        lines = handle.read().splitlines()
    row = json.loads(lines[5])
    row["reason"] = "edited"
    lines[5] = json.dumps(row)
    forged = tmp_path / "forged.jsonl.gz"
    with gzip.open(forged, "wt") as handle:
        handle.write("\n".join(lines) + "\n")
    checked = _cli(clean, "audit", "verify", "--archive", str(forged), "--json")
    assert checked.exit_code == 1
    assert json.loads(checked.stdout)["problem"]["kind"] == "altered"


def test_verify_after_a_partition_dropped_without_archive_reports_missing_rows(clean, old_months):
    with clean.app_context():
        db.session.execute(text(f"DROP TABLE {Month(2001, 1).table}"))
        db.session.commit()
    result = _cli(clean, "audit", "verify")
    assert result.exit_code == 1
    assert "BROKEN at row 1 (missing)" in result.stdout


def test_archiving_the_current_month_is_refused(clean):
    later = Month.of(datetime.utcnow()).plus(1)
    result = _cli(clean, "audit", "archive", "--before", str(later))
    assert result.exit_code == 2


def test_audit_list_filters_and_pages_in_the_api_and_the_cli(clean):
    admin = caller(clean, "admin", email="boss@x.test")
    with clean.app_context():
        for n in range(5):
            audit.record(action="product.stock_adjust", entity_type="product", entity_id=n % 2,
                         actor=Actor.system("erp"), before={"stock": n}, after={"stock": n + 1})
            db.session.commit()
    first = admin.get("/api/admin/audit-logs?entity_type=product&entity_id=0&limit=2").get_json()
    assert [r["entity_id"] for r in first["items"]] == ["0", "0"]
    second = admin.get("/api/admin/audit-logs?entity_type=product&entity_id=0&limit=2"
                       f"&cursor={first['next_cursor']}").get_json()
    assert len(second["items"]) == 1 and second["next_cursor"] is None
    assert first["items"][0]["id"] > first["items"][1]["id"] > second["items"][0]["id"]
    by_actor = admin.get("/api/admin/audit-logs?actor=system:e*").get_json()["items"]
    assert len(by_actor) == 5 and all(r["actor"] == "system:erp" for r in by_actor)
    none = admin.get("/api/admin/audit-logs?until=2000-01-01").get_json()["items"]
    assert none == []
    listed = _cli(clean, "audit", "list", "--action", "user.create", "--json")
    assert [r["actor"] for r in json.loads(listed.stdout)["items"]] == ["system:tests"]
    table = _cli(clean, "audit", "list", "--entity", "product:1", "--since", "1h")
    assert table.exit_code == 0 and table.stdout.count("product:1") == 2


def test_sqlite_triggers_refuse_update_and_delete(build_app, tmp_path):
    from flask_migrate import upgrade

    sqlite_app = build_app({"SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp_path / 'a.db'}",
                            "SQLALCHEMY_ENGINE_OPTIONS": {"connect_args": {"timeout": 30}}})
    with sqlite_app.app_context():
        upgrade()
        for n in range(2):
            audit.record(action="product.stock_adjust", entity_type="product", entity_id=1,
                         actor=Actor.system("test"), before={"stock": n}, after={"stock": n + 1})
            db.session.commit()
        for statement, refusal in (
                ("UPDATE audit_logs SET reason = 'x'", "append-only"),
                ("DELETE FROM audit_logs", "append-only"),
                ("UPDATE audit_chain_head SET last_id = 1", "only moves forward"),
                ("DELETE FROM audit_chain_head", "only moves forward")):
            with pytest.raises(DBAPIError, match=refusal), db.engine.begin() as conn:
                conn.execute(text(statement))
        from service.audit.verify import verify_chain
        report = verify_chain()
        assert (report.ok, report.checked) == (True, 2)
        db.session.rollback()  # SQLite: the session's transaction holds the write lock
        # Whoever drops the trigger to remove the last row still leaves the witness behind.
        with db.engine.begin() as conn:
            conn.execute(text("DROP TRIGGER audit_logs_no_delete"))
            conn.execute(text("DELETE FROM audit_logs WHERE id = 2"))
        report = verify_chain()
        assert (report.ok, report.problem.kind, report.problem.row_id) == (False, "missing", 2)
        db.session.remove()


def test_a_month_dropped_behind_a_forged_archive_entry_is_reported(clean, old_months):
    """Dropping the oldest month and adding a register entry that ends where it ended
    (the register takes inserts) does not pass: the chain has no audit.archive row for it."""
    with clean.app_context():
        last_hash = db.session.execute(text("SELECT hash FROM audit_logs WHERE id = 12")).scalar()
        db.session.execute(text(f"DROP TABLE {Month(2001, 1).table}"))
        db.session.add(AuditArchive(month="2001-01", path="/nowhere.jsonl.gz", file_sha256="0" * 64,
                                    row_count=12, first_id=1, last_id=12,
                                    first_prev_hash="0" * 64, last_hash=last_hash))
        db.session.commit()
        db.session.remove()

    result = _cli(clean, "audit", "verify", "--json")

    assert result.exit_code == 1, result.output
    problem = json.loads(result.stdout)["problem"]
    assert (problem["kind"], problem["row_id"]) == ("missing", 12)
    assert "not recorded in the chain" in problem["message"]
