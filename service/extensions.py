"""Shared extension instances, bound to the app in `create_app`."""

import time

from flask_migrate import Migrate
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import MetaData, event, exc
from sqlalchemy.engine import Engine

# Named constraints keep Alembic migrations identical on SQLite and PostgreSQL.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


# Predicates naming tables a domain manages outside the models (the audit trail's
# monthly partitions): Alembic's autogenerate leaves them alone. Domains add theirs in
# their init_app through `leave_tables_to_domain`.
_UNMANAGED_TABLES: list = []


def leave_tables_to_domain(predicate) -> None:
    """Tell Alembic to ignore the tables `predicate(name)` accepts."""
    if predicate not in _UNMANAGED_TABLES:
        _UNMANAGED_TABLES.append(predicate)


def include_name(name, type_, _parent_names) -> bool:
    """Alembic's filter: every table but those a domain manages itself."""
    return not (type_ == "table" and name and any(p(name) for p in _UNMANAGED_TABLES))


db = SQLAlchemy(metadata=MetaData(naming_convention=NAMING_CONVENTION))
migrate = Migrate(render_as_batch=True, compare_type=True, include_name=include_name)


def configure_sqlite(engine: Engine) -> None:
    """WAL, foreign keys and write-locking transactions for the embedded SQLite database.

    A deferred SQLite transaction that reads and then writes can fail at once with
    "database is locked" when another process writes in between; BEGIN IMMEDIATE takes
    the write lock up front, so the busy timeout applies and writers queue instead.
    """
    if engine.dialect.name != "sqlite":
        return

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record):
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        # FULL: a commit is on disk before it returns, so a 200 survives a power loss too
        # (NORMAL, in WAL mode, only survives a crash of the process).
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection):
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def ping_when_idle(engine: Engine, idle_seconds: float) -> None:
    """Check a pooled connection before use only when it has been idle a while.

    Pre-pinging every checkout costs a round trip per transaction. A connection used a
    moment ago is almost surely alive, and should it not be, the error invalidates the
    whole pool, so only the statement that met it fails (a webhook then answers 503 and
    is delivered again, a task retries). One idle longer than `idle_seconds` may have
    outlived a database restart and is pinged; a dead one is replaced before use.
    """
    @event.listens_for(engine, "checkin")
    def _on_checkin(_dbapi_connection, record):
        if record is not None:
            record.info["racine_idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _on_checkout(dbapi_connection, record, _proxy):
        idle_since = record.info.get("racine_idle_since")
        if idle_since is None or time.monotonic() - idle_since < idle_seconds:
            return
        try:
            engine.dialect.do_ping(dbapi_connection)
            dbapi_connection.rollback()
        except Exception as error:
            raise exc.DisconnectionError(f"stale pooled connection: {type(error).__name__}") \
                from error
