"""Audit trail helpers for tests: raw tampering, as an attacker with the database's keys
would do it, and a valid chain built without the service, for archives and benchmarks."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta

from sqlalchemy import text

from service.audit.chain import GENESIS_HASH, canonical_json, row_hash
from service.extensions import db


def tamper(sql: str, **params) -> int:
    """Run `sql` with user triggers switched off (a superuser's way round append-only)."""
    with db.engine.begin() as conn:
        conn.execute(text("SET LOCAL session_replication_role = replica"))
        return conn.execute(text(sql), params).rowcount


def audit_rows(sql_where: str = "TRUE", **params) -> list[dict]:
    with db.engine.connect() as conn:
        return [dict(r) for r in conn.execute(
            text(f"SELECT * FROM audit_logs WHERE {sql_where} ORDER BY id, created_at"), params
        ).mappings()]


def chain_rows(count: int, *, start_id: int = 1, prev_hash: str = GENESIS_HASH,
               start: datetime, step: timedelta = timedelta(seconds=1),
               action: str = "product.stock_adjust") -> Iterator[dict]:
    """`count` valid, linked rows as the audit writer would make them (metadata as text)."""
    for n in range(count):
        row = {"id": start_id + n, "created_at": start + step * n, "action": action,
               "entity_type": "product", "entity_id": str(1 + n % 50), "user_id": None,
               "actor": "system:bench", "token_prefix": None, "ip_address": None,
               "user_agent": None, "request_id": None, "reason": "bulk",
               "metadata": {"before": {"stock": n}, "after": {"stock": n + 1}},
               "prev_hash": prev_hash}
        row["hash"] = prev_hash = row_hash(row)
        row["metadata"] = canonical_json(row["metadata"])
        yield row


def forge(row: dict, **changes) -> dict:
    """A copy of `row` with `changes`, its hash recomputed (a careful forger)."""
    forged = {**row, **changes}
    meta = forged["metadata"]
    forged["metadata"] = json.loads(meta) if isinstance(meta, str) else meta
    forged["hash"] = row_hash(forged)
    forged["metadata"] = canonical_json(forged["metadata"])
    return forged


def insert_raw(rows: list[dict]) -> None:
    columns = list(rows[0])
    with db.engine.begin() as conn:
        conn.execute(text(f"INSERT INTO audit_logs ({', '.join(columns)}) VALUES "
                          f"({', '.join(':' + c for c in columns)})"), rows)


@contextmanager
def audit_writes_refused(app):
    """While inside, every audit insert fails (as a full disk or a lost partition would)."""
    with app.app_context():
        db.session.execute(text("""
            CREATE FUNCTION test_refuse_audit() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN RAISE EXCEPTION 'audit storage unavailable'; END $$;
            CREATE TRIGGER test_refuse_audit BEFORE INSERT ON audit_logs
                FOR EACH ROW EXECUTE FUNCTION test_refuse_audit();"""))
        db.session.commit()
        db.session.remove()
    try:
        yield
    finally:
        with app.app_context():
            db.session.execute(text("DROP TRIGGER test_refuse_audit ON audit_logs;"
                                    " DROP FUNCTION test_refuse_audit();"))
            db.session.commit()
            db.session.remove()
