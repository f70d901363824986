"""PayPal's offline webhook verification.

PayPal signs `transmission_id|transmission_time|webhook_id|crc32(body)` with the private
key of a certificate it serves from one of its own hosts, and names that certificate's
URL in the `PAYPAL-CERT-URL` header. The URL comes from the request, so it is attacker
input: only https URLs on an allow-listed host are ever fetched, and what is fetched is
cached per URL so a burst of deliveries costs one download.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import re
import threading
import zlib
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Protocol
from urllib.parse import urlsplit

import requests
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from service.webhooks.exceptions import SignatureError
from service.webhooks.verifiers import VerifiedEvent, decode_body, parse_event

log = logging.getLogger(__name__)

Fetcher = Callable[[str, float], bytes]


class TransmissionLog(Protocol):
    def first_body(self, transmission_id: str, digest: str) -> bool:
        """Remember the body digest of a transmission; False if it came with another one."""

SUPPORTED_AUTH_ALGO = "SHA256withRSA"
MAX_CERT_BYTES = 64 * 1024
# Cached per URL, and the URL's path is chosen by the sender: bound the cache so that
# many distinct paths on an allowed host cannot grow it without limit.
MAX_CACHED_CERTS = 32

HEADER_ID = "PAYPAL-TRANSMISSION-ID"
HEADER_TIME = "PAYPAL-TRANSMISSION-TIME"
HEADER_SIG = "PAYPAL-TRANSMISSION-SIG"
HEADER_CERT_URL = "PAYPAL-CERT-URL"
HEADER_AUTH_ALGO = "PAYPAL-AUTH-ALGO"

_HOSTNAME = re.compile(r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)*")
# urlsplit silently drops tabs and newlines while an HTTP client may not: refuse any URL
# whose characters could make the checked host differ from the fetched one.
_URL_CHARS = re.compile(r"[\x21-\x7e]+")


class PayPalVerifier:
    """Offline RSA-SHA256 verification against a fetched (allow-listed) or pinned certificate."""

    provider = "paypal"

    def __init__(
        self,
        *,
        webhook_id: str,
        allowed_hosts: list[str],
        cert_path: str | None = None,
        fetch_timeout: float = 5.0,
        tolerance: int = 0,
        fetcher: Fetcher | None = None,
        transmissions: TransmissionLog | None = None,
    ):
        if not webhook_id:
            raise ValueError("PAYPAL_WEBHOOK_ID is empty")
        hosts = [host.strip().lower() for host in allowed_hosts if host.strip()]
        if any(host.strip(".") == "" for host in hosts):
            raise ValueError("PAYPAL_CERT_URL_HOSTS contains an entry that matches every host")
        if not hosts and cert_path is None:
            raise ValueError("PAYPAL_CERT_URL_HOSTS is empty and no PAYPAL_CERT_PATH is set")
        self._webhook_id = webhook_id
        self._allowed_hosts = hosts
        self._fetch_timeout = fetch_timeout
        self._tolerance = tolerance
        self._fetcher = fetcher or download_certificate
        self._transmissions = transmissions
        self._pinned = _load_pinned(cert_path) if cert_path is not None else None
        self._cache: dict[str, x509.Certificate] = {}
        self._lock = threading.Lock()

    def verify(self, body: bytes, headers: Mapping[str, str]) -> VerifiedEvent:
        transmission_id = _required(headers, HEADER_ID)
        transmission_time = _required(headers, HEADER_TIME)
        signature_b64 = _required(headers, HEADER_SIG)
        algo = headers.get(HEADER_AUTH_ALGO)
        if algo and algo != SUPPORTED_AUTH_ALGO:
            raise SignatureError("unsupported auth algorithm")
        # A '|' inside a field would let the same signed string be split differently.
        if "|" in transmission_id or "|" in transmission_time:
            raise SignatureError("malformed transmission headers")
        signature = _decode_signature(signature_b64)
        if self._tolerance > 0:
            self._check_freshness(transmission_time)

        certificate = self._certificate(headers)
        _check_validity(certificate)
        public_key = certificate.public_key()
        if not isinstance(public_key, rsa.RSAPublicKey):
            raise SignatureError("certificate key is not RSA")

        crc = zlib.crc32(body) & 0xFFFFFFFF
        message = f"{transmission_id}|{transmission_time}|{self._webhook_id}|{crc}"
        try:
            public_key.verify(
                signature, message.encode("utf-8"), padding.PKCS1v15(), hashes.SHA256()
            )
        except InvalidSignature:
            raise SignatureError("signature does not match") from None
        # The signature covers only a CRC32 of the body, and CRC32 collisions are easy to
        # make: a captured transmission must not carry a different body the second time.
        if self._transmissions is not None and not self._transmissions.first_body(
            transmission_id, hashlib.sha256(body).hexdigest()
        ):
            raise SignatureError("transmission replayed with a different body")
        return parse_event(self.provider, decode_body(body), type_field="event_type")

    def _check_freshness(self, transmission_time: str) -> None:
        try:
            sent_at = datetime.fromisoformat(transmission_time)
        except ValueError:
            raise SignatureError(f"malformed {HEADER_TIME} header") from None
        if sent_at.tzinfo is None:
            # PayPal always sends a 'Z' suffix; read a bare time as UTC rather than local.
            sent_at = sent_at.replace(tzinfo=UTC)
        if abs((datetime.now(UTC) - sent_at).total_seconds()) > self._tolerance:
            raise SignatureError("stale transmission time")

    def _certificate(self, headers: Mapping[str, str]) -> x509.Certificate:
        if self._pinned is not None:
            return self._pinned
        url = _required(headers, HEADER_CERT_URL)
        host = self._checked_host(url)
        with self._lock:
            cached = self._cache.get(url)
        if cached is not None:
            return cached
        # Fetched outside the lock so a slow download does not stall deliveries whose
        # certificate is cached; two concurrent first deliveries may both fetch, harmlessly.
        try:
            pem = self._fetcher(url, self._fetch_timeout)
            certificate = x509.load_pem_x509_certificate(pem)
        except Exception as exc:
            # Any failure at this edge (network, HTTP status, size, unparsable PEM) means
            # the same to the sender; the exception text may echo the URL, so only its
            # type and the (allow-listed) host are logged.
            log.warning(
                "paypal certificate fetch failed",
                extra={"host": host, "error": type(exc).__name__},
            )
            raise SignatureError("certificate could not be fetched") from None
        with self._lock:
            if len(self._cache) >= MAX_CACHED_CERTS:
                self._cache.pop(next(iter(self._cache)))
            self._cache[url] = certificate
        return certificate

    def _checked_host(self, url: str) -> str:
        """Return the URL's host if the URL may be fetched, else raise SignatureError."""
        if not _URL_CHARS.fullmatch(url):
            raise SignatureError(f"malformed {HEADER_CERT_URL} header")
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError:
            raise SignatureError(f"malformed {HEADER_CERT_URL} header") from None
        if parts.scheme.lower() != "https":
            raise SignatureError("certificate URL is not https")
        host = (parts.hostname or "").lower()
        if (
            "@" in parts.netloc
            or port not in (None, 443)
            or not _HOSTNAME.fullmatch(host)
            or not self._host_allowed(host)
        ):
            raise SignatureError("certificate host not allowed")
        return host

    def _host_allowed(self, host: str) -> bool:
        for entry in self._allowed_hosts:
            if entry.startswith("."):
                if host.endswith(entry):
                    return True
            elif host == entry:
                return True
        return False


