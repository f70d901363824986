"""Reading the database from tests on their own connection, outside the test's session.

Workers run in other processes; a fresh connection sees what they committed.
"""

from __future__ import annotations

from sqlalchemy import text

from service.extensions import db


def scalar(sql: str, **params):
    with db.engine.connect() as conn:
        return conn.execute(text(sql), params).scalar()


def rows(sql: str, **params) -> list[dict]:
    with db.engine.connect() as conn:
        return [dict(r) for r in conn.execute(text(sql), params).mappings()]
