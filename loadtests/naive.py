"""The naive pipeline: what a team would write in an afternoon, as the benchmark's reference.

    gunicorn loadtests.naive:app                       the intake
    celery -A loadtests.naive:celery worker -Q naive   the worker

Intake: `stripe.WebhookSignature.verify_header`, `json.loads`, then
`INSERT ... ON CONFLICT (provider, event_id) DO NOTHING RETURNING id` with its commit
through a pooled SQLAlchemy engine, `process_event.delay(id)` for a new row only, and
200. Task: `acks_late`, autoretry on OperationalError; in one transaction it locks the
event (`SELECT ... FOR UPDATE`), skips it unless it is `received`, and for
`payment_intent.succeeded` locks the order, inserts the payment ON CONFLICT DO NOTHING
and moves the order from pending to paid; then it marks the event.

It has tables of its own (`naive_*`, the same shape as the service's), so it never
touches the service's rows. What it does not guarantee, and the service does: there is
no bound on the queue (a burst grows it without limit); there is no lease (an event whose
worker is killed with kill -9 after the broker handed it over stays `received` for
ever unless the broker redelivers it); and an event whose `delay()` fails (the broker
down or restarted without its data) is stored and never processed: nothing looks for
it again.

Settings from the environment: DATABASE_URL, REDIS_URL, STRIPE_WEBHOOK_SECRET (the first
of a comma-separated list).
"""

from __future__ import annotations

import json
import os

import stripe
from celery import Celery
from flask import Flask, request
from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError

QUEUE = "naive"
SECRET = os.environ.get("STRIPE_WEBHOOK_SECRET", "whsec_racine_dev_secret").split(",")[0].strip()


def _database_url() -> str:
    url = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


engine = create_engine(_database_url(), pool_size=5, max_overflow=5, pool_pre_ping=False)

celery = Celery("naive", broker=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
celery.conf.update(task_default_queue=QUEUE, task_ignore_result=True, worker_hijack_root_logger=False)

app = Flask(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS naive_events (
    id BIGSERIAL PRIMARY KEY,
    provider VARCHAR(16) NOT NULL,
    event_id VARCHAR(255) NOT NULL,
    event_type VARCHAR(128) NOT NULL,
    payload TEXT NOT NULL,
    status VARCHAR(16) NOT NULL DEFAULT 'received',
    received_at TIMESTAMP NOT NULL DEFAULT now(),
    processed_at TIMESTAMP,
    UNIQUE (provider, event_id)
);
CREATE TABLE IF NOT EXISTS naive_orders (
    id BIGINT PRIMARY KEY,
    status VARCHAR(24) NOT NULL DEFAULT 'pending',
    currency VARCHAR(3) NOT NULL DEFAULT 'EUR',
    total_cents BIGINT NOT NULL,
    paid_cents BIGINT NOT NULL DEFAULT 0,
    updated_at TIMESTAMP NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS naive_payments (
    id BIGSERIAL PRIMARY KEY,
    order_id BIGINT NOT NULL REFERENCES naive_orders (id),
    provider VARCHAR(16) NOT NULL,
    provider_payment_id VARCHAR(255) NOT NULL,
    amount_cents BIGINT NOT NULL,
    currency VARCHAR(3) NOT NULL,
    status VARCHAR(24) NOT NULL,
    created_at TIMESTAMP NOT NULL DEFAULT now(),
    UNIQUE (provider, provider_payment_id)
);
"""


def create_schema(conn) -> None:
    """Create the naive tables and copy the service's orders (ids and totals) into them."""
    for statement in SCHEMA.split(";"):
        if statement.strip():
            conn.execute(statement)
    conn.execute("INSERT INTO naive_orders (id, status, currency, total_cents)"
                 " SELECT id, 'pending', currency, total_cents FROM orders"
                 " ON CONFLICT (id) DO NOTHING")


_INSERT = text(
    "INSERT INTO naive_events (provider, event_id, event_type, payload)"
    " VALUES (:provider, :event_id, :event_type, :payload)"
    " ON CONFLICT (provider, event_id) DO NOTHING RETURNING id")


@app.post("/webhooks/<provider>")
def receive(provider: str):
    payload = request.get_data(as_text=True)
    try:
        stripe.WebhookSignature.verify_header(
            payload, request.headers.get("Stripe-Signature", ""), SECRET, 300)
    except stripe.SignatureVerificationError:
        return {"error": "bad_signature"}, 400
    event = json.loads(payload)
    with engine.begin() as conn:
        row = conn.execute(_INSERT, {"provider": provider, "event_id": event["id"],
                                     "event_type": event["type"], "payload": payload}).first()
    if row is not None:
        process_event.delay(row[0])
    return {"status": "stored"}, 200


@celery.task(name="naive.process_event", acks_late=True, autoretry_for=(OperationalError,),
             retry_backoff=True, max_retries=8)
def process_event(event_pk: int) -> str:
    with engine.begin() as conn:
        row = conn.execute(text("SELECT status, event_type, payload FROM naive_events"
                                " WHERE id = :id FOR UPDATE"), {"id": event_pk}).first()
        if row is None or row.status != "received":
            return "skipped"
        status = "ignored"
        if row.event_type == "payment_intent.succeeded":
            intent = json.loads(row.payload)["data"]["object"]
            order_id = int(intent["metadata"]["order_id"])
            conn.execute(text("SELECT status FROM naive_orders WHERE id = :id FOR UPDATE"),
                         {"id": order_id})
            inserted = conn.execute(text(
                "INSERT INTO naive_payments (order_id, provider, provider_payment_id,"
                " amount_cents, currency, status)"
                " VALUES (:order_id, 'stripe', :payment_id, :amount, :currency, 'succeeded')"
                " ON CONFLICT (provider, provider_payment_id) DO NOTHING RETURNING id"),
                {"order_id": order_id, "payment_id": intent["id"],
                 "amount": intent["amount_received"], "currency": intent["currency"].upper()},
            ).first()
            if inserted is not None:
                conn.execute(text(
                    "UPDATE naive_orders SET status = 'paid', paid_cents = paid_cents + :amount,"
                    " updated_at = now() WHERE id = :id AND status = 'pending'"),
                    {"id": order_id, "amount": intent["amount_received"]})
            status = "processed"
        conn.execute(text("UPDATE naive_events SET status = :status, processed_at = now()"
                          " WHERE id = :id"), {"status": status, "id": event_pk})
    return status


@celery.task(name="naive.noop", acks_late=True)
def noop(event_pk: int) -> None:
    return None
