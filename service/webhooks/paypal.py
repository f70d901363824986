"""PayPal's offline webhook verification, as strict as PayPal's own SDKs.

PayPal signs `transmission_id|transmission_time|webhook_id|crc32(body)` with the private
key of a certificate it serves from one of its own hosts, and names that certificate's
URL in the `PAYPAL-CERT-URL` header. The URL comes from the request, so it is attacker
input, and so is whatever it serves:

- the URL must be https, on an allowed host, under PayPal's certificate path, with no
  query, fragment or user part; it is normalised before it names a cache entry;
- the certificate must chain to a trusted root (the system trust store, or
  PAYPAL_CA_BUNDLE), carry PayPal's message-verification subject name, and be within
  its dates, as must every certificate of its chain;
- fetches are rate limited and failures are remembered for a short while; a fetch that
  fails is a 503 (the provider delivers again), never a 400;
- the signature covers only a CRC32 of the body, so each transmission id is recorded
  durably with the SHA-256 of its body, and a CRC32 twin is refused for ever.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import re
import ssl
import threading
import time
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol
from urllib.parse import urlsplit

import requests
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID
from cryptography.x509.verification import (
    ExtensionPolicy,
    PolicyBuilder,
    Store,
    VerificationError,
)
from limits import parse as parse_limit
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter

from service.webhooks.exceptions import SignatureError, VerificationUnavailable
from service.webhooks.verifiers import (
    DEFAULT_MAX_DEPTH,
    VerifiedEvent,
    decode_body,
    parse_event,
)

log = logging.getLogger(__name__)

Fetcher = Callable[[str, float], bytes]


class TransmissionLog(Protocol):
    def first_body(self, transmission_id: str, digest: str) -> bool:
        """Remember the body digest of a transmission; False if it came with another one.

        Raises VerificationUnavailable when it cannot tell."""


SUPPORTED_AUTH_ALGO = "SHA256withRSA"
MAX_CERT_BYTES = 64 * 1024
# Cached per URL, and the URL's last part is chosen by the sender: bound the cache so
# that many distinct names under the allowed path cannot grow it without limit.
MAX_CACHED_CERTS = 32
# PayPal stamps the time of the first try on every redelivery, so only a small skew is
# allowed the other way.
FUTURE_SKEW_SECONDS = 300
DEFAULT_TOLERANCE_SECONDS = 4 * 24 * 3600

HEADER_ID = "PAYPAL-TRANSMISSION-ID"
HEADER_TIME = "PAYPAL-TRANSMISSION-TIME"
HEADER_SIG = "PAYPAL-TRANSMISSION-SIG"
HEADER_CERT_URL = "PAYPAL-CERT-URL"
HEADER_AUTH_ALGO = "PAYPAL-AUTH-ALGO"

_HOSTNAME = re.compile(r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)*")
# urlsplit silently drops tabs and newlines while an HTTP client may not: refuse any URL
# whose characters could make the checked host differ from the fetched one.
_URL_CHARS = re.compile(r"[\x21-\x7e]+")
# The certificate's own name under the certificate path (CERT-360caa42-fca2a594-...).
_CERT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
# A transmission id is stored: printable ASCII, bounded.
_TRANSMISSION_ID = re.compile(r"[\x21-\x7e]{1,255}")


@dataclass(frozen=True)
class _Trusted:
    certificate: x509.Certificate
    valid_until: datetime  # the earliest end of validity along the verified chain


@dataclass(frozen=True)
class _Refused:
    kind: type[SignatureError | VerificationUnavailable]
    reason: str
    until: float  # monotonic


class PayPalVerifier:
    """Offline RSA-SHA256 verification against a fetched (verified) or pinned certificate.

    A pinned certificate (PAYPAL_CERT_PATH) is trusted as the operator configured it; a
    fetched one must chain to `ca_bundle` (None: the system trust store) and carry one of
    `subjects` as its common name.
    """

    provider = "paypal"

    def __init__(
        self,
        *,
        webhook_id: str,
        allowed_hosts: list[str],
        cert_path: str | None = None,
        cert_url_path: str = "/v1/notifications/certs/",
        subjects: list[str] | tuple[str, ...] = ("messageverificationcerts.paypal.com",),
        ca_bundle: str | None = None,
        fetch_timeout: float = 5.0,
        fetches_per_minute: int = 10,
        failure_ttl: float = 30.0,
        tolerance: int = DEFAULT_TOLERANCE_SECONDS,
        max_depth: int = DEFAULT_MAX_DEPTH,
        fetcher: Fetcher | None = None,
        transmissions: TransmissionLog | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        if not webhook_id:
            raise ValueError("PAYPAL_WEBHOOK_ID is empty")
        hosts = [host.strip().lower() for host in allowed_hosts if host.strip()]
        if any(host.split(":")[0].strip(".") == "" for host in hosts):
            raise ValueError("PAYPAL_CERT_URL_HOSTS contains an entry that matches every host")
        if not hosts and cert_path is None:
            raise ValueError("PAYPAL_CERT_URL_HOSTS is empty and no PAYPAL_CERT_PATH is set")
        if not (cert_url_path.startswith("/") and cert_url_path.endswith("/")):
            raise ValueError("PAYPAL_CERT_URL_PATH must start and end with '/'")
        self._webhook_id = webhook_id
        self._allowed_hosts = hosts
        self._cert_url_path = cert_url_path
        self._subjects = frozenset(subjects)
        self._ca_bundle = ca_bundle
        self._fetch_timeout = fetch_timeout
        self._failure_ttl = failure_ttl
        self._tolerance = tolerance
        self._max_depth = max_depth
        self._fetcher = fetcher or _download_with(ca_bundle)
        self._transmissions = transmissions
        self._clock = clock
        self._pinned = _load_pinned(cert_path) if cert_path is not None else None
        self._cache: dict[str, _Trusted] = {}
        self._refused: dict[str, _Refused] = {}
        self._fetch_limit = parse_limit(f"{max(fetches_per_minute, 1)}/minute")
        self._limiter = MovingWindowRateLimiter(MemoryStorage())
        self._store: Store | None = None
        self._lock = threading.Lock()

    def verify(self, body: bytes, headers: Mapping[str, str]) -> VerifiedEvent:
        transmission_id = _required(headers, HEADER_ID)
        transmission_time = _required(headers, HEADER_TIME)
        signature_b64 = _required(headers, HEADER_SIG)
        algo = headers.get(HEADER_AUTH_ALGO)
        if algo and algo != SUPPORTED_AUTH_ALGO:
            raise SignatureError("unsupported auth algorithm")
        # A '|' inside a field would let the same signed string be split differently.
        if "|" in transmission_id or "|" in transmission_time or \
                not _TRANSMISSION_ID.fullmatch(transmission_id):
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
        event = parse_event(self.provider, decode_body(body), type_field="event_type",
                            max_depth=self._max_depth)
        # Recorded only for a delivery that is otherwise accepted: a refused one leaves
        # no row. CRC32 collisions are easy to make, so a captured transmission must not
        # carry a different body the second time.
        if self._transmissions is not None and not self._transmissions.first_body(
            transmission_id, hashlib.sha256(body).hexdigest()
        ):
            raise SignatureError("transmission replayed with a different body")
        return event

    def _check_freshness(self, transmission_time: str) -> None:
        try:
            sent_at = datetime.fromisoformat(transmission_time)
        except ValueError:
            raise SignatureError(f"malformed {HEADER_TIME} header") from None
        if sent_at.tzinfo is None:
            # PayPal always sends a 'Z' suffix; read a bare time as UTC rather than local.
            sent_at = sent_at.replace(tzinfo=UTC)
        age = (datetime.now(UTC) - sent_at).total_seconds()
        if age > self._tolerance or age < -min(FUTURE_SKEW_SECONDS, self._tolerance):
            raise SignatureError("stale transmission time")

    # -- the certificate ------------------------------------------------------------

    def _certificate(self, headers: Mapping[str, str]) -> x509.Certificate:
        if self._pinned is not None:
            return self._pinned
        url, host = self._checked_url(_required(headers, HEADER_CERT_URL))
        now = self._clock()
        with self._lock:
            trusted = self._cache.get(url)
            refused = self._refused.get(url)
        if trusted is not None:
            if datetime.now(UTC) > trusted.valid_until:  # a CA of its chain expired
                raise SignatureError("certificate expired")
            return trusted.certificate
        if refused is not None and now < refused.until:
            raise refused.kind(refused.reason)
        try:
            trusted = self._fetch_and_verify(url, host)
        except (SignatureError, VerificationUnavailable) as exc:
            # Remembered for a while: a burst of deliveries naming a dead or bad
            # certificate costs one fetch, not one each.
            with self._lock:
                self._refused[url] = _Refused(type(exc), exc.reason, now + self._failure_ttl)
                _bound(self._refused)
            raise
        with self._lock:
            self._cache[url] = trusted
            _bound(self._cache)
            self._refused.pop(url, None)
        return trusted.certificate

    def _fetch_and_verify(self, url: str, host: str) -> _Trusted:
        # Fetched outside the lock so a slow download does not stall deliveries whose
        # certificate is cached; two concurrent first deliveries may both fetch, harmlessly.
        if not self._limiter.hit(self._fetch_limit, "paypal-cert-fetch"):
            log.warning("paypal certificate fetch rate limited", extra={"host": host})
            raise VerificationUnavailable("certificate fetches are rate limited; deliver again")
        try:
            chain = x509.load_pem_x509_certificates(self._fetcher(url, self._fetch_timeout))
        except Exception as exc:
            # Any failure at this edge (network, timeout, HTTP status, size, unparsable
            # PEM) means the same to the sender: try again later. The exception text may
            # echo the URL, so only its type and the (allowed) host are logged.
            log.warning("paypal certificate fetch failed",
                        extra={"host": host, "error": type(exc).__name__})
            raise VerificationUnavailable("certificate could not be fetched; deliver again") \
                from None
        leaf, intermediates = chain[0], chain[1:]
        _check_validity(leaf)
        try:
            verified = (
                PolicyBuilder().store(self._trust_store()).time(datetime.now(UTC))
                # PayPal's signing certificate is no TLS certificate: no name or usage
                # extension is required of it, only of the CAs above it.
                .extension_policies(ca_policy=ExtensionPolicy.webpki_defaults_ca(),
                                    ee_policy=ExtensionPolicy.permit_all())
                .build_client_verifier().verify(leaf, intermediates)
            )
        except VerificationError:
            log.warning("paypal certificate refused: not chained to a trusted root",
                        extra={"host": host})
            raise SignatureError("certificate does not chain to a trusted root") from None
        names = {attribute.value for attribute in
                 leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)}
        if not names & self._subjects:
            log.warning("paypal certificate refused: wrong subject", extra={"host": host})
            raise SignatureError("certificate is not PayPal's message-verification certificate")
        valid_until = min(cert.not_valid_after_utc for cert in verified.chain)
        return _Trusted(leaf, valid_until)

    def _trust_store(self) -> Store:
        with self._lock:
            if self._store is None:
                self._store = load_trust_store(self._ca_bundle)
            return self._store

    def _checked_url(self, url: str) -> tuple[str, str]:
        """The normalised URL and its host, if the URL may be fetched; else SignatureError."""
        if not _URL_CHARS.fullmatch(url):
            raise SignatureError(f"malformed {HEADER_CERT_URL} header")
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError:
            raise SignatureError(f"malformed {HEADER_CERT_URL} header") from None
        if parts.scheme.lower() != "https":
            raise SignatureError("certificate URL is not https")
        if "?" in url or "#" in url:
            raise SignatureError("certificate URL has a query or fragment")
        host = (parts.hostname or "").lower()
        if (
            "@" in parts.netloc
            or "\\" in url
            or not _HOSTNAME.fullmatch(host)
            or not self._host_allowed(host, port)
        ):
            raise SignatureError("certificate host not allowed")
        path = parts.path
        name = path[len(self._cert_url_path):]
        if not path.startswith(self._cert_url_path) or not _CERT_NAME.fullmatch(name) \
                or name in (".", ".."):
            raise SignatureError("certificate URL is not under the certificate path")
        netloc = host if port in (None, 443) else f"{host}:{port}"
        return f"https://{netloc}{path}", host

    def _host_allowed(self, host: str, port: int | None) -> bool:
        for entry in self._allowed_hosts:
            entry_host, _, entry_port = entry.partition(":")
            if entry_port:
                if host == entry_host and str(port) == entry_port:
                    return True
                continue
            if port not in (None, 443):
                continue
            if (entry.startswith(".") and host.endswith(entry)) or host == entry:
                return True
        return False


def load_trust_store(ca_bundle: str | None) -> Store:
    """The roots a PayPal certificate must chain to: the bundle given, else the system's."""
    path = ca_bundle or ssl.get_default_verify_paths().cafile
    if not path:
        import certifi  # requests' own bundle, where the system names none

        path = certifi.where()
    with open(path, "rb") as handle:
        roots = x509.load_pem_x509_certificates(handle.read())
    return Store(roots)


def download_certificate(url: str, timeout: float, *, verify: str | bool = True) -> bytes:
    """Download a certificate: no redirects, HTTP errors raise, at most MAX_CERT_BYTES.

    `verify`: the CA bundle the TLS connection trusts (True: requests' default).
    """
    with requests.get(url, timeout=timeout, allow_redirects=False, stream=True,
                      verify=verify) as response:
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


def _download_with(ca_bundle: str | None) -> Fetcher:
    def fetch(url: str, timeout: float) -> bytes:
        return download_certificate(url, timeout, verify=ca_bundle or True)
    return fetch


def _bound(cache: dict) -> None:
    while len(cache) > MAX_CACHED_CERTS:
        cache.pop(next(iter(cache)))


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
