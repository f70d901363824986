from __future__ import annotations

import json
import zlib
from datetime import UTC, datetime, timedelta

import pytest
import requests
from werkzeug.datastructures import Headers

from service.webhooks import paypal
from service.webhooks.exceptions import MalformedEvent, SignatureError, VerificationUnavailable
from service.webhooks.paypal import PayPalVerifier, download_certificate
from tests.support.crc import crc32_twin
from tests.support.paypal_keys import make_ca, make_certificate, sign_delivery

WEBHOOK_ID = "WH-TEST-0001"
CERT_URL = "https://api.paypal.com/v1/notifications/certs/CERT-360caa42-fca2a594-test"
ALLOWED_HOSTS = [".paypal.com"]
BODY = json.dumps(
    {"id": "WH-EVENT-1", "event_type": "PAYMENT.CAPTURE.COMPLETED", "resource": {"id": "CAP-1"}}
).encode()


class FakeFetcher:
    """Serves certificates by URL, counting calls, as the HTTP edge would."""

    def __init__(self, certs: dict[str, bytes] | None = None, error: Exception | None = None):
        self.certs = certs or {}
        self.error = error
        self.calls: list[tuple[str, float]] = []

    def __call__(self, url: str, timeout: float) -> bytes:
        self.calls.append((url, timeout))
        if self.error is not None:
            raise self.error
        return self.certs[url]


@pytest.fixture(scope="module")
def authority():
    """The root the verifier trusts (as PAYPAL_CA_BUNDLE), and that signs the certificates."""
    return make_ca()


@pytest.fixture(scope="module")
def ca_bundle(authority, tmp_path_factory):
    path = tmp_path_factory.mktemp("ca") / "bundle.pem"
    path.write_bytes(authority.pem)
    return str(path)


@pytest.fixture(autouse=True)
def _trust(ca_bundle, monkeypatch):
    """Every verifier made here trusts the test root unless a test says otherwise."""
    monkeypatch.setitem(DEFAULTS, "ca_bundle", ca_bundle)


@pytest.fixture(scope="module")
def signing_pair(authority):
    return make_certificate(issuer=authority)


@pytest.fixture
def key(signing_pair):
    return signing_pair[0]


@pytest.fixture
def fetcher(signing_pair):
    return FakeFetcher({CERT_URL: signing_pair[1]})


DEFAULTS: dict = {}


def make_verifier(fetcher, **overrides) -> PayPalVerifier:
    options = {"webhook_id": WEBHOOK_ID, "allowed_hosts": ALLOWED_HOSTS, "fetcher": fetcher,
               "tolerance": 0, **DEFAULTS}
    options.update(overrides)
    return PayPalVerifier(**options)


def signed(key, body: bytes = BODY, cert_url: str = CERT_URL, **kwargs) -> dict[str, str]:
    return sign_delivery(key, body=body, webhook_id=WEBHOOK_ID, cert_url=cert_url, **kwargs)


def later_clock(monkeypatch, delta: timedelta) -> None:
    real_datetime = paypal.datetime

    class Later(real_datetime):
        @classmethod
        def now(cls, tz=None):
            return real_datetime.now(tz) + delta

    monkeypatch.setattr(paypal, "datetime", Later)


def test_valid_delivery_with_fetched_certificate_is_accepted(key, fetcher):
    event = make_verifier(fetcher).verify(BODY, signed(key))

    assert event.provider == "paypal"
    assert event.event_id == "WH-EVENT-1"
    assert event.event_type == "PAYMENT.CAPTURE.COMPLETED"
    assert event.body == BODY.decode()
    assert event.data["resource"] == {"id": "CAP-1"}
    assert fetcher.calls == [(CERT_URL, 5.0)]


def test_valid_delivery_with_pinned_certificate_is_accepted_without_fetching(
    tmp_path, signing_pair
):
    key, pem = signing_pair
    cert_file = tmp_path / "paypal.pem"
    cert_file.write_bytes(pem)
    fetcher = FakeFetcher()
    verifier = make_verifier(fetcher, allowed_hosts=[], cert_path=str(cert_file))

    # The pinned certificate wins: the header's URL is neither checked nor fetched.
    event = verifier.verify(BODY, signed(key, cert_url="http://evil.test/cert.pem"))

    assert event.event_id == "WH-EVENT-1"
    assert fetcher.calls == []


