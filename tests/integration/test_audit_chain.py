"""The audit trail's chain: one writer, append-only tables, and tampering found by verify."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from service.audit import services as audit
from service.audit.actor import Actor
from service.audit.chain import GENESIS_HASH, row_hash
from service.audit.exceptions import UnknownAction
from service.audit.verify import verify_chain
from service.extensions import db
from tests.support.audit import audit_rows, forge, insert_raw, tamper


def _write(n: int, *, entity_id: int = 7) -> list[int]:
    ids = []
    for k in range(n):
        ids.append(audit.record(action="product.stock_adjust", entity_type="product",
                                entity_id=entity_id, actor=Actor.system("test"),
                                before={"stock": k}, after={"stock": k + 1}, reason=f"r{k}",
                                details={"delta": 1}))
        db.session.commit()
    return ids


def test_rows_are_numbered_and_linked_from_the_genesis_hash(ctx):
    assert _write(3) == [1, 2, 3]
    rows = audit_rows()
    assert rows[0]["prev_hash"] == GENESIS_HASH
    assert [r["prev_hash"] for r in rows[1:]] == [r["hash"] for r in rows[:-1]]
    assert all(row_hash(r) == r["hash"] for r in rows)
    report = verify_chain()
    assert (report.ok, report.checked, report.last_id, report.last_hash) == (
        True, 3, 3, rows[-1]["hash"])


def test_an_unregistered_action_is_refused(ctx):
    with pytest.raises(UnknownAction):
        audit.record(action="order.teleport", entity_type="order", entity_id=1,
                     actor=Actor.system("test"), before=None, after=None)


@pytest.mark.parametrize("statement, refusal", [
    ("UPDATE audit_logs SET reason = 'edited' WHERE id = 2", "append-only"),
    ("DELETE FROM audit_logs WHERE id = 2", "append-only"),
    ("TRUNCATE audit_logs", "append-only"),
    ("UPDATE audit_archives SET month = '1999-01'", "append-only"),
    # The chain-head witness moves forward only, as the writer moves it.
    ("UPDATE audit_chain_head SET last_id = last_id - 1", "only moves forward"),
    ("UPDATE audit_chain_head SET last_hash = 'forged'", "only moves forward"),
    ("DELETE FROM audit_chain_head", "only moves forward"),
    ("TRUNCATE audit_chain_head", "only moves forward"),
    ("INSERT INTO audit_chain_head (id, last_id, last_hash) VALUES (2, 9, 'x')", "one_row"),
])
def test_triggers_refuse_changes_to_the_audit_tables(ctx, statement, refusal):
    _write(3)
    with db.engine.begin() as conn:
        conn.execute(text("INSERT INTO audit_archives (month, path, file_sha256, row_count,"
                          " created_at) VALUES ('2000-01', 'x', 'y', 0, now())"))
    with pytest.raises(DBAPIError, match=refusal), db.engine.begin() as conn:
        conn.execute(text(statement))
    assert len(audit_rows()) == 3
    with db.engine.connect() as conn:
        assert conn.execute(text("SELECT id, last_id FROM audit_chain_head")).all() == [(1, 3)]
    with db.engine.connect() as conn:
        assert conn.execute(text("SELECT month FROM audit_archives")).scalars().all() == ["2000-01"]


def test_a_partition_refuses_direct_deletes_and_truncates_too(ctx):
    _write(1)
    partition = db.session.execute(text(
        "SELECT tableoid::regclass::text FROM audit_logs WHERE id = 1")).scalar()
    db.session.rollback()
    assert partition.startswith("audit_logs_y")
    for statement in (f"DELETE FROM {partition}", f"TRUNCATE {partition}"):
        with pytest.raises(DBAPIError, match="append-only"), db.engine.begin() as conn:
            conn.execute(text(statement))
    assert len(audit_rows()) == 1


def test_verify_finds_an_edited_amount(ctx):
    _write(5)
    tamper("UPDATE audit_logs SET metadata = replace(metadata, :old, :new) WHERE id = 3",
           old='"stock":3', new='"stock":300')
    report = verify_chain()
    assert not report.ok
    assert (report.problem.kind, report.problem.row_id) == ("altered", 3)


def test_verify_finds_a_deleted_row(ctx):
    _write(5)
    tamper("DELETE FROM audit_logs WHERE id = 4")
    report = verify_chain()
    assert (report.ok, report.problem.kind, report.problem.row_id) == (False, "missing", 4)


def test_verify_finds_a_deleted_first_row(ctx):
    _write(3)
    tamper("DELETE FROM audit_logs WHERE id = 1")
    report = verify_chain()
    assert (report.ok, report.problem.kind, report.problem.row_id) == (False, "missing", 1)


def test_verify_finds_a_row_inserted_in_the_middle_with_a_valid_hash(ctx):
    _write(5)
    rows = audit_rows()
    # A forger copies row 3's place: links it to row 2, recomputes its hash.
    insert_raw([forge(rows[2], reason="forged", created_at=rows[1]["created_at"])])
    report = verify_chain()
    assert (report.ok, report.problem.kind, report.problem.row_id) == (False, "inserted", 3)


@pytest.mark.parametrize("rewritten, found", [
    # Row 2 is self-consistent now, so the break shows where row 3 no longer links.
    (2, ("broken_link", 3)),
    # The last row: nothing links to it, but the chain-head witness holds its hash.
    (4, ("altered", 4)),
])
def test_verify_finds_a_rewritten_row_whose_hash_was_recomputed(ctx, rewritten, found):
    _write(4)
    forged = forge(audit_rows("id = :id", id=rewritten)[0], reason="rewritten")
    tamper("DELETE FROM audit_logs WHERE id = :id", id=rewritten)
    insert_raw([forged])
    report = verify_chain()
    assert (report.ok, (report.problem.kind, report.problem.row_id)) == (False, found)


def test_verify_since_checks_the_link_into_the_window(ctx):
    _write(4)
    rows = audit_rows()
    assert verify_chain(since=rows[2]["created_at"]).checked == 2
    tamper("DELETE FROM audit_logs WHERE id = 2")
    report = verify_chain(since=rows[2]["created_at"])
    assert (report.ok, report.problem.kind) == (False, "missing")


def test_the_change_and_its_audit_row_commit_together(ctx):
    _write(1)
    audit.record(action="product.stock_adjust", entity_type="product", entity_id=1,
                 actor=Actor.system("test"), before={"stock": 0}, after={"stock": 5})
    db.session.rollback()
    assert [r["id"] for r in audit_rows()] == [1]
    assert _write(1) == [2]


# ---- the chain-head witness: rows removed from the end ---------------------------------

@pytest.mark.parametrize("deleted, missing", [("id = 5", "5"), ("id >= 4", "4..5")])
def test_verify_finds_rows_deleted_from_the_end(clean, ctx, deleted, missing):
    _write(5)
    tamper(f"DELETE FROM audit_logs WHERE {deleted}")
    report = verify_chain()
    assert (report.ok, report.problem.kind, report.problem.row_id) == (
        False, "missing", int(missing[0]))
    assert f"row(s) {missing} missing at the end" in report.problem.message
    result = clean.test_cli_runner().invoke(args=["audit", "verify", "--json"])
    assert result.exit_code == 1
    assert json.loads(result.stdout)["problem"]["kind"] == "missing"


def test_a_write_after_the_last_row_was_deleted_leaves_the_gap_for_verify(ctx):
    _write(3)
    deleted = audit_rows("id = 3")[0]
    tamper("DELETE FROM audit_logs WHERE id = 3")
    assert _write(1) == [4]
    assert audit_rows("id = 4")[0]["prev_hash"] == deleted["hash"]
    report = verify_chain()
    assert (report.ok, report.problem.kind, report.problem.row_id) == (False, "missing", 3)
    assert "row(s) 3 missing before row 4" in report.problem.message


def test_verify_finds_a_row_appended_by_a_plain_insert(ctx):
    """INSERT needs no trigger bypass: a forger appends a row linked to the last one."""
    _write(3)
    last = audit_rows("id = 3")[0]
    insert_raw([forge(last, id=4, prev_hash=last["hash"], reason="forged")])
    report = verify_chain()
    assert (report.ok, report.problem.kind, report.problem.row_id) == (False, "inserted", 4)
    # The writer does not take the forged row into the chain: its next row is row 4 too.
    assert _write(1) == [4]
    report = verify_chain()
    assert (report.ok, report.problem.kind, report.problem.row_id) == (False, "inserted", 4)


def test_verify_from_a_date_finds_the_end_deleted_too(ctx):
    _write(3)
    since = audit_rows("id = 3")[0]["created_at"]
    tamper("DELETE FROM audit_logs WHERE id = 3")
    report = verify_chain(since=since)
    assert (report.ok, report.problem.kind, report.problem.row_id) == (False, "missing", 3)
