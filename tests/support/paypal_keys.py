"""Throwaway PayPal signing material: a self-signed certificate and signed delivery headers.

Used by unit and integration tests and by the dev `send-test` command. The signed
string is built here independently of the verifier, so the two check each other.
"""

from __future__ import annotations

import base64
import uuid
import zlib
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

AUTH_ALGO = "SHA256withRSA"


def make_certificate(
    *, days_valid: int = 30, not_before_offset_days: int = -1
) -> tuple[rsa.RSAPrivateKey, bytes]:
    """Return a new RSA key and a self-signed PEM certificate for it.

    The certificate becomes valid `not_before_offset_days` from now and stays valid for
    `days_valid` days after that: `not_before_offset_days=-10, days_valid=5` gives a
    certificate that expired five days ago, `not_before_offset_days=1` one not yet valid.
    """
    private_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "messageverificationcerts.test")])
    not_before = datetime.now(UTC) + timedelta(days=not_before_offset_days)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_before + timedelta(days=days_valid))
        .sign(private_key, hashes.SHA256())
    )
    return private_key, certificate.public_bytes(serialization.Encoding.PEM)


def sign_delivery(
    private_key: rsa.RSAPrivateKey,
    *,
    body: bytes,
    webhook_id: str,
    cert_url: str,
    transmission_id: str | None = None,
    transmission_time: str | None = None,
) -> dict[str, str]:
    """Return the headers PayPal would send with `body`, signed with `private_key`."""
    if transmission_id is None:
        transmission_id = str(uuid.uuid4())
    if transmission_time is None:
        transmission_time = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    crc = zlib.crc32(body) & 0xFFFFFFFF
    message = f"{transmission_id}|{transmission_time}|{webhook_id}|{crc}".encode()
    signature = private_key.sign(message, padding.PKCS1v15(), hashes.SHA256())
    return {
        "PAYPAL-TRANSMISSION-ID": transmission_id,
        "PAYPAL-TRANSMISSION-TIME": transmission_time,
        "PAYPAL-TRANSMISSION-SIG": base64.b64encode(signature).decode("ascii"),
        "PAYPAL-CERT-URL": cert_url,
        "PAYPAL-AUTH-ALGO": AUTH_ALGO,
    }