def test_pinned_certificate_needs_no_cert_url_header(tmp_path, signing_pair):
    key, pem = signing_pair
    cert_file = tmp_path / "paypal.pem"
    cert_file.write_bytes(pem)
    headers = signed(key)
    del headers["PAYPAL-CERT-URL"]

    event = make_verifier(FakeFetcher(), cert_path=str(cert_file)).verify(BODY, headers)

    assert event.event_id == "WH-EVENT-1"


def test_unreadable_pinned_certificate_fails_at_construction(tmp_path):
    cert_file = tmp_path / "paypal.pem"
    cert_file.write_bytes(b"not a certificate")

    with pytest.raises(ValueError, match="PAYPAL_CERT_PATH"):
        make_verifier(FakeFetcher(), cert_path=str(cert_file))


def test_headers_are_read_case_insensitively_from_werkzeug_headers(key, fetcher):
    # PayPal itself sends mixed-case names such as Paypal-Transmission-Id.
    headers = Headers([(name.title(), value) for name, value in signed(key).items()])

    assert make_verifier(fetcher).verify(BODY, headers).event_id == "WH-EVENT-1"


def test_tampered_body_is_rejected(key, fetcher):
    headers = signed(key)
    tampered = BODY.replace(b"CAP-1", b"CAP-2")

    with pytest.raises(SignatureError, match="signature does not match"):
        make_verifier(fetcher).verify(tampered, headers)


def test_signature_for_another_webhook_id_is_rejected(key, fetcher):
    headers = sign_delivery(key, body=BODY, webhook_id="WH-SOMEONE-ELSE", cert_url=CERT_URL)

    with pytest.raises(SignatureError, match="signature does not match"):
        make_verifier(fetcher).verify(BODY, headers)


def test_tampered_transmission_id_is_rejected(key, fetcher):
    headers = signed(key)
    headers["PAYPAL-TRANSMISSION-ID"] = "another-id"

    with pytest.raises(SignatureError, match="signature does not match"):
        make_verifier(fetcher).verify(BODY, headers)


def test_signature_from_another_key_is_rejected(fetcher, authority):
    other_key, _ = make_certificate(issuer=authority)

    with pytest.raises(SignatureError, match="signature does not match"):
        make_verifier(fetcher).verify(BODY, signed(other_key))


@pytest.mark.parametrize(
    "cert_url",
    [
        "http://api.paypal.com/v1/notifications/certs/CERT-1",
        "ftp://api.paypal.com/cert.pem",
        "//api.paypal.com/cert.pem",
        "https://evilpaypal.com/cert.pem",
        "https://paypal.com.evil.test/cert.pem",
        "https://api.paypal.com.evil.test/cert.pem",
        "https://api.paypal.com@evil.test/cert.pem",
        "https://user:pass@api.paypal.com/cert.pem",
        "https://api.paypal.com:8443/cert.pem",
        "https://api.paypal.com:0/cert.pem",
        "https://api.paypal.com:notaport/cert.pem",
        "https://evil.test\\.paypal.com/cert.pem",
        "https://api.paypal.com\\@evil.test/cert.pem",
        "https://api.paypal.com./cert.pem",
        "https://api.pay\npal.com/cert.pem",
        "https://api.paypal.com /cert.pem",
        "https://[::1]/cert.pem",
        "https://127.0.0.1/cert.pem",
        "not a url",
    ],
)
def test_certificate_url_off_the_allow_list_is_rejected_and_never_fetched(key, cert_url):
    fetcher = FakeFetcher()

    with pytest.raises(SignatureError) as excinfo:
        make_verifier(fetcher).verify(BODY, signed(key, cert_url=cert_url))

    assert fetcher.calls == []
    assert "evil" not in excinfo.value.reason


def test_disallowed_host_gives_a_short_reason(key):
    with pytest.raises(SignatureError, match=r"^certificate host not allowed$"):
        make_verifier(FakeFetcher()).verify(
            BODY, signed(key, cert_url="https://evilpaypal.com/cert.pem")
        )


