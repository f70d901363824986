"""A small local stand-in for the ERP's stock API: not an ERP, just enough of one.

`make run` starts it so the embedded stack has something to sync with, and the tests
drive the same server. It serves the contract `service/erp/client.py` speaks:

    GET /health                              -> {"status": "ok", "skus": N}
    GET /stock?since=ISO&page=N&per_page=M   -> {"items": [{"sku", "quantity",
                                                 "updated_at"}], "page": N,
                                                 "next_page": N+1 | null}

Every request needs `Authorization: Bearer <token>` (401 otherwise). Items come oldest
change first (then by SKU); `since` keeps those changed at or after it. The catalogue
starts as the demo products (`flask demo seed`: SKU-0001.., 100 each) plus one SKU the
shop does not sell; with `--drift`, one product's count changes every that many seconds,
so the beat sync has something to apply. Tests can make the next answers slow, 500,
malformed JSON or 401 (`fail_next`).

    python scripts/erp_standin.py --port 6400 --token secret [--drift 60]
"""

from __future__ import annotations

import argparse
import hmac
import itertools
import json
import os
import sys
import threading
import time
from collections import deque
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

FAILURES = ("500", "slow", "malformed", "401", "503")
UNKNOWN_SKU = "ERP-ONLY-0001"


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def _iso(moment: datetime) -> str:
    return moment.isoformat(timespec="microseconds") + "Z"


def _parse_since(value: str) -> datetime:
    moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return moment.astimezone(UTC).replace(tzinfo=None) if moment.tzinfo else moment


class Catalogue:
    """SKU -> (quantity, updated_at), safe to change while the server answers."""

    def __init__(self, items: dict[str, int] | None = None, *, at: datetime | None = None):
        at = at or _now()
        self._lock = threading.Lock()
        self._items = {sku: (qty, at) for sku, qty in (items or {}).items()}

    def set(self, sku: str, quantity: int, *, at: datetime | None = None) -> None:
        with self._lock:
            self._items[sku] = (quantity, at or _now())

    def changed_since(self, since: datetime | None) -> list[dict]:
        with self._lock:
            rows = sorted(((at, sku, qty) for sku, (qty, at) in self._items.items()
                           if since is None or at >= since))
        return [{"sku": sku, "quantity": qty, "updated_at": _iso(at)} for at, sku, qty in rows]

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)


def demo_catalogue(products: int = 8) -> Catalogue:
    """The demo products' SKUs at the demo stock, and one SKU the shop does not know."""
    items = {f"SKU-{n:04d}": 100 for n in range(1, products + 1)}
    items[UNKNOWN_SKU] = 7
    return Catalogue(items)


class ErpStandIn:
    """The HTTP server (127.0.0.1), its catalogue, and the failures it is told to give."""

    def __init__(self, *, token: str, catalogue: Catalogue | None = None,
                 host: str = "127.0.0.1", port: int = 0, slow_seconds: float = 5.0,
                 max_per_page: int = 1000):
        self.token = token
        self.catalogue = catalogue if catalogue is not None else demo_catalogue()
        self.slow_seconds = slow_seconds
        self.max_per_page = max_per_page
        self.requests: list[dict] = []  # path and query of every request, in order
        self._failures: deque[str] = deque()
        self._lock = threading.Lock()
        self.server = ThreadingHTTPServer((host, port), self._handler())
        self.server.daemon_threads = True
        self.url = f"http://{host}:{self.server.server_address[1]}"
        self._thread: threading.Thread | None = None

    def start(self) -> ErpStandIn:
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True,
                                        kwargs={"poll_interval": 0.05},
                                        name="erp-standin")
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def reset(self, catalogue: Catalogue | None = None) -> None:
        """A new catalogue (empty by default), no failures pending, no requests seen."""
        with self._lock:
            self.catalogue = catalogue if catalogue is not None else Catalogue()
            self._failures.clear()
            self.requests.clear()

    def fail_next(self, kind: str, times: int = 1) -> None:
        """Answer the next `times` requests with `kind`: 500, 503, slow (sleeps
        `slow_seconds` first), malformed (200 with a body that is not JSON) or 401."""
        if kind not in FAILURES:
            raise ValueError(f"kind must be one of {FAILURES}")
        with self._lock:
            self._failures.extend([kind] * times)

    def _next_failure(self) -> str | None:
        with self._lock:
            return self._failures.popleft() if self._failures else None

    def _answer(self, path: str, query: dict, authorization: str) -> tuple[int, bytes]:
        with self._lock:
            self.requests.append({"path": path, "query": query})
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(),
                                                                 self.token.encode()):
            return 401, json.dumps({"error": "unauthorized"}).encode()
        failure = self._next_failure()
        if failure == "slow":
            time.sleep(self.slow_seconds)
        elif failure in ("500", "503"):
            return int(failure), json.dumps({"error": "internal"}).encode()
        elif failure == "401":
            return 401, json.dumps({"error": "token expired"}).encode()
        elif failure == "malformed":
            return 200, b"<html>upstream proxy error</html>"
        if path == "/health":
            return 200, json.dumps({"status": "ok", "skus": len(self.catalogue)}).encode()
        if path == "/stock":
            return self._stock(query)
        return 404, json.dumps({"error": "not found"}).encode()

    def _stock(self, query: dict) -> tuple[int, bytes]:
        try:
            since = _parse_since(query["since"]) if query.get("since") else None
            page = max(1, int(query.get("page") or 1))
            per_page = min(self.max_per_page, max(1, int(query.get("per_page") or 100)))
        except ValueError:
            return 400, json.dumps({"error": "bad query"}).encode()
        items = self.catalogue.changed_since(since)
        chunk = items[(page - 1) * per_page:page * per_page]
        more = page * per_page < len(items)
        return 200, json.dumps({"items": chunk, "page": page,
                                "next_page": page + 1 if more else None}).encode()

    def _handler(self):
        standin = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                parts = urlsplit(self.path)
                query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
                status, body = standin._answer(parts.path, query,
                                               self.headers.get("Authorization", ""))
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (its read timeout)

        return Handler


def drift(catalogue: Catalogue, every: float, products: int, stop: threading.Event) -> None:
    """Every `every` seconds one demo product's count moves (a sale, a delivery)."""
    steps = itertools.cycle([-3, 5, -1, -7, 12, -2])
    skus = itertools.cycle([f"SKU-{n:04d}" for n in range(1, products + 1)])
    levels: dict[str, int] = {}
    while not stop.wait(every):
        sku = next(skus)
        levels[sku] = max(0, levels.get(sku, 100) + next(steps))
        catalogue.set(sku, levels[sku])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="A local stand-in for the ERP's stock API.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=6400)
    parser.add_argument("--token", default=os.environ.get("ERP_API_TOKEN") or "",
                        help="The bearer token to accept (default: $ERP_API_TOKEN).")
    parser.add_argument("--products", type=int, default=8, help="Demo SKUs to serve.")
    parser.add_argument("--drift", type=float, default=0.0, metavar="SECONDS",
                        help="Change one product's count every SECONDS (0: never).")
    args = parser.parse_args(argv)
    if not args.token:
        parser.error("give --token or set ERP_API_TOKEN")
    standin = ErpStandIn(token=args.token, catalogue=demo_catalogue(args.products),
                         host=args.host, port=args.port)
    stop = threading.Event()
    if args.drift > 0:
        threading.Thread(target=drift, args=(standin.catalogue, args.drift, args.products, stop),
                         daemon=True).start()
    print(f"erp-standin: serving {standin.url} ({len(standin.catalogue)} SKUs)", flush=True)
    try:
        standin.server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        stop.set()
        standin.server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
