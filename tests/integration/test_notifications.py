"""Order notifications go out with no database lock or transaction held.

A local HTTP server stands in for the messaging service (ORDER_NOTIFY_URL). While it
handles the POST it looks at PostgreSQL from its own connection: the order row must be
lockable at once and no session of the service may sit inside a transaction.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import psycopg
import pytest

from service.orders import services
from service.orders.notify import HttpNotifier
from tests.support.db import rows
from tests.support.events import make_order


class Messaging:
    """The messaging service: answers `status` and records what it saw of the database."""

    def __init__(self, dsn: str):
        self.dsn = dsn
        self.status = 200
        self.seen: list[dict] = []
        messaging = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                payload = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                messaging.seen.append({"payload": payload, **messaging.database_state(
                    payload["order_id"])})
                self.send_response(messaging.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/notify"
        threading.Thread(target=self.server.serve_forever, daemon=True,
                         kwargs={"poll_interval": 0.05}).start()

    def database_state(self, order_id: int) -> dict:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            in_transaction = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                " AND state LIKE 'idle in transaction%%' AND pid <> pg_backend_pid()").fetchone()[0]
            conn.execute("BEGIN")
            try:
                conn.execute("SET LOCAL lock_timeout = '200ms'")
                conn.execute("SELECT id FROM orders WHERE id = %s FOR UPDATE NOWAIT", (order_id,))
                order_locked = False
            except psycopg.errors.LockNotAvailable:
                order_locked = True
            conn.execute("ROLLBACK")
        return {"sessions_in_transaction": in_transaction, "order_locked": order_locked}


@pytest.fixture
def messaging(service_env):
    server = Messaging(service_env["DATABASE_URL"].replace("postgresql+psycopg", "postgresql"))
    yield server
    server.server.shutdown()
    server.server.server_close()


def notifications(order_id: int) -> list[dict]:
    return rows("SELECT status, attempts, last_error, sent_at FROM notifications"
                " WHERE order_id = :o", o=order_id)


def test_notification_is_sent_with_no_lock_or_transaction_held(ctx, messaging):
    order_id = make_order()
    notifier = HttpNotifier(url=messaging.url)

    sent = services.send_order_notification(order_id, kind="payment_confirmation",
                                            notifier=notifier)

    assert sent is True
    [call] = messaging.seen
    assert call["order_locked"] is False
    assert call["sessions_in_transaction"] == 0
    assert call["payload"]["order_id"] == order_id
    [row] = notifications(order_id)
    assert (row["status"], row["attempts"]) == ("sent", 1)
    assert row["sent_at"] is not None
    # Sent once: the job delivered again finds it sent and does not call out.
    assert services.send_order_notification(order_id, kind="payment_confirmation",
                                            notifier=notifier) is False
    assert len(messaging.seen) == 1


def test_failed_send_is_recorded_in_its_own_transaction_and_retried(ctx, messaging):
    order_id = make_order()
    notifier = HttpNotifier(url=messaging.url)
    messaging.status = 503

    with pytest.raises(Exception) as failed:
        services.send_order_notification(order_id, kind="payment_confirmation",
                                         notifier=notifier)

    [row] = notifications(order_id)
    assert (row["status"], row["last_error"]) == ("failed", type(failed.value).__name__)
    assert messaging.seen[0]["sessions_in_transaction"] == 0

    messaging.status = 200
    assert services.send_order_notification(order_id, kind="payment_confirmation",
                                            notifier=notifier) is True
    [row] = notifications(order_id)
    assert (row["status"], row["attempts"], row["last_error"]) == ("sent", 2, None)