def test_exact_host_entry_allows_only_that_host(signing_pair):
    key, pem = signing_pair
    fetcher = FakeFetcher({CERT_URL: pem})
    verifier = make_verifier(fetcher, allowed_hosts=["api.paypal.com"])
    exact_url = CERT_URL.replace("api.paypal.com", "API.PayPal.com")

    assert verifier.verify(BODY, signed(key, cert_url=exact_url)).event_id == "WH-EVENT-1"
    with pytest.raises(SignatureError, match="certificate host not allowed"):
        verifier.verify(BODY, signed(key, cert_url=CERT_URL.replace("api.", "x.api.")))
    assert [url for url, _ in fetcher.calls] == [CERT_URL]  # fetched as normalised


def test_explicit_default_port_is_allowed_and_normalised_away(signing_pair):
    key, pem = signing_pair
    url = CERT_URL.replace("api.paypal.com", "api.paypal.com:443")
    fetcher = FakeFetcher({CERT_URL: pem})
    verifier = make_verifier(fetcher)

    assert verifier.verify(BODY, signed(key, cert_url=url)).event_id == "WH-EVENT-1"
    assert verifier.verify(BODY, signed(key)).event_id == "WH-EVENT-1"
    assert [url for url, _ in fetcher.calls] == [CERT_URL]  # one cache entry for both


def test_host_entry_with_a_port_allows_that_port_only(signing_pair):
    key, pem = signing_pair
    url = "https://127.0.0.1:8443/v1/notifications/certs/CERT-LOCAL"
    fetcher = FakeFetcher({url: pem})
    verifier = make_verifier(fetcher, allowed_hosts=["127.0.0.1:8443"])

    assert verifier.verify(BODY, signed(key, cert_url=url)).event_id == "WH-EVENT-1"
    for other in (url.replace(":8443", ":8444"), url.replace(":8443", "")):
        with pytest.raises(SignatureError, match="certificate host not allowed"):
            verifier.verify(BODY, signed(key, cert_url=other))


@pytest.mark.parametrize(("cert_url", "reason"), [
    (CERT_URL + "?x=1", "query or fragment"),
    (CERT_URL + "?", "query or fragment"),
    (CERT_URL + "#frag", "query or fragment"),
    ("https://api.paypal.com/cert.pem", "not under the certificate path"),
    ("https://api.paypal.com/v1/notifications/certs/", "not under the certificate path"),
    ("https://api.paypal.com/v1/notifications/certs/../../v2/x", "not under the certificate path"),
    ("https://api.paypal.com/v1/notifications/certs/a/b", "not under the certificate path"),
    ("https://api.paypal.com/v1/notifications/certs/%2e%2e", "not under the certificate path"),
    ("https://api.paypal.com/v1/notifications/certsX/CERT-1", "not under the certificate path"),
    ("https://api.paypal.com/V1/notifications/certs/CERT-1", "not under the certificate path"),
])
def test_certificate_url_must_be_a_plain_path_under_the_certificate_path(key, cert_url, reason):
    fetcher = FakeFetcher()

    with pytest.raises(SignatureError, match=reason):
        make_verifier(fetcher).verify(BODY, signed(key, cert_url=cert_url))
    assert fetcher.calls == []


def test_allow_list_entry_matching_every_host_is_refused():
    with pytest.raises(ValueError):
        PayPalVerifier(webhook_id=WEBHOOK_ID, allowed_hosts=["."])


def test_verifier_without_allow_list_or_pinned_certificate_is_refused():
    with pytest.raises(ValueError):
        PayPalVerifier(webhook_id=WEBHOOK_ID, allowed_hosts=[])


def test_empty_webhook_id_is_refused():
    with pytest.raises(ValueError):
        PayPalVerifier(webhook_id="", allowed_hosts=ALLOWED_HOSTS)


def test_expired_certificate_is_rejected(authority):
    key, pem = make_certificate(not_before_offset_days=-10, days_valid=5, issuer=authority)

    with pytest.raises(SignatureError, match="certificate expired"):
        make_verifier(FakeFetcher({CERT_URL: pem})).verify(BODY, signed(key))


