"""PayPal deliveries whose certificate is fetched over HTTPS from a local certificate host.

The host is a real TLS server on 127.0.0.1 (tests.support.cert_host) with a certificate
from a throwaway CA; the app pins that CA with PAYPAL_CA_BUNDLE, for the TLS connection
and for the chain of the PayPal certificate it fetches. What is asserted is the HTTP
answer, what the host was asked, and what was stored.
"""

from __future__ import annotations

import json
import time
import uuid
import zlib

import pytest

from tests.support.cert_host import CertificateHost
from tests.support.crc import crc32_twin
from tests.support.db import scalar
from tests.support.events import PAYPAL_WEBHOOK_ID
from tests.support.paypal_keys import make_ca, make_certificate, sign_delivery

CERT_PATH = "/v1/notifications/certs/CERT-360caa42-fca2a594-local"


@pytest.fixture(scope="module")
def authority():
    return make_ca("Racine Test PayPal Root")


@pytest.fixture
def host(authority, tmp_path):
    with CertificateHost(authority, tmp_path) as server:
        yield server


@pytest.fixture
def paypal_app(build_app, host, authority, tmp_path):
    bundle = tmp_path / "ca-bundle.pem"
    bundle.write_bytes(authority.pem)
    return build_app({"PAYPAL_CERT_PATH": None, "PAYPAL_CERT_URL_HOSTS": [host.netloc],
                      "PAYPAL_CA_BUNDLE": str(bundle), "PAYPAL_CERT_TIMEOUT_SECONDS": 1.0,
                      "PAYPAL_CERT_FAILURE_TTL_SECONDS": 30})


@pytest.fixture(autouse=True)
def _clean(ctx):
    """Empty tables before each test, and a context to read them after."""


def body(event_id: str | None = None) -> bytes:
    return json.dumps({"id": event_id or f"WH-{uuid.uuid4().hex[:16]}",
                       "event_type": "PAYMENT.CAPTURE.COMPLETED", "resource": {}}).encode()


def deliver(app, key, payload: bytes, cert_url: str, **kwargs):
    headers = sign_delivery(key, body=payload, webhook_id=PAYPAL_WEBHOOK_ID, cert_url=cert_url,
                            **kwargs)
    return app.test_client().post("/webhooks/paypal", data=payload, headers=headers)


def stored() -> int:
    return scalar("SELECT count(*) FROM webhook_events")


def test_certificate_chained_to_the_pinned_ca_is_fetched_over_https(paypal_app, host, authority):
    key, pem = make_certificate(issuer=authority.intermediate())
    host.files[CERT_PATH] = pem

    first = deliver(paypal_app, key, body(), host.url(CERT_PATH))
    again = deliver(paypal_app, key, body(), host.url(CERT_PATH))

    assert (first.status_code, again.status_code) == (200, 200), first.get_data(as_text=True)
    assert host.requests == [CERT_PATH]  # cached after the first fetch
    assert stored() == 2


def test_certificate_not_chained_to_the_pinned_ca_is_refused(paypal_app, host):
    key, pem = make_certificate(issuer=make_ca("Not Our Root"))
    host.files[CERT_PATH] = pem

    response = deliver(paypal_app, key, body(), host.url(CERT_PATH))

    assert response.status_code == 400
    assert "does not chain to a trusted root" in response.get_json()["reason"]
    assert host.requests == [CERT_PATH]
    assert stored() == 0


def test_self_signed_certificate_in_paypals_name_is_refused(paypal_app, host):
    key, pem = make_certificate()  # messageverificationcerts.paypal.com, signed by itself
    host.files[CERT_PATH] = pem

    response = deliver(paypal_app, key, body(), host.url(CERT_PATH))

    assert response.status_code == 400
    assert stored() == 0


@pytest.mark.parametrize("suffix", ["?x=1", "?", "#part"])
def test_certificate_url_with_a_query_or_fragment_is_refused_unfetched(paypal_app, host,
                                                                       authority, suffix):
    key, pem = make_certificate(issuer=authority)
    host.files[CERT_PATH] = pem

    response = deliver(paypal_app, key, body(), host.url(CERT_PATH) + suffix)

    assert response.status_code == 400
    assert "query or fragment" in response.get_json()["reason"]
    assert host.connections == 0
    assert stored() == 0


def test_certificate_host_that_times_out_is_a_503_and_remembered(paypal_app, host, authority):
    key, _ = make_certificate(issuer=authority)
    host.stall()

    began = time.monotonic()
    first = deliver(paypal_app, key, body(), host.url(CERT_PATH))
    took = time.monotonic() - began
    second = deliver(paypal_app, key, body(), host.url(CERT_PATH))

    for response in (first, second):
        assert response.status_code == 503, response.get_data(as_text=True)
        assert response.headers["Retry-After"]
        assert response.get_json()["error"] == "verification_unavailable"
    assert took < 10, took  # bounded by PAYPAL_CERT_TIMEOUT_SECONDS
    assert host.connections == 1  # the second delivery did not wait on the host again
    assert stored() == 0


def test_crc32_twin_is_refused_after_redis_is_flushed(client, paypal_signing):
    key, _ = paypal_signing
    original = body("WH-ORIGINAL")
    twin = crc32_twin('{"id": "WH-TWIN", "event_type": "PAYMENT.CAPTURE.COMPLETED",'
                      ' "resource": {"custom_id": "1"}, "pad": "{pad}"}', zlib.crc32(original))
    headers = sign_delivery(key, body=original, webhook_id=PAYPAL_WEBHOOK_ID,
                            cert_url="https://api.paypal.com" + CERT_PATH)

    assert client.post("/webhooks/paypal", data=original, headers=headers).status_code == 200
    client.application.extensions["redis"].flushdb()
    refused = client.post("/webhooks/paypal", data=twin, headers=headers)
    redelivered = client.post("/webhooks/paypal", data=original, headers=headers)

    assert refused.status_code == 400
    assert "replayed with a different body" in refused.get_json()["reason"]
    assert redelivered.status_code == 200
    assert redelivered.get_json()["status"] == "duplicate"
    assert scalar("SELECT count(*) FROM webhook_events") == 1
    assert scalar("SELECT count(*) FROM paypal_transmissions") == 1


def test_transmission_check_that_cannot_run_is_a_503(build_app, paypal_signing):
    key, _ = paypal_signing
    dead = build_app({"SQLALCHEMY_DATABASE_URI": "postgresql+psycopg://postgres@127.0.0.1:1/x"})
    payload = body()

    response = deliver(dead, key, payload, "https://api.paypal.com" + CERT_PATH)

    assert response.status_code == 503
    assert response.get_json()["error"] == "verification_unavailable"
    assert response.headers["Retry-After"]
