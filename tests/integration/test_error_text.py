"""Stored and logged error text says what failed, never with payload values or SQL
parameters: an exception's own message can carry both (and personal data with them)."""

from __future__ import annotations

import json

import pytest

from tests.support.db import rows
from tests.support.events import stripe_event, stripe_headers

EMAIL = "jane.doe+leak@example.com"


@pytest.mark.parametrize(("via", "expected"), [
    ("python", "ValueError: unexpected error in the handler"),
    ("database", "DataError: the database refused a value"),
])
def test_failure_text_is_the_error_class_and_a_short_reason(client, ctx, capfd, via, expected):
    body, event_id = stripe_event("test.leaky", {"email": EMAIL, "via": via})
    assert client.post("/webhooks/stripe", data=body,
                       headers=stripe_headers(body)).status_code == 200
    [event] = rows("SELECT id FROM webhook_events WHERE event_id = :e", e=event_id)
    task = client.application.extensions["celery"].tasks["webhooks.process_event"]

    outcome = task.apply(args=[event["id"]]).get()

    assert outcome == "failed"
    [failure] = rows("SELECT error_message FROM webhook_failures")
    [stored] = rows("SELECT last_error, payload FROM webhook_events")
    [signal] = rows("SELECT details FROM alert_signals")
    assert failure["error_message"] == expected
    assert stored["last_error"] == expected
    assert json.loads(signal["details"])["error"] == expected
    assert EMAIL in stored["payload"]  # the payload itself is kept, for a replay
    logged = capfd.readouterr()
    assert EMAIL not in logged.err + logged.out
    assert "SELECT CAST" not in logged.err + logged.out
