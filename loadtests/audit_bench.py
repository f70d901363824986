"""Audit trail figures (not run in CI): the speed of `verify`, and what the audit write
costs each action when several writers append to the chain at once.

    python scripts/testenv.py -- python -m loadtests.audit_bench verify --rows 1000000
    python scripts/testenv.py -- python -m loadtests.audit_bench writers --processes 4

Each run uses a database of its own on the PostgreSQL server named by DATABASE_URL and
drops it afterwards. `verify` bulk-loads a valid chain with COPY and times the real
`verify_chain`. `writers` runs N processes doing stock adjustments through
`orders.services.adjust_stock` (each on its own product, so only the audit chain is
shared), once as shipped and once with the audit write replaced by a no-op, and prints
throughput and per-action latency for both.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import sys
import time
import uuid
from datetime import datetime
from urllib.parse import urlsplit, urlunsplit

import psycopg

COLUMNS = ("id", "created_at", "action", "entity_type", "entity_id", "user_id", "actor",
           "token_prefix", "ip_address", "user_agent", "request_id", "reason", "metadata",
           "prev_hash", "hash")


def _admin_url() -> str:
    url = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


def _with_db(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{name}", "", ""))


class Database:
    """A fresh, migrated database for one run."""

    def __enter__(self) -> str:
        self.name = f"racine_auditbench_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(_admin_url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{self.name}"')
        os.environ["DATABASE_URL"] = _with_db(_admin_url(), self.name)
        os.environ.setdefault("RACINE_DOTENV", "/nonexistent/.env")
        from flask_migrate import upgrade

        app = _app()
        with app.app_context():
            upgrade()
        return os.environ["DATABASE_URL"]

    def __exit__(self, *exc):
        with psycopg.connect(_with_db(_admin_url(), "postgres"), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')


def _app():
    from service import create_app

    # A throwaway database with the built-in development secrets, like the load stack.
    os.environ.setdefault("RACINE_ENV", "development")
    return create_app({"LOG_LEVEL": "WARNING"})


def bench_verify(rows: int) -> None:
    from tests.support.audit import chain_rows

    with Database() as url:
        now = datetime.utcnow()
        start = datetime(now.year, now.month, 1)
        began = time.perf_counter()
        copy_sql = f"COPY audit_logs ({', '.join(COLUMNS)}) FROM STDIN"
        with psycopg.connect(url) as conn, conn.cursor() as cursor:
            with cursor.copy(copy_sql) as copy:
                for row in chain_rows(rows, start=start, step=_ms()):
                    copy.write_row([row[c] for c in COLUMNS])
            # As the writer would have left it: the chain-head witness at the last row.
            cursor.execute("UPDATE audit_chain_head SET last_id = %s, last_hash = %s,"
                           " last_created_at = %s", (row["id"], row["hash"], row["created_at"]))
        print(f"loaded {rows} chained rows in {time.perf_counter() - began:.1f} s",
              file=sys.stderr)
        app = _app()
        with app.app_context():
            from service.audit.verify import verify_chain

            began = time.perf_counter()
            report = verify_chain()
            elapsed = time.perf_counter() - began
        assert report.ok and report.checked == rows, report
        print(f"verify: {rows} rows in {elapsed:.1f} s = {rows / elapsed:,.0f} rows/s")


def _ms():
    from datetime import timedelta

    return timedelta(milliseconds=1)


def _writer(args) -> list[float]:
    product_id, actions, audited, barrier = args
    from service.audit import services as audit
    from service.audit.actor import Actor
    from service.extensions import db
    from service.orders import services

    if not audited:
        audit.record = lambda **_kwargs: 0
    app = _app()
    latencies = []
    with app.app_context():
        barrier.wait()
        for n in range(actions):
            began = time.perf_counter()
            services.adjust_stock(product_id=product_id, delta=1 if n % 2 == 0 else -1,
                                  reason="bench", actor=Actor.system("bench"))
            db.session.commit()
            latencies.append(time.perf_counter() - began)
    return latencies


def bench_writers(processes: int, actions: int) -> None:
    with Database() as url:
        with psycopg.connect(url) as conn:
            product_ids = [conn.execute(
                "INSERT INTO products (sku, name, price_cents, stock, updated_at)"
                " VALUES (%s, 'bench', 100, 1000, now()) RETURNING id", (f"B-{n}",)).fetchone()[0]
                for n in range(processes)]
        context = multiprocessing.get_context("spawn")
        for audited in (False, True):
            barrier = context.Manager().Barrier(processes)
            began = time.perf_counter()
            with context.Pool(processes) as pool:
                results = pool.map(_writer, [(pid, actions, audited, barrier)
                                             for pid in product_ids])
            elapsed = time.perf_counter() - began
            flat = sorted(x for r in results for x in r)
            label = "with audit   " if audited else "without audit"
            print(f"{label}: {processes} writers x {actions} adjustments: "
                  f"{len(flat) / elapsed:,.0f} actions/s (wall, incl. start-up), "
                  f"p50 {statistics.median(flat) * 1000:.2f} ms, "
                  f"p99 {flat[int(len(flat) * 0.99) - 1] * 1000:.2f} ms, "
                  f"mean {statistics.fmean(flat) * 1000:.2f} ms")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    verify = sub.add_parser("verify", help="time flask audit verify's walk over a loaded chain")
    verify.add_argument("--rows", type=int, default=1_000_000)
    writers = sub.add_parser("writers", help="per-action cost of the audit write")
    writers.add_argument("--processes", type=int, default=4)
    writers.add_argument("--actions", type=int, default=500)
    args = parser.parse_args(argv)
    if args.command == "verify":
        bench_verify(args.rows)
    else:
        bench_writers(args.processes, args.actions)


if __name__ == "__main__":
    main()
