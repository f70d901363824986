"""Order confirmations through the HTTP notifier, against a local HTTP server standing in
for the messaging service."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests
from sqlalchemy import func, select

from service.orders.models import Notification
from service.orders.notify import HttpNotifier
from service.orders.services import send_order_notification
from tests.support.events import make_order


@pytest.fixture
def messaging():
    """A local server that records each POSTed JSON body and answers `status`."""
    received: list[dict] = []
    state = {"status": 202}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            length = int(self.headers["Content-Length"])
            received.append(json.loads(self.rfile.read(length)))
            self.send_response(state["status"])
            self.end_headers()

        def log_message(self, *_args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True,
                              kwargs={"poll_interval": 0.05})
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/notify", received, state
    server.shutdown()
    server.server_close()


def notifications(session, order_id: int) -> int:
    return session.scalar(select(func.count()).select_from(Notification)
                          .where(Notification.order_id == order_id))


def notification_states(session, order_id: int) -> list[tuple]:
    session.expire_all()
    return [tuple(row) for row in session.execute(
        select(Notification.status, Notification.last_error)
        .where(Notification.order_id == order_id))]


def test_a_confirmation_is_posted_once_per_order(ctx, messaging):
    url, received, _ = messaging
    notifier = HttpNotifier(url=url, timeout=5)
    order_id = make_order(total_cents=4200)

    first = send_order_notification(order_id, kind="payment_confirmation", notifier=notifier)
    ctx.commit()
    again = send_order_notification(order_id, kind="payment_confirmation", notifier=notifier)
    ctx.commit()

    assert (first, again) == (True, False)
    assert received == [{"order_id": order_id, "kind": "payment_confirmation",
                         "status": "pending", "total_cents": 4200, "currency": "EUR"}]
    assert notifications(ctx, order_id) == 1


def test_a_refused_post_raises_is_recorded_as_failed_and_the_retry_sends_it(ctx, messaging):
    url, received, state = messaging
    state["status"] = 503
    notifier = HttpNotifier(url=url, timeout=5)
    order_id = make_order()

    with pytest.raises(requests.HTTPError):
        send_order_notification(order_id, kind="payment_confirmation", notifier=notifier)
    ctx.rollback()  # what the base task does when the run raises

    # The outcome is recorded in its own transaction, with the error's class only.
    assert len(received) == 1
    assert notification_states(ctx, order_id) == [("failed", "HTTPError")]

    state["status"] = 202
    assert send_order_notification(order_id, kind="payment_confirmation", notifier=notifier)
    ctx.commit()

    assert len(received) == 2
    assert notification_states(ctx, order_id) == [("sent", None)]