def download_certificate(url: str, timeout: float) -> bytes:
    """Download a certificate: no redirects, HTTP errors raise, at most MAX_CERT_BYTES."""
    with requests.get(url, timeout=timeout, allow_redirects=False, stream=True) as response:
        response.raise_for_status()
        if response.status_code != 200:
            # raise_for_status lets a 3xx through; a redirect could leave the allow-list.
            raise requests.HTTPError(f"unexpected status {response.status_code}")
        chunks = []
        size = 0
        for chunk in response.iter_content(chunk_size=8192):
            size += len(chunk)
            if size > MAX_CERT_BYTES:
                raise ValueError("certificate response too large")
            chunks.append(chunk)
    return b"".join(chunks)


def _required(headers: Mapping[str, str], name: str) -> str:
    value = headers.get(name)
    if not value:
        raise SignatureError(f"missing {name} header")
    return value


def _decode_signature(value: str) -> bytes:
    try:
        signature = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise SignatureError(f"malformed {HEADER_SIG} header") from None
    if not signature:
        raise SignatureError(f"malformed {HEADER_SIG} header")
    return signature


def _check_validity(certificate: x509.Certificate) -> None:
    now = datetime.now(UTC)
    if now < certificate.not_valid_before_utc:
        raise SignatureError("certificate not yet valid")
    if now > certificate.not_valid_after_utc:
        raise SignatureError("certificate expired")


def _load_pinned(path: str) -> x509.Certificate:
    try:
        with open(path, "rb") as handle:
            return x509.load_pem_x509_certificate(handle.read())
    except (OSError, ValueError) as exc:
        raise ValueError("PAYPAL_CERT_PATH is not a readable PEM certificate") from exc
