"""Local HTTP servers standing in for Stripe's and PayPal's refund APIs (127.0.0.1).

Each honours idempotency keys as the real provider does (the same key returns the same
refund), records every call, and can be told to decline or fail the next refunds.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs

import pytest

from service.extensions import db
from service.orders import services
from service.orders.gateways import gateways_from_config
from tests.support.events import make_order


class FakeProvider:
    def __init__(self, kind: str):
        self.kind = kind
        self.calls: list[dict] = []
        self.refunds: dict[str, dict] = {}  # idempotency key -> refund
        self.mode = "ok"  # ok | decline | error
        self.delay = 0.0
        # Stripe's status of a new refund ("pending" for a bank transfer refund, say).
        self.refund_status = "succeeded"
        # Called with the new refund's body before the answer leaves (a provider whose
        # webhook outruns its own HTTP answer).
        self.before_answer = None
        self._lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True,
                         kwargs={"poll_interval": 0.05}).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def refunded_total(self) -> int:
        return sum(r["amount"] for r in self.refunds.values())

    def _refund(self, key: str, payment: str, amount: int) -> tuple[int, dict]:
        time.sleep(self.delay)
        with self._lock:
            self.calls.append({"key": key, "payment": payment, "amount": amount})
            if key in self.refunds:
                return 200, self.refunds[key]["body"]
            if self.mode == "error":
                return 500, {"error": {"type": "api_error", "message": "boom"}}
            if self.mode == "decline":
                if self.kind == "stripe":
                    return 400, {"error": {"type": "invalid_request_error",
                                           "code": "charge_already_refunded",
                                           "message": "declined"}}
                return 422, {"name": "UNPROCESSABLE_ENTITY",
                             "details": [{"issue": "CAPTURE_FULLY_REFUNDED"}]}
            refund_id = (f"re_{uuid.uuid4().hex[:16]}" if self.kind == "stripe"
                         else f"RF{uuid.uuid4().hex[:14].upper()}")
            body = ({"id": refund_id, "object": "refund", "status": self.refund_status,
                     "amount": amount, "currency": "eur", "payment_intent": payment}
                    if self.kind == "stripe" else {"id": refund_id, "status": "COMPLETED"})
            self.refunds[key] = {"amount": amount, "payment": payment, "body": body}
        if self.before_answer is not None:
            self.before_answer(body)
        return 200, body

    def _handler(self):
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _answer(self, status: int, body: dict):
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self):
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
                if provider.kind == "stripe" and self.path == "/v1/refunds":
                    if not self.headers.get("Authorization", "").startswith("Bearer sk_"):
                        return self._answer(401, {"error": {"type": "invalid_request_error"}})
                    form = {k: v[0] for k, v in parse_qs(raw).items()}
                    return self._answer(*provider._refund(
                        self.headers.get("Idempotency-Key", ""), form["payment_intent"],
                        int(form["amount"])))
                if provider.kind == "paypal" and self.path == "/v1/oauth2/token":
                    return self._answer(200, {"access_token": "A21-test", "expires_in": 32400})
                if provider.kind == "paypal" and self.path.startswith("/v2/payments/captures/"):
                    if self.headers.get("Authorization") != "Bearer A21-test":
                        return self._answer(401, {"name": "AUTHENTICATION_FAILURE"})
                    body = json.loads(raw)
                    capture = self.path.split("/")[4]
                    cents = round(float(body["amount"]["value"]) * 100)
                    return self._answer(*provider._refund(
                        self.headers.get("PayPal-Request-Id", ""), capture, cents))
                return self._answer(404, {"error": "no such route"})

        return Handler


def provider_settings(stripe: FakeProvider, paypal: FakeProvider) -> dict:
    return {"STRIPE_API_KEY": "sk_test_local", "STRIPE_API_BASE": stripe.url,
            "PAYPAL_API_BASE": paypal.url, "PAYPAL_CLIENT_ID": "client",
            "PAYPAL_CLIENT_SECRET": "secret", "REFUND_PROVIDER_TIMEOUT_SECONDS": 5.0}


@pytest.fixture
def providers(clean):
    stripe, paypal = FakeProvider("stripe"), FakeProvider("paypal")
    saved = clean.extensions["refund_gateways"]
    clean.extensions["refund_gateways"] = gateways_from_config(
        {**clean.config, **provider_settings(stripe, paypal)})
    yield stripe, paypal
    clean.extensions["refund_gateways"] = saved
    stripe.stop()
    paypal.stop()


def paid_order(app, *, total=1000, provider="stripe", payment_id=None) -> tuple[int, str]:
    payment_id = payment_id or (f"pi_{uuid.uuid4().hex[:12]}" if provider == "stripe"
                                else f"CAP{uuid.uuid4().hex[:10].upper()}")
    with app.app_context():
        order_id = make_order(total_cents=total)
        services.record_payment(order_id=order_id, provider=provider,
                                provider_payment_id=payment_id, amount_cents=total,
                                currency="EUR", source="test")
        db.session.commit()
        db.session.remove()
    return order_id, payment_id