def test_cached_certificate_is_rejected_once_it_expires(monkeypatch, key, fetcher):
    verifier = make_verifier(fetcher)
    verifier.verify(BODY, signed(key))

    later_clock(monkeypatch, timedelta(days=60))

    with pytest.raises(SignatureError, match="certificate expired"):
        verifier.verify(BODY, signed(key))
    assert len(fetcher.calls) == 1


def test_not_yet_valid_certificate_is_rejected(authority):
    key, pem = make_certificate(not_before_offset_days=1, issuer=authority)

    with pytest.raises(SignatureError, match="certificate not yet valid"):
        make_verifier(FakeFetcher({CERT_URL: pem})).verify(BODY, signed(key))


@pytest.mark.parametrize(
    "header",
    [
        "PAYPAL-TRANSMISSION-ID",
        "PAYPAL-TRANSMISSION-TIME",
        "PAYPAL-TRANSMISSION-SIG",
        "PAYPAL-CERT-URL",
    ],
)
def test_missing_required_header_is_rejected(key, fetcher, header):
    headers = signed(key)
    del headers[header]

    with pytest.raises(SignatureError, match=f"^missing {header} header$"):
        make_verifier(fetcher).verify(BODY, headers)
    assert fetcher.calls == []


@pytest.mark.parametrize("header", ["PAYPAL-TRANSMISSION-ID", "PAYPAL-TRANSMISSION-SIG"])
def test_empty_required_header_is_rejected(key, fetcher, header):
    headers = signed(key)
    headers[header] = ""

    with pytest.raises(SignatureError, match=f"missing {header} header"):
        make_verifier(fetcher).verify(BODY, headers)


@pytest.mark.parametrize("bad_signature", ["not base64!", "abc", "====", "QUJD\nREVG"])
def test_malformed_base64_signature_is_rejected(key, fetcher, bad_signature):
    headers = signed(key)
    headers["PAYPAL-TRANSMISSION-SIG"] = bad_signature

    with pytest.raises(SignatureError, match="malformed PAYPAL-TRANSMISSION-SIG header"):
        make_verifier(fetcher).verify(BODY, headers)
    assert fetcher.calls == []


def test_well_formed_but_wrong_signature_is_rejected(key, fetcher):
    headers = signed(key)
    headers["PAYPAL-TRANSMISSION-SIG"] = "QUJDREVG"

    with pytest.raises(SignatureError, match="signature does not match"):
        make_verifier(fetcher).verify(BODY, headers)


@pytest.mark.parametrize("algo", ["SHA1withRSA", "sha256withrsa", "SHA256withECDSA", "none"])
def test_unsupported_auth_algorithm_is_rejected(key, fetcher, algo):
    headers = signed(key)
    headers["PAYPAL-AUTH-ALGO"] = algo

    with pytest.raises(SignatureError, match="unsupported auth algorithm"):
        make_verifier(fetcher).verify(BODY, headers)


def test_missing_auth_algorithm_is_accepted(key, fetcher):
    headers = signed(key)
    del headers["PAYPAL-AUTH-ALGO"]

    assert make_verifier(fetcher).verify(BODY, headers).event_id == "WH-EVENT-1"


def test_separator_inside_a_signed_field_is_rejected(key, fetcher):
    headers = signed(key, transmission_id="abc|2026-11-28T13:00:00Z")

    with pytest.raises(SignatureError, match="malformed transmission headers"):
        make_verifier(fetcher).verify(BODY, headers)


def _iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


@pytest.mark.parametrize("offset", [timedelta(minutes=-10), timedelta(minutes=10)])
def test_stale_transmission_time_is_rejected_when_tolerance_is_set(key, fetcher, offset):
    headers = signed(key, transmission_time=_iso(datetime.now(UTC) + offset))

    with pytest.raises(SignatureError, match="stale transmission time"):
        make_verifier(fetcher, tolerance=300).verify(BODY, headers)
    assert fetcher.calls == []


def test_recent_transmission_time_is_accepted_when_tolerance_is_set(key, fetcher):
    headers = signed(key, transmission_time=_iso(datetime.now(UTC) - timedelta(seconds=30)))

    assert make_verifier(fetcher, tolerance=300).verify(BODY, headers).event_id == "WH-EVENT-1"


