"""Redaction keeps ids, amounts, currencies and types, and nothing personal."""

from __future__ import annotations

import json

from service.webhooks.retention import redact_payload

PERSONAL = ("Jane Doe", "jane@example.com", "4242", "1 Rue de la Paix", "+33 1 23 45 67 89",
            "buyer-note")


def stripe_charge() -> dict:
    return {
        "id": "evt_1", "object": "event", "type": "charge.refunded", "livemode": False,
        "created": 1700000000,
        "data": {"object": {
            "id": "ch_1", "object": "charge", "amount": 1000, "amount_refunded": 400,
            "amount_captured": 1000, "currency": "eur", "payment_intent": "pi_1",
            "status": "succeeded", "customer": "cus_secret", "receipt_email": "jane@example.com",
            "description": "buyer-note",
            "billing_details": {"name": "Jane Doe", "email": "jane@example.com",
                                "phone": "+33 1 23 45 67 89",
                                "address": {"line1": "1 Rue de la Paix"}},
            "payment_method_details": {"card": {"last4": "4242", "brand": "visa"}},
            "metadata": {"order_id": "42", "note": "Jane Doe"},
            "refunds": {"object": "list", "has_more": False, "data": [
                {"id": "re_1", "amount": 400, "currency": "eur", "status": "succeeded",
                 "reason": "buyer-note"}]},
        }},
    }


def paypal_capture() -> dict:
    return {
        "id": "WH-1", "event_type": "PAYMENT.CAPTURE.COMPLETED", "resource_type": "capture",
        "summary": "Payment completed for Jane Doe",
        "resource": {
            "id": "CAP-1", "status": "COMPLETED", "custom_id": "42", "invoice_id": "INV-7",
            "amount": {"currency_code": "EUR", "value": "10.00"},
            "seller_receivable_breakdown": {"gross_amount": {"currency_code": "EUR",
                                                             "value": "10.00"}},
            "payer": {"email_address": "jane@example.com", "name": {"given_name": "Jane"}},
            "links": [{"rel": "up", "href": "https://api.paypal.com/v2/payments/captures/CAP-1",
                       "method": "GET"}],
        },
    }


def test_stripe_payload_keeps_ids_amounts_currencies_types_only():
    redacted = json.loads(redact_payload(json.dumps(stripe_charge())))

    text = json.dumps(redacted)
    assert not [value for value in PERSONAL if value in text]
    assert "cus_secret" not in text
    charge = redacted["data"]["object"]
    assert (redacted["id"], redacted["type"], charge["id"], charge["payment_intent"]) == (
        "evt_1", "charge.refunded", "ch_1", "pi_1")
    assert (charge["amount"], charge["amount_refunded"], charge["currency"]) == (1000, 400, "eur")
    assert charge["metadata"] == {"order_id": "42"}
    assert charge["refunds"]["data"] == [{"id": "re_1", "amount": 400, "currency": "eur",
                                          "status": "succeeded"}]
    assert redacted["_redacted"] is True


def test_paypal_payload_keeps_ids_amounts_currencies_types_only():
    redacted = json.loads(redact_payload(json.dumps(paypal_capture())))

    text = json.dumps(redacted)
    assert not [value for value in PERSONAL if value in text]
    resource = redacted["resource"]
    assert (redacted["id"], redacted["event_type"], resource["id"], resource["custom_id"]) == (
        "WH-1", "PAYMENT.CAPTURE.COMPLETED", "CAP-1", "42")
    assert resource["amount"] == {"currency_code": "EUR", "value": "10.00"}
    assert resource["seller_receivable_breakdown"]["gross_amount"]["value"] == "10.00"
    assert resource["links"][0]["href"].endswith("/captures/CAP-1")
    assert "payer" not in resource


def test_redaction_is_stable_and_refuses_what_is_not_an_object():
    once = redact_payload(json.dumps(paypal_capture()))
    assert redact_payload(once) == once
    assert json.loads(redact_payload("not json jane@example.com")) == {"_redacted": True}
    assert json.loads(redact_payload('["jane@example.com"]')) == {"_redacted": True}
