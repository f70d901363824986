"""One statement, committed on its own, at the lowest cost the database allows.

The two hottest statements of the pipeline (the intake's INSERT and the worker's claim)
each stand alone: run in autocommit mode they cost one round trip and return once
durable. On PostgreSQL the statement goes straight to the pooled psycopg connection:
SQLAlchemy's execution machinery cost more CPU than the round trip itself, while its
pool (checkout, idle ping, invalidation) is still used. Elsewhere (the embedded SQLite,
where there is no round trip to save) SQLAlchemy runs it in a transaction of its own.
Driver errors surface as SQLAlchemy's DBAPIError either way.
"""

from __future__ import annotations

import re
from typing import Any

import psycopg
from sqlalchemy import TextClause, bindparam, text
from sqlalchemy.exc import DBAPIError

from service.extensions import db


class Statement:
    """A textual statement with `:name` parameters, ready for either path."""

    def __init__(self, sql: str, **types):
        self.clause: TextClause = text(sql)
        if types:
            self.clause = self.clause.bindparams(
                *(bindparam(name, type_=type_) for name, type_ in types.items()))
        self.psycopg_sql = re.sub(r"(?<![:\w]):(\w+)", r"%(\1)s", sql)


def fetch_one(statement: Statement, params: dict[str, Any]) -> tuple | None:
    """Run `statement` in its own committed transaction; its first row, or None."""
    if db.engine.dialect.driver == "psycopg":
        return _fetch_one_psycopg(statement.psycopg_sql, params)
    with db.engine.begin() as conn:
        row = conn.execute(statement.clause, params).first()
    return None if row is None else tuple(row)


def _fetch_one_psycopg(sql: str, params: dict[str, Any]) -> tuple | None:
    try:
        pooled = db.engine.raw_connection()
    except psycopg.Error as exc:  # the pool hands out the driver's own connect errors
        raise _wrapped(sql, params, exc) from exc
    try:
        conn = pooled.driver_connection
        conn.autocommit = True
        try:
            return conn.execute(sql, params).fetchone()
        finally:
            if not conn.closed:
                conn.autocommit = False
    except psycopg.Error as exc:
        if pooled.driver_connection.closed or isinstance(exc, psycopg.OperationalError):
            pooled.invalidate(exc)
        raise _wrapped(sql, params, exc) from exc
    finally:
        pooled.close()


def _wrapped(sql: str, params: dict[str, Any], exc: psycopg.Error) -> DBAPIError:
    return DBAPIError.instance(sql, params, exc, psycopg.Error, hide_parameters=True)
