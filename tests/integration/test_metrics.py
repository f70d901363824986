"""`GET /metrics`: counts from every process, batched in memory, read back as Prometheus text."""

from __future__ import annotations

import re

from tests.support.events import stripe_event, stripe_headers


def counter(text: str, name: str, **labels: str) -> int:
    inner = ",".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
    found = re.search(rf"^{re.escape(name)}\{{{re.escape(inner)}\}} (\d+)$", text, re.MULTILINE)
    return int(found[1]) if found else 0


def test_deliveries_are_counted_by_outcome_without_a_round_trip_each(client, clean):
    name = "racine_webhooks_deliveries_total"
    before = client.get("/metrics").get_data(as_text=True)
    body, _ = stripe_event("payment_intent.succeeded", {"id": "pi_metrics"})
    for _ in range(3):  # one stored, two redeliveries
        assert client.post("/webhooks/stripe", data=body,
                           headers=stripe_headers(body)).status_code == 200
    forged = client.post("/webhooks/stripe", data=body,
                         headers=stripe_headers(body, secret="whsec_wrong"))
    assert forged.status_code == 400

    response = client.get("/metrics")

    assert response.status_code == 200
    assert response.mimetype == "text/plain"
    after = response.get_data(as_text=True)
    assert "# TYPE racine_webhooks_deliveries_total counter" in after
    delta = {outcome: counter(after, name, outcome=outcome, provider="stripe")
             - counter(before, name, outcome=outcome, provider="stripe")
             for outcome in ("stored", "duplicate", "bad_signature")}
    assert delta == {"stored": 1, "duplicate": 2, "bad_signature": 1}