def test_old_transmission_time_is_accepted_when_tolerance_is_disabled(key, fetcher):
    headers = signed(key, transmission_time="2020-01-01T00:00:00Z")

    assert make_verifier(fetcher, tolerance=0).verify(BODY, headers).event_id == "WH-EVENT-1"


def test_unparsable_transmission_time_is_rejected_when_tolerance_is_set(key, fetcher):
    headers = signed(key, transmission_time="yesterday")

    with pytest.raises(SignatureError, match="malformed PAYPAL-TRANSMISSION-TIME header"):
        make_verifier(fetcher, tolerance=300).verify(BODY, headers)


def test_certificate_is_fetched_once_for_many_verifications(key, fetcher):
    verifier = make_verifier(fetcher)

    for number in range(5):
        body = json.dumps({"id": f"WH-{number}", "event_type": "PAYMENT.SALE.COMPLETED"}).encode()
        assert verifier.verify(body, signed(key, body=body)).event_id == f"WH-{number}"

    assert len(fetcher.calls) == 1


def test_fetch_failure_asks_for_another_delivery_without_details(key):
    secret_path = "https://api.paypal.com/v1/notifications/certs/secret-name-from-sender"
    fetcher = FakeFetcher(error=requests.ConnectionError(f"cannot reach {secret_path}"))

    with pytest.raises(VerificationUnavailable) as excinfo:
        make_verifier(fetcher).verify(BODY, signed(key, cert_url=secret_path))

    assert excinfo.value.status_code == 503  # the provider delivers again; never a 400
    assert excinfo.value.retry_after
    assert excinfo.value.reason == "certificate could not be fetched; deliver again"
    assert excinfo.value.__cause__ is None
    assert excinfo.value.__suppress_context__


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_failed_fetch_is_remembered_for_a_short_while(signing_pair):
    key, pem = signing_pair
    fetcher = FakeFetcher(error=requests.Timeout("slow"))
    clock = Clock()
    verifier = make_verifier(fetcher, failure_ttl=30, clock=clock)
    for _ in range(3):
        with pytest.raises(VerificationUnavailable, match="certificate could not be fetched"):
            verifier.verify(BODY, signed(key))
    assert len(fetcher.calls) == 1  # a burst against a dead host costs one fetch

    fetcher.error = None
    fetcher.certs[CERT_URL] = pem
    clock.now += 31

    assert verifier.verify(BODY, signed(key)).event_id == "WH-EVENT-1"
    assert len(fetcher.calls) == 2


def test_certificate_fetches_are_rate_limited(signing_pair):
    key, pem = signing_pair
    urls = [f"{CERT_URL}-{n}" for n in range(3)]
    fetcher = FakeFetcher(dict.fromkeys(urls, pem))
    verifier = make_verifier(fetcher, fetches_per_minute=2)

    for url in urls[:2]:
        assert verifier.verify(BODY, signed(key, cert_url=url)).event_id == "WH-EVENT-1"
    with pytest.raises(VerificationUnavailable, match="rate limited"):
        verifier.verify(BODY, signed(key, cert_url=urls[2]))

    assert [url for url, _ in fetcher.calls] == urls[:2]
    # Cached certificates are not fetches: they still verify.
    assert verifier.verify(BODY, signed(key, cert_url=urls[0])).event_id == "WH-EVENT-1"


def test_unparsable_fetched_certificate_asks_for_another_delivery(key):
    fetcher = FakeFetcher({CERT_URL: b"<html>not a certificate</html>"})

    with pytest.raises(VerificationUnavailable, match="certificate could not be fetched"):
        make_verifier(fetcher).verify(BODY, signed(key))


# ---- the certificate chain and its subject ---------------------------------------------

def test_self_signed_certificate_in_paypals_name_is_refused():
    # Exactly what a forger makes: the right name, a key of their own, no chain.
    forger_key, forged = make_certificate()
    fetcher = FakeFetcher({CERT_URL: forged})

    with pytest.raises(SignatureError, match="does not chain to a trusted root"):
        make_verifier(fetcher).verify(BODY, signed(forger_key))


def test_certificate_from_another_ca_is_refused():
    other_key, other = make_certificate(issuer=make_ca("Some Other CA"))

    with pytest.raises(SignatureError, match="does not chain to a trusted root"):
        make_verifier(FakeFetcher({CERT_URL: other})).verify(BODY, signed(other_key))


