"""Pooled PostgreSQL connections that the database dropped while they sat idle.

A database restart or failover (here: `pg_terminate_backend` on every other backend of
the test database) leaves the pool holding dead connections. A connection idle longer
than DB_PING_IDLE_SECONDS is pinged at checkout and replaced when dead
(`service.extensions.ping_when_idle`), so a delivery arriving after a quiet spell is
stored as usual. The terminations also hit the session app's pooled connections, which
the `terminate_backends` fixture disposes of afterwards.
"""

from __future__ import annotations

import time

import psycopg
import pytest
from sqlalchemy.engine import Engine

from service.extensions import db
from tests.support.events import stripe_event, stripe_headers
from tests.support.waiting import wait_until


def plain_url(engine: Engine) -> str:
    """The engine's own database URL, for a psycopg connection outside any pool."""
    return engine.url.set(drivername="postgresql").render_as_string(hide_password=False)


@pytest.fixture
def terminate_backends(app):
    """Kill every other backend of an engine's database, as a restart would.

    The session app's pooled connections die too; they are disposed of afterwards so
    the tests that follow start with a fresh pool.
    """
    def terminate(engine: Engine) -> set[int]:
        with psycopg.connect(plain_url(engine), autocommit=True) as conn:
            assert conn.execute("SELECT current_database()").fetchone()[0] == engine.url.database
            killed = {pid for pid, terminated in conn.execute(
                "SELECT pid, pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()") if terminated}

            def all_gone() -> bool:
                alive = conn.execute("SELECT count(*) FROM pg_stat_activity"
                                     " WHERE pid = ANY(%s)", [list(killed)]).fetchone()[0]
                return alive == 0
            wait_until(all_gone, 10, "the terminated backends to exit")
        return killed

    yield terminate
    with app.app_context():
        db.session.remove()
        db.engine.dispose()


def post_event(client, event_id: str | None = None):
    body, event_id = stripe_event("payment_intent.succeeded", {"id": "pi_stale"},
                                  event_id=event_id)
    return client.post("/webhooks/stripe", data=body, headers=stripe_headers(body)), event_id


def stored(engine: Engine, event_id: str) -> bool:
    """Whether the event's row is committed, read on a connection of its own."""
    with psycopg.connect(plain_url(engine)) as conn:
        return conn.execute("SELECT count(*) FROM webhook_events WHERE event_id = %s",
                            [event_id]).fetchone()[0] == 1


def fill_pool(app, connections: int) -> set[int]:
    """Leave `connections` live connections checked in to the app's pool; their pids."""
    with app.app_context():
        held = [db.engine.connect() for _ in range(connections)]
        pids = {conn.exec_driver_sql("SELECT pg_backend_pid()").scalar() for conn in held}
        for conn in held:
            conn.close()
        assert db.engine.pool.checkedin() == connections, db.engine.pool.status()
    assert len(pids) == connections
    return pids


def app_with_dead_pool(build_app, terminate_backends, *, pooled: int):
    """An app that never pings (threshold 3600 s) whose `pooled` connections were killed."""
    built = build_app({"DB_PING_IDLE_SECONDS": 3600})
    client = built.test_client()
    first, _ = post_event(client)
    assert first.status_code == 200
    with built.app_context():
        engine = db.engine
    pids = fill_pool(built, pooled)
    assert pids <= terminate_backends(engine)
    return client, engine


def test_idle_connections_killed_by_the_database_are_replaced_at_checkout(
        build_app, clean, terminate_backends):
    idle = 0.5
    built = build_app({"DB_PING_IDLE_SECONDS": idle})
    client = built.test_client()
    first, first_id = post_event(client)
    assert first.status_code == 200
    assert first.get_json() == {"status": "stored", "event_id": first_id}
    with built.app_context():
        engine = db.engine
    pooled = fill_pool(built, 2)
    last_used = time.monotonic()

    killed = terminate_backends(engine)

    assert pooled <= killed
    time.sleep(max(0.0, last_used + idle + 0.5 - time.monotonic()))
    # Both pooled connections are dead: each delivery meets one, pings it and replaces it.
    for _ in range(2):
        response, event_id = post_event(client)
        assert response.status_code == 200, response.get_json()
        assert response.get_json() == {"status": "stored", "event_id": event_id}
        assert stored(engine, event_id)
    assert stored(engine, first_id)


def test_without_the_idle_ping_the_first_delivery_after_the_kill_fails_then_redelivery_stores(
        build_app, clean, terminate_backends):
    """The control: with a threshold no test reaches, nothing is pinged, so the delivery
    that meets the dead connection answers 503, and the provider's redelivery is stored
    on a new one. This shows it is the idle ping that saves the delivery above."""
    client, engine = app_with_dead_pool(build_app, terminate_backends, pooled=1)
    time.sleep(1.0)  # longer than the other test's threshold, far short of this one
    failed, event_id = post_event(client)
    assert failed.status_code == 503
    assert failed.get_json()["error"] == "storage_unavailable"
    assert not stored(engine, event_id)

    again, _ = post_event(client, event_id)
    assert again.status_code == 200, again.get_json()
    assert again.get_json() == {"status": "stored", "event_id": event_id}
    assert stored(engine, event_id)


def test_a_disconnect_met_by_the_intake_insert_invalidates_the_whole_pool(
        build_app, clean, terminate_backends):
    """ping_when_idle's promise: a connection used a moment ago is not pinged, and
    should it be dead, "the error invalidates the whole pool, so only the statement that
    met it fails". With two dead pooled connections: one 503, then the redelivery stored.
    (SQLAlchemy's own execution path does this: a disconnect invalidates every connection
    pooled before it.)"""
    client, engine = app_with_dead_pool(build_app, terminate_backends, pooled=2)
    failed, event_id = post_event(client)
    assert failed.status_code == 503
    again, _ = post_event(client, event_id)
    assert again.status_code == 200, again.get_json()
    assert stored(engine, event_id)
