"""A local HTTPS server standing in for PayPal's certificate host.

It serves PEM files by path over TLS, with a server certificate from a throwaway CA, and
records every request it answers. `stall()` makes it accept connections and never
answer, as a host that times out does.
"""

from __future__ import annotations

import socket
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from tests.support.paypal_keys import make_tls_certificate


class CertificateHost:
    def __init__(self, authority, directory: Path):
        self.files: dict[str, bytes] = {}
        self.requests: list[str] = []
        self.connections = 0
        self._stalled = threading.Event()
        self._release = threading.Event()
        key, pem = make_tls_certificate(authority, "127.0.0.1")
        cert_path, key_path = directory / "tls-cert.pem", directory / "tls-key.pem"
        cert_path.write_bytes(pem)
        key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                               serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert_path, key_path)
        host = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                host.requests.append(self.path)
                body = host.files.get(self.path)
                self.send_response(200 if body is not None else 404)
                self.send_header("Content-Type", "application/x-pem-file")
                self.send_header("Content-Length", str(len(body or b"")))
                self.end_headers()
                self.wfile.write(body or b"")

            def log_message(self, *_args):
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def get_request(self):
                conn, address = self.socket.accept()
                host.connections += 1
                if host._stalled.is_set():
                    # Accept, then say nothing: the client's read times out.
                    host._release.wait(30)
                    conn.close()
                    raise OSError("stalled connection dropped")
                return context.wrap_socket(conn, server_side=True), address

        self._server = Server(("127.0.0.1", 0), Handler)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True,
                                        kwargs={"poll_interval": 0.05})

    @property
    def netloc(self) -> str:
        return f"127.0.0.1:{self.port}"

    def url(self, path: str) -> str:
        return f"https://{self.netloc}{path}"

    def stall(self) -> None:
        self._stalled.set()

    def __enter__(self) -> CertificateHost:
        self._thread.start()
        return self

    def __exit__(self, *_exc) -> None:
        self._release.set()
        self._server.shutdown()
        self._server.server_close()
        # Wake a stalled accept loop, if any.
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
        except OSError:
            pass
