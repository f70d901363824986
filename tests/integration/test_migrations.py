"""The migrations build the schema the models describe, on SQLite and on PostgreSQL.

Each test migrates an empty database of its own from nothing to head, compares the result
with the models (Alembic's autogenerate comparison: no differences allowed), and goes
back down to base.
"""

from __future__ import annotations

import os
import uuid
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from service.audit.partitions import is_partition_name
from service.extensions import db, include_name


@pytest.fixture
def empty_postgres_url(service_env):
    """A new, empty PostgreSQL database on the test server, dropped afterwards."""
    admin = service_env["DATABASE_URL"].replace("postgresql+psycopg://", "postgresql://", 1)
    name = f"racine_migrations_{uuid.uuid4().hex[:10]}"
    parts = urlsplit(admin)
    admin = urlunsplit((parts.scheme, parts.netloc, "/postgres", "", ""))
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield urlunsplit(("postgresql+psycopg", parts.netloc, f"/{name}", "", ""))
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _tables() -> set[str]:
    # Monthly partitions of audit_logs are tables of their own on PostgreSQL.
    return {name for name in inspect(db.engine).get_table_names() if not is_partition_name(name)}


def _schema_drift() -> list:
    with db.engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True,
                                                         "include_name": include_name})
        return compare_metadata(context, db.metadata)


def _upgrade_compare_downgrade(flask_app) -> None:
    from flask_migrate import downgrade, upgrade

    expected = set(db.metadata.tables)
    assert {"webhook_events", "webhook_failures", "orders", "payments", "refunds"} <= expected
    with flask_app.app_context():
        assert _tables() == set()

        upgrade()
        assert _tables() == expected | {"alembic_version"}
        assert _schema_drift() == []

        downgrade(revision="base")
        assert _tables() <= {"alembic_version"}

        # Down and up again: the downgrade left nothing behind that blocks a new upgrade.
        upgrade()
        assert _tables() == expected | {"alembic_version"}
        db.session.remove()


def _sqlite_app(build_app, tmp_path):
    return build_app({
        "SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp_path / 'm.db'}",
        # The environment's engine options are PostgreSQL's (connect_timeout, pool size);
        # they follow DATABASE_URL, not this override.
        "SQLALCHEMY_ENGINE_OPTIONS": {"connect_args": {"timeout": 30}},
    })


def test_migrations_upgrade_from_empty_without_drift_and_downgrade_on_sqlite(build_app, tmp_path):
    sqlite_app = _sqlite_app(build_app, tmp_path)
    with sqlite_app.app_context():
        assert db.engine.dialect.name == "sqlite"

    _upgrade_compare_downgrade(sqlite_app)


def test_migrations_upgrade_from_empty_without_drift_and_downgrade_on_postgresql(
    build_app, empty_postgres_url
):
    pg_app = build_app({"SQLALCHEMY_DATABASE_URI": empty_postgres_url})
    with pg_app.app_context():
        assert db.engine.dialect.name == "postgresql"
        assert db.engine.url.database == empty_postgres_url.rsplit("/", 1)[1]

    _upgrade_compare_downgrade(pg_app)


def test_session_database_was_built_by_the_migrations_and_matches_the_models(app):
    with app.app_context():
        assert db.engine.url.database == os.environ["DATABASE_URL"].rsplit("/", 1)[1]
        assert _schema_drift() == []
        db.session.remove()


def test_money_safety_migration_rebuilds_tables_with_rows_and_sums_them_on_sqlite(
        build_app, tmp_path):
    """A SQLite table is rebuilt to change a column type; with rows that others refer to,
    that needs foreign keys off during the migration, and on (and intact) after it."""
    from flask_migrate import upgrade
    from sqlalchemy import text

    sqlite_app = _sqlite_app(build_app, tmp_path)
    with sqlite_app.app_context():
        upgrade(revision="0002")
        with db.engine.begin() as conn:
            for statement in (
                "INSERT INTO customers (id, email, name, created_at)"
                " VALUES (1, 'a@example.test', 'A', '2026-01-01')",
                "INSERT INTO orders (id, customer_id, status, currency, total_cents, created_at,"
                " updated_at) VALUES (1, 1, 'paid', 'EUR', 1000, '2026-01-01', '2026-01-01')",
                "INSERT INTO payments (order_id, provider, provider_payment_id, status,"
                " amount_cents, currency, created_at, updated_at) VALUES"
                " (1, 'stripe', 'pi_1', 'succeeded', 1000, 'EUR', '2026-01-01', '2026-01-01')",
                "INSERT INTO refunds (order_id, provider, provider_refund_id, amount_cents,"
                " currency, created_at) VALUES (1, 'stripe', 're_1', 300, 'EUR', '2026-01-01')",
            ):
                conn.execute(text(statement))

        upgrade()

        with db.engine.connect() as conn:
            assert conn.execute(text("SELECT paid_cents, refunded_cents FROM orders")).one() == (
                1000, 300)
            assert conn.execute(text("SELECT status FROM refunds")).scalar() == "succeeded"
            assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1
            assert conn.execute(text("PRAGMA foreign_key_check")).all() == []
        db.session.remove()


@pytest.mark.parametrize("existing, head", [
    ("rows", (3, "h3")),
    ("archive", (7, "a7")),
    ("nothing", (0, "0" * 64)),
])
def test_chain_head_migration_starts_the_witness_at_the_chains_end_on_sqlite(
        build_app, tmp_path, existing, head):
    from flask_migrate import upgrade
    from sqlalchemy import text

    sqlite_app = _sqlite_app(build_app, tmp_path)
    with sqlite_app.app_context():
        upgrade(revision="0007_runbook_runs")
        with db.engine.begin() as conn:
            if existing == "rows":
                conn.execute(text(
                    "INSERT INTO audit_logs (id, created_at, action, entity_type, entity_id,"
                    " actor, metadata, prev_hash, hash) VALUES (:id, '2026-01-01', 'a', 'e',"
                    " '1', 'system:x', '{}', 'p', :hash)"),
                    [{"id": n, "hash": f"h{n}"} for n in (1, 2, 3)])
            if existing in ("rows", "archive"):
                conn.execute(text(
                    "INSERT INTO audit_archives (month, path, file_sha256, row_count, last_id,"
                    " last_hash, created_at) VALUES ('2001-01', 'f', 's', 7, 7, 'a7',"
                    " '2026-01-01')"))
        upgrade()
        with db.engine.connect() as conn:
            assert conn.execute(text(
                "SELECT last_id, last_hash FROM audit_chain_head")).all() == [head]
        db.session.remove()