def test_trusted_certificate_with_another_subject_is_refused(authority):
    key, pem = make_certificate(issuer=authority, common_name="api.paypal.com")

    with pytest.raises(SignatureError, match="not PayPal's message-verification certificate"):
        make_verifier(FakeFetcher({CERT_URL: pem})).verify(BODY, signed(key))


def test_certificate_served_with_its_intermediate_chains_to_the_root(authority):
    key, pem = make_certificate(issuer=authority.intermediate())

    assert pem.count(b"BEGIN CERTIFICATE") == 2
    assert make_verifier(FakeFetcher({CERT_URL: pem})).verify(BODY, signed(key)).event_id


def test_certificate_served_without_its_intermediate_is_refused(authority):
    key, pem = make_certificate(issuer=authority.intermediate())
    leaf_only = pem[:pem.index(b"-----END CERTIFICATE-----") + 25]

    with pytest.raises(SignatureError, match="does not chain to a trusted root"):
        make_verifier(FakeFetcher({CERT_URL: leaf_only})).verify(BODY, signed(key))


def test_sandbox_subject_is_accepted_only_when_configured(authority):
    key, pem = make_certificate(issuer=authority,
                                common_name="messageverificationcerts.sandbox.paypal.com")

    with pytest.raises(SignatureError, match="not PayPal's message-verification"):
        make_verifier(FakeFetcher({CERT_URL: pem})).verify(BODY, signed(key))
    sandbox = make_verifier(FakeFetcher({CERT_URL: pem}), subjects=[
        "messageverificationcerts.paypal.com", "messageverificationcerts.sandbox.paypal.com"])
    assert sandbox.verify(BODY, signed(key)).event_id == "WH-EVENT-1"


def test_refused_certificate_is_remembered_for_a_short_while():
    forger_key, forged = make_certificate()
    fetcher = FakeFetcher({CERT_URL: forged})
    verifier = make_verifier(fetcher)

    for _ in range(3):
        with pytest.raises(SignatureError, match="does not chain"):
            verifier.verify(BODY, signed(forger_key))
    assert len(fetcher.calls) == 1


def test_fetch_uses_the_configured_timeout(key, fetcher):
    make_verifier(fetcher, fetch_timeout=1.5).verify(BODY, signed(key))

    assert fetcher.calls == [(CERT_URL, 1.5)]


def test_malformed_json_after_a_valid_signature_is_a_malformed_event(key, fetcher):
    body = b'{"id": "WH-1", "event_type": '

    with pytest.raises(MalformedEvent, match="not valid JSON"):
        make_verifier(fetcher).verify(body, signed(key, body=body))


def test_missing_event_type_after_a_valid_signature_is_a_malformed_event(key, fetcher):
    body = json.dumps({"id": "WH-1", "type": "PAYMENT.SALE.COMPLETED"}).encode()

    with pytest.raises(MalformedEvent, match="event_type is missing"):
        make_verifier(fetcher).verify(body, signed(key, body=body))


def test_body_is_checked_for_signature_before_it_is_parsed(key, fetcher):
    # A non-UTF-8, unsigned body must fail on its signature, not on its encoding.
    headers = signed(key)

    with pytest.raises(SignatureError):
        make_verifier(fetcher).verify(b"\xff\xfe", headers)


class FakeResponse:
    def __init__(self, status_code: int, chunks: list[bytes]):
        self.status_code = status_code
        self._chunks = chunks

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        return False

    def raise_for_status(self):
        if self.status_code >= 400:
            raise requests.HTTPError(str(self.status_code))

    def iter_content(self, chunk_size):
        yield from self._chunks


def fake_get(monkeypatch, response: FakeResponse) -> list[dict]:
    calls: list[dict] = []

    def get(url, **kwargs):
        calls.append({"url": url, **kwargs})
        return response

    monkeypatch.setattr(paypal.requests, "get", get)
    return calls


def test_default_fetcher_downloads_without_following_redirects(monkeypatch):
    calls = fake_get(monkeypatch, FakeResponse(200, [b"PEM", b"DATA"]))

    assert download_certificate(CERT_URL, 2.0) == b"PEMDATA"
    assert calls[0]["url"] == CERT_URL
    assert calls[0]["timeout"] == 2.0
    assert calls[0]["allow_redirects"] is False


