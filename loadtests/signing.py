"""Signed Stripe and PayPal deliveries for the load scenarios."""

from __future__ import annotations

import base64
import json
import time
import uuid
import zlib
from datetime import UTC, datetime, timedelta

import stripe
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID


def stripe_payment(order_id: int, amount: int, *, secret: str,
                   timestamp: int | None = None) -> tuple[str, bytes, dict, str]:
    """(event id, body, headers, provider payment id) of a payment_intent.succeeded."""
    event_id = f"evt_load_{uuid.uuid4().hex}"
    intent_id = f"pi_load_{uuid.uuid4().hex[:24]}"
    body = json.dumps({
        "id": event_id, "object": "event", "type": "payment_intent.succeeded",
        "created": int(time.time()), "livemode": False,
        "data": {"object": {"id": intent_id, "object": "payment_intent", "amount": amount,
                            "amount_received": amount, "currency": "eur",
                            "metadata": {"order_id": str(order_id)}}},
    }).encode()
    return event_id, body, stripe_headers(body, secret=secret, timestamp=timestamp), intent_id


def stripe_headers(body: bytes, *, secret: str, timestamp: int | None = None) -> dict:
    header = stripe.WebhookSignature.generate_signature_header(body.decode(), secret, timestamp)
    return {"Stripe-Signature": header, "Content-Type": "application/json"}


def paypal_capture(order_id: int, amount: int, *, private_key, webhook_id: str,
                   cert_url: str) -> tuple[str, bytes, dict, str]:
    """(event id, body, headers, capture id) of a PAYMENT.CAPTURE.COMPLETED."""
    event_id = f"WH-LOAD-{uuid.uuid4().hex[:20].upper()}"
    capture_id = f"CAP{uuid.uuid4().hex[:17].upper()}"
    body = json.dumps({
        "id": event_id, "event_type": "PAYMENT.CAPTURE.COMPLETED", "resource_type": "capture",
        "resource": {"id": capture_id, "status": "COMPLETED", "custom_id": str(order_id),
                     "amount": {"currency_code": "EUR", "value": f"{amount / 100:.2f}"}},
    }).encode()
    return event_id, body, paypal_headers(body, private_key=private_key, webhook_id=webhook_id,
                                          cert_url=cert_url), capture_id


def paypal_headers(body: bytes, *, private_key, webhook_id: str, cert_url: str,
                   transmission_id: str | None = None,
                   transmission_time: str | None = None) -> dict:
    """The headers PayPal sends with `body`, signed with `private_key`.

    The signed string is built here, not with the service's verifier, so each checks the
    other.
    """
    transmission_id = transmission_id or str(uuid.uuid4())
    transmission_time = transmission_time or datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    crc = zlib.crc32(body) & 0xFFFFFFFF
    message = f"{transmission_id}|{transmission_time}|{webhook_id}|{crc}".encode()
    signature = private_key.sign(message, padding.PKCS1v15(), hashes.SHA256())
    return {
        "PAYPAL-TRANSMISSION-ID": transmission_id,
        "PAYPAL-TRANSMISSION-TIME": transmission_time,
        "PAYPAL-TRANSMISSION-SIG": base64.b64encode(signature).decode(),
        "PAYPAL-CERT-URL": cert_url,
        "PAYPAL-AUTH-ALGO": "SHA256withRSA",
        "Content-Type": "application/json",
    }


def load_private_key(path: str):
    with open(path, "rb") as handle:
        return serialization.load_pem_private_key(handle.read(), password=None)


PAYPAL_SUBJECT = "messageverificationcerts.paypal.com"


def make_certificate(*, days_valid: int = 30, not_before_offset_days: int = -1,
                     common_name: str = PAYPAL_SUBJECT, issuer=None):
    """A new RSA key and a PEM certificate for it: (key, pem bytes).

    Self-signed, or signed by `issuer` (a CertificateAuthority from `make_ca`), in which
    case the PEM carries the issuer's chain below the root after the certificate, as
    PayPal serves it. The certificate becomes valid `not_before_offset_days` from now and
    stays valid for `days_valid` days after that: `not_before_offset_days=-10,
    days_valid=5` gives a certificate that expired five days ago.
    """
    key = _rsa_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    not_before = datetime.now(UTC) + timedelta(days=not_before_offset_days)
    builder = (x509.CertificateBuilder().subject_name(name).public_key(key.public_key())
               .serial_number(x509.random_serial_number()).not_valid_before(not_before)
               .not_valid_after(not_before + timedelta(days=days_valid)))
    if issuer is None:
        cert = builder.issuer_name(name).sign(key, hashes.SHA256())
        return key, cert.public_bytes(serialization.Encoding.PEM)
    cert = (builder.issuer_name(issuer.certificate.subject)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                issuer.key.public_key()), critical=False)
            .sign(issuer.key, hashes.SHA256()))
    return key, cert.public_bytes(serialization.Encoding.PEM) + issuer.chain_pem


class CertificateAuthority:
    """A throwaway CA: its key, its certificate, and the PEM of the chain below the root
    (empty for a root) that certificates it signs are served with."""

    def __init__(self, key, certificate, chain_pem: bytes = b""):
        self.key = key
        self.certificate = certificate
        self.chain_pem = chain_pem

    @property
    def pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    def intermediate(self, common_name: str = "Racine Test Intermediate CA"
                     ) -> CertificateAuthority:
        """A CA signed by this one, served together with its certificate."""
        return make_ca(common_name, issuer=self)


def make_ca(common_name: str = "Racine Test Root CA", *, issuer: CertificateAuthority | None = None,
            days_valid: int = 60) -> CertificateAuthority:
    """A CA certificate with the extensions path validation requires of one."""
    key = _rsa_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    signer_key, issuer_name = (key, name) if issuer is None else (issuer.key,
                                                                  issuer.certificate.subject)
    now = datetime.now(UTC)
    builder = (
        x509.CertificateBuilder().subject_name(name).issuer_name(issuer_name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1)).not_valid_after(now + timedelta(days=days_valid))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                     key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, key_cert_sign=True, crl_sign=True,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
    )
    if issuer is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()),
            critical=False)
    certificate = builder.sign(signer_key, hashes.SHA256())
    chain = b"" if issuer is None else (
        certificate.public_bytes(serialization.Encoding.PEM) + issuer.chain_pem)
    return CertificateAuthority(key, certificate, chain)


def make_tls_certificate(issuer: CertificateAuthority, host: str = "127.0.0.1"):
    """A TLS server certificate for `host` (an IP address or a DNS name): (key, pem)."""
    import ipaddress

    key = _rsa_key()
    try:
        alt_name = x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        alt_name = x509.DNSName(host)
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)]))
        .issuer_name(issuer.certificate.subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1)).not_valid_after(now + timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName([alt_name]), critical=False)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]),
                       critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
            issuer.key.public_key()), critical=False)
        .sign(issuer.key, hashes.SHA256())
    )
    return key, cert.public_bytes(serialization.Encoding.PEM) + issuer.chain_pem


def _rsa_key():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def make_key_and_certificate(directory) -> tuple[str, str]:
    """Write a throwaway RSA key and self-signed certificate; return their paths."""
    key, pem = make_certificate(days_valid=8)
    key_path = f"{directory}/paypal-load-key.pem"
    cert_path = f"{directory}/paypal-load-cert.pem"
    with open(key_path, "wb") as handle:
        handle.write(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    with open(cert_path, "wb") as handle:
        handle.write(pem)
    return key_path, cert_path
