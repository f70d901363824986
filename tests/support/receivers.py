"""Local receivers standing in for the alert channels' providers.

- `SmtpReceiver`: an aiosmtpd SMTP server on 127.0.0.1 that keeps every message.
- `ProviderProxy`: an HTTPS proxy on 127.0.0.1 that answers for Slack's and Twilio's API
  hosts itself. The service keeps its production channel URLs (`slack://...`,
  `twilio://...`); the process under test is given `HTTPS_PROXY` pointing here and
  `REQUESTS_CA_BUNDLE` naming the proxy's throwaway CA, so the real client code, TLS and
  certificate checks included, talks to this stand-in instead of the internet.

Both record what they received and can be told to refuse (`fail_next`, `stop`).
"""

from __future__ import annotations

import datetime
import email
import email.policy
import http.server
import json
import socket
import ssl
import threading
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs

from aiosmtpd.controller import Controller
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

PROVIDER_HOSTS = ("hooks.slack.com", "api.twilio.com")


@dataclass
class Received:
    host: str
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> dict:
        return json.loads(self.body)

    def form(self) -> dict[str, str]:
        return {key: values[0] for key, values in parse_qs(self.body.decode()).items()}


@dataclass
class _Behaviour:
    failures: dict[str, int] = field(default_factory=dict)  # host -> answers to refuse


class ProviderProxy:
    """A CONNECT proxy that terminates TLS for the provider hosts and records each request."""

    def __init__(self, directory: Path):
        self.ca_path, self._context = _certificates(directory)
        self.received: list[Received] = []
        self._behaviour = _Behaviour()
        self._lock = threading.Lock()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_args):
                pass

            def do_CONNECT(self):
                host = self.path.split(":", 1)[0]
                if host not in PROVIDER_HOSTS:
                    self.send_error(403, "only the provider hosts are stood in for")
                    return
                self.send_response(200, "Connection established")
                self.end_headers()
                try:
                    tls = proxy._context.wrap_socket(self.connection, server_side=True)
                except (ssl.SSLError, OSError):
                    self.close_connection = True
                    return
                _ProviderHandler(tls, self.client_address, self.server, host=host, proxy=proxy)
                self.close_connection = True

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True,
                                        kwargs={"poll_interval": 0.05})
        self._thread.start()

    def env(self) -> dict[str, str]:
        """What a process needs to reach the providers through this proxy."""
        return {"HTTPS_PROXY": self.url, "https_proxy": self.url,
                "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost",
                "REQUESTS_CA_BUNDLE": str(self.ca_path)}

    def fail_next(self, host: str, count: int) -> None:
        """Answer the next `count` requests to `host` with 503."""
        with self._lock:
            self._behaviour.failures[host] = count

    def requests_to(self, host: str) -> list[Received]:
        with self._lock:
            return [r for r in self.received if r.host == host]

    def _answer(self, received: Received) -> tuple[int, bytes, str]:
        with self._lock:
            self.received.append(received)
            left = self._behaviour.failures.get(received.host, 0)
            if left:
                self._behaviour.failures[received.host] = left - 1
                return 503, b'{"message": "stand-in refusing"}', "application/json"
        if received.host == "api.twilio.com":
            return 201, json.dumps({"sid": "SM" + "0" * 32, "status": "queued"}).encode(), \
                "application/json"
        return 200, b"ok", "text/plain"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class _ProviderHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def __init__(self, *args, host: str, proxy: ProviderProxy):
        self.provider_host = host
        self.proxy = proxy
        super().__init__(*args)

    def log_message(self, *_args):
        pass

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        received = Received(self.provider_host, "POST", self.path, dict(self.headers), body)
        status, payload, content_type = self.proxy._answer(received)
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


def _certificates(directory: Path) -> tuple[Path, ssl.SSLContext]:
    """A throwaway CA (written for REQUESTS_CA_BUNDLE) and a leaf for the provider hosts."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "racine test providers CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(
              digital_signature=True, content_commitment=False, key_encipherment=False,
              data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
              encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
                         critical=False)
          .sign(ca_key, hashes.SHA256()))
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, PROVIDER_HOSTS[0])]))
            .issuer_name(ca_name).public_key(leaf_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.DNSName(host) for host in PROVIDER_HOSTS]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    directory.mkdir(parents=True, exist_ok=True)
    ca_path = directory / "providers-ca.pem"
    ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    leaf_path = directory / "providers-leaf.pem"
    leaf_path.write_bytes(
        leaf.public_bytes(serialization.Encoding.PEM)
        + leaf_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption()))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(leaf_path)
    return ca_path, context


class _Keep:
    """aiosmtpd handler: keep each message as parsed email."""

    def __init__(self, sink: list):
        self._sink = sink

    async def handle_DATA(self, _server, _session, envelope):
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        self._sink.append((list(envelope.rcpt_tos), message))
        return "250 Message accepted for delivery"


class SmtpReceiver:
    """An SMTP server on 127.0.0.1 (`port` fixed, so it can be stopped and started again)."""

    def __init__(self, port: int | None = None):
        self.port = port or _free_port()
        self.messages: list[tuple[list[str], email.message.EmailMessage]] = []
        self._controller: Controller | None = None

    def start(self) -> SmtpReceiver:
        self._controller = Controller(_Keep(self.messages), hostname="127.0.0.1", port=self.port)
        self._controller.start()
        return self

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
