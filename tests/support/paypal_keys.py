"""Throwaway PayPal signing material for tests: a self-signed certificate and signed
delivery headers. One implementation, shared with the load scenarios (loadtests.signing).
"""

from __future__ import annotations

from loadtests import signing

AUTH_ALGO = "SHA256withRSA"

make_certificate = signing.make_certificate
make_ca = signing.make_ca
make_tls_certificate = signing.make_tls_certificate
PAYPAL_SUBJECT = signing.PAYPAL_SUBJECT


def sign_delivery(private_key, *, body: bytes, webhook_id: str, cert_url: str,
                  transmission_id: str | None = None,
                  transmission_time: str | None = None) -> dict[str, str]:
    """Return the headers PayPal would send with `body`, signed with `private_key`."""
    headers = signing.paypal_headers(body, private_key=private_key, webhook_id=webhook_id,
                                     cert_url=cert_url, transmission_id=transmission_id,
                                     transmission_time=transmission_time)
    headers.pop("Content-Type")
    return headers
