"""Liveness and readiness probes."""

from __future__ import annotations

from flask import Blueprint, Flask, current_app, jsonify
from sqlalchemy import text

from service.extensions import db

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz():
    return jsonify(status="ok")


@bp.get("/readyz")
def readyz():
    checks = {"database": _check_database(), "redis": _check_redis()}
    ready = all(value == "ok" for value in checks.values())
    return jsonify(status="ok" if ready else "unavailable", checks=checks), 200 if ready else 503


def _check_database() -> str:
    try:
        if db.engine.dialect.name == "sqlite":
            _ping_sqlite()
        else:
            db.session.execute(text("SELECT 1"))
            db.session.rollback()
        return "ok"
    except Exception as exc:
        db.session.rollback()
        return f"error: {type(exc).__name__}"


def _ping_sqlite() -> None:
    """A read on the driver connection, outside any transaction.

    Every SQLAlchemy transaction on the embedded SQLite begins IMMEDIATE (it takes the
    write lock up front, see `configure_sqlite`): a probe through it would queue behind
    every writer, and make them queue behind it. The driver connection runs in
    autocommit mode, so this SELECT takes only a read lock, which WAL never blocks.
    """
    raw = db.engine.raw_connection()
    try:
        raw.driver_connection.execute("SELECT 1").fetchone()
    finally:
        raw.close()


def _check_redis() -> str:
    try:
        current_app.extensions["redis"].ping()
        return "ok"
    except Exception as exc:
        return f"error: {type(exc).__name__}"


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)
