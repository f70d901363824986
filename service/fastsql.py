"""Hot-path statements at the lowest cost the database allows.

`fetch_one` and `fetch_all` run a statement that stands alone (the intake's INSERT,
the worker's claims, a refused publish put back) in autocommit mode: one round trip,
returning once durable. `run` runs one in the session's current transaction (the
worker's payment path), committed by the caller.
On PostgreSQL the statement goes straight to the pooled psycopg connection:
SQLAlchemy's execution machinery cost more CPU than the round trip itself, while its
pool (checkout, idle ping, invalidation) is still used. Elsewhere (the embedded SQLite,
where there is no round trip to save) SQLAlchemy runs it in a transaction of its own.
Driver errors surface as SQLAlchemy's DBAPIError either way.
"""

from __future__ import annotations

import re
from typing import Any, NamedTuple

import psycopg
from sqlalchemy import TextClause, bindparam, text
from sqlalchemy.exc import DBAPIError

from service.extensions import db


class Statement:
    """A textual statement with `:name` parameters, ready for either path.

    `for_update` appends FOR UPDATE where the database has row locks (SQLite locks the
    whole database for the writing transaction instead). `expanding` names list
    parameters written `IN :name` (SQLAlchemy's form; PostgreSQL's own statements take a
    list as an array, `= ANY(:name)`).
    """

    def __init__(self, sql: str, *, for_update: bool = False, expanding: tuple[str, ...] = (),
                 **types):
        self.writes = not sql.lstrip().upper().startswith("SELECT")
        locked = sql + (" FOR UPDATE" if for_update else "")
        binds = [bindparam(name, type_=type_) for name, type_ in types.items()]
        binds += [bindparam(name, expanding=True) for name in expanding]
        self._clauses: dict[bool, TextClause] = {
            False: text(sql).bindparams(*binds), True: text(locked).bindparams(*binds)}
        self.psycopg_sql = re.sub(r"(?<![:\w]):(\w+)", r"%(\1)s", locked)

    def clause(self, dialect) -> TextClause:
        """The SQLAlchemy form for `dialect`: with FOR UPDATE unless it is SQLite."""
        return self._clauses[dialect.name != "sqlite"]


class Result(NamedTuple):
    rows: list[tuple]
    rowcount: int


def run(statement: Statement, params: dict[str, Any]) -> Result:
    """Run `statement` in the session's transaction; the caller commits or rolls back.

    The session stays coherent: its pending ORM changes are flushed first, and objects it
    holds are expired after a write, so they are read again when next used.
    """
    session = db.session
    if session.new or session.dirty or session.deleted:
        session.flush()
    conn = session.connection()
    if conn.dialect.driver != "psycopg":
        result = conn.execute(statement.clause(conn.dialect), params)
        rows = [tuple(row) for row in result] if result.returns_rows else []
        outcome = Result(rows, result.rowcount)
    else:
        try:
            cursor = conn.connection.driver_connection.execute(statement.psycopg_sql, params)
            outcome = Result(cursor.fetchall() if cursor.description else [], cursor.rowcount)
        except psycopg.Error as exc:
            lost = _lost(conn.connection.driver_connection, exc)
            if lost:
                conn.invalidate(exc)
                db.engine.dispose()
            raise _wrapped(statement.psycopg_sql, params, exc, lost=lost) from exc
    if statement.writes and len(session.identity_map):
        session.expire_all()
    return outcome


def fetch_one(statement: Statement, params: dict[str, Any]) -> tuple | None:
    """Run `statement` in its own committed transaction; its first row, or None."""
    rows = _autocommit(statement, params, many=False)
    return rows[0] if rows else None


def fetch_all(statement: Statement, params: dict[str, Any]) -> list[tuple]:
    """Run `statement` in its own committed transaction; all its rows (none for a write
    that returns nothing)."""
    return _autocommit(statement, params, many=True)


def _autocommit(statement: Statement, params: dict[str, Any], *, many: bool) -> list[tuple]:
    if db.engine.dialect.driver == "psycopg":
        return _fetch_psycopg(statement.psycopg_sql, params, many=many)
    with db.engine.begin() as conn:
        result = conn.execute(statement.clause(conn.dialect), params)
        if not result.returns_rows:
            return []
        rows = result.all() if many else [result.first()]
    return [tuple(row) for row in rows if row is not None]


def _fetch_psycopg(sql: str, params: dict[str, Any], *, many: bool) -> list[tuple]:
    try:
        pooled = db.engine.raw_connection()
    except psycopg.Error as exc:  # the pool hands out the driver's own connect errors
        raise _wrapped(sql, params, exc) from exc
    try:
        conn = pooled.driver_connection
        conn.autocommit = True
        try:
            cursor = conn.execute(sql, params)
            if cursor.description is None:
                return []
            if many:
                return cursor.fetchall()
            row = cursor.fetchone()
            return [] if row is None else [row]
        finally:
            if not conn.closed:
                conn.autocommit = False
    except psycopg.Error as exc:
        lost = _lost(pooled.driver_connection, exc)
        if lost:
            pooled.invalidate(exc)
            db.engine.dispose()
        raise _wrapped(sql, params, exc, lost=lost) from exc
    finally:
        pooled.close()


def _lost(conn, exc: psycopg.Error) -> bool:
    """Whether `exc` means the connection is gone. Then, as SQLAlchemy's own execution
    path does, every pooled connection is dropped (`dispose`): a database restart killed
    them all, and each would otherwise fail one request before being replaced."""
    return conn is None or conn.closed or conn.broken or \
        db.engine.dialect.is_disconnect(exc, conn, None)


def _wrapped(sql: str, params: dict[str, Any], exc: psycopg.Error, *,
             lost: bool = False) -> DBAPIError:
    return DBAPIError.instance(sql, params, exc, psycopg.Error, hide_parameters=True,
                               connection_invalidated=lost)