@pytest.mark.parametrize("status", [301, 302, 204, 404, 500])
def test_default_fetcher_refuses_redirects_and_errors(monkeypatch, status):
    fake_get(monkeypatch, FakeResponse(status, [b"PEM"]))

    with pytest.raises(requests.HTTPError):
        download_certificate(CERT_URL, 2.0)


def test_default_fetcher_refuses_oversized_responses(monkeypatch):
    fake_get(monkeypatch, FakeResponse(200, [b"x" * 40_000, b"x" * 40_000]))

    with pytest.raises(ValueError, match="too large"):
        download_certificate(CERT_URL, 2.0)



class _MemoryTransmissions:
    def __init__(self):
        self.seen = {}

    def first_body(self, transmission_id, digest):
        return self.seen.setdefault(transmission_id, digest) == digest


def test_crc_twin_body_passes_the_bare_signature_but_not_the_transmission_log(authority,
                                                                               ca_bundle):
    key, pem = make_certificate(issuer=authority)
    body = json.dumps({"id": "WH-1", "event_type": "PAYMENT.CAPTURE.COMPLETED"}).encode()
    forged = crc32_twin('{"id": "WH-FORGED", "event_type": "PAYMENT.CAPTURE.COMPLETED",'
                        ' "pad": "{pad}"}', zlib.crc32(body))
    assert forged != body and zlib.crc32(forged) == zlib.crc32(body)
    headers = sign_delivery(key, body=body, webhook_id=WEBHOOK_ID, cert_url=CERT_URL)

    bare = PayPalVerifier(webhook_id=WEBHOOK_ID, allowed_hosts=[".paypal.com"],
                          fetcher=lambda url, timeout: pem, ca_bundle=ca_bundle)
    # The signature alone accepts the forged event: it covers only the CRC32.
    assert bare.verify(forged, headers).event_id == "WH-FORGED"

    guarded = PayPalVerifier(webhook_id=WEBHOOK_ID, allowed_hosts=[".paypal.com"],
                             fetcher=lambda url, timeout: pem, ca_bundle=ca_bundle,
                             transmissions=_MemoryTransmissions())
    assert guarded.verify(body, headers).event_id == "WH-1"
    assert guarded.verify(body, headers).event_id == "WH-1"  # an honest redelivery
    with pytest.raises(SignatureError, match="replayed with a different body"):
        guarded.verify(forged, headers)


def test_transmission_log_that_cannot_answer_makes_the_delivery_a_503(key, fetcher):
    class DownLog:
        def first_body(self, transmission_id, digest):
            raise VerificationUnavailable("the transmission log cannot be checked now")

    with pytest.raises(VerificationUnavailable) as excinfo:
        make_verifier(fetcher, transmissions=DownLog()).verify(BODY, signed(key))
    assert excinfo.value.status_code == 503


def test_tolerance_is_on_by_default_and_wider_than_paypals_redeliveries(key, fetcher):
    verifier = PayPalVerifier(webhook_id=WEBHOOK_ID, allowed_hosts=ALLOWED_HOSTS,
                              fetcher=fetcher, **DEFAULTS)
    now = datetime.now(UTC)

    # PayPal retries a failed delivery for about 3 days with its first transmission time.
    late = signed(key, transmission_time=_iso(now - timedelta(days=3, hours=12)))
    assert verifier.verify(BODY, late).event_id == "WH-EVENT-1"
    for moment in (now - timedelta(days=5), now + timedelta(hours=1)):
        with pytest.raises(SignatureError, match="stale transmission time"):
            verifier.verify(BODY, signed(key, transmission_time=_iso(moment)))


@pytest.mark.parametrize("transmission_id", ["a" * 256, "id with space", "id\u00e9"])
def test_transmission_id_must_be_a_plain_identifier(key, fetcher, transmission_id):
    headers = signed(key, transmission_id=transmission_id.encode().decode("unicode_escape"))

    with pytest.raises(SignatureError, match="malformed transmission headers"):
        make_verifier(fetcher).verify(BODY, headers)
