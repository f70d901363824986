"""Benchmark: the webhook pipeline against the bare stack, on one machine, in one run.

    python -m loadtests.bench [--seconds 15] [--e2e-seconds 60] [--ceiling] [--json]

Measures the service and the naive pipeline (loadtests/naive.py: what a team would
write in an afternoon, with none of the service's guarantees) in the same run, with the
same gunicorn and worker settings, against the same PostgreSQL and Redis:
  intake      requests/s and p50/p99 of POST /webhooks/stripe (verify, store, enqueue)
              of each, against a bare Flask endpoint that only reads the body and answers 200
  worker      events/s of each pipeline's worker doing real work, against a no-op task
  end-to-end  events/min through intake and workers, every one processed (the service
              first, then the naive pipeline with the service's processes stopped); the
              CPU seconds of each process during the load and the drain, the drain time
              after the load stops, the largest queue depth
  latency     intake p50/p99 at a steady 500 events/min, of the bare endpoint and the real
              one: the service's overhead per request is the difference
  burst       the largest `webhooks` depth during 10x that rate
  ceiling     (--ceiling) end to end again with events no handler takes, for both
              pipelines: their own limit on this machine, before any domain work
Orders (60,000 by default, one statement) are seeded and each delivery pays one its
exact total. Prints the figures, the service/naive ratios and the targets, and writes a
JSON report to loadtests/reports/. The load generator is wrk (installed with apt-get when missing and
possible), else a Python client.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg
import redis
import requests

from loadtests import signing
from loadtests.stack import BIN, ROOT, Stack, free_port, say

REPORTS = ROOT / "loadtests" / "reports"
LUA = ROOT / "loadtests" / "wrk_requests.lua"
# The first secret the service accepts (the stack passes this environment on to it).
SECRET = os.environ.get("STRIPE_WEBHOOK_SECRET", "whsec_racine_dev_secret").split(",")[0].strip()
TARGETS = {
    "intake_ratio": 0.25,
    "worker_ratio": 0.5,
    "e2e_vs_naive": 1.0,
    "drain_seconds": 5.0,
    "ceiling_events_per_minute": 30000,
    "latency_p99_ms_at_500_per_min": 50.0,
    "overhead_ms": 5.0,
}


def ensure_wrk() -> str | None:
    found = shutil.which("wrk")
    if found or os.geteuid() != 0 or not shutil.which("apt-get"):
        return found
    say("installing wrk with apt-get")
    subprocess.run(["apt-get", "install", "-y", "-q", "wrk"], capture_output=True, check=False)
    return shutil.which("wrk")


def seed_orders(stack: Stack, count: int) -> list[tuple[int, int]]:
    """`count` pending orders in one statement, and the naive pipeline's copy of them.

    (id, total) of each: every delivery pays its order's exact total, the common path
    (paid, follow-ups queued), and each order is paid once as long as the run sends
    fewer events than there are orders.
    """
    from loadtests import naive

    stack.flask("demo", "seed", "--customers", "50", "--products", "20", "--orders", "0")
    with psycopg.connect(stack.env["DATABASE_URL"], autocommit=True) as conn:
        conn.execute(
            "INSERT INTO orders (customer_id, status, currency, total_cents, paid_cents,"
            " refunded_cents, created_at, updated_at)"
            " SELECT 1 + n %% 50, 'pending', 'EUR', 1000 + (n %% 40) * 125, 0, 0,"
            " now() AT TIME ZONE 'UTC', now() AT TIME ZONE 'UTC'"
            " FROM generate_series(0, %s) AS n", (count - 1,))
        naive.create_schema(conn)
        return conn.execute("SELECT id, total_cents FROM orders ORDER BY id").fetchall()


def write_deliveries(path: Path, count: int, orders: list[tuple[int, int]], *,
                     event_type: str = "payment_intent.succeeded") -> Path:
    """Signed Stripe deliveries, one per line; each pays a seeded order its exact total."""
    with path.open("w") as handle:
        for n in range(count):
            order_id, total = orders[n % len(orders)]
            _, body, headers, _ = signing.stripe_payment(order_id, total, secret=SECRET)
            if event_type != "payment_intent.succeeded":
                event = json.loads(body)
                event["type"] = event_type
                body = json.dumps(event).encode()
                headers = signing.stripe_headers(body, secret=SECRET)
            handle.write(f"{headers['Stripe-Signature']}\t{body.decode()}\n")
    return path


def run_wrk(wrk: str, url: str, deliveries: Path, *, seconds: int, connections: int = 32) -> dict:
    threads = 2
    out = subprocess.run(
        [wrk, f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(LUA),
         url, "--", str(deliveries), str(threads)],
        capture_output=True, text=True, check=True).stdout
    figures = {"requests_per_second": float(re.search(r"Requests/sec:\s+([\d.]+)", out)[1]),
               "requests": int(re.search(r"(\d+) requests in", out)[1]),
               "non_2xx": int((re.search(r"Non-2xx or 3xx responses: (\d+)", out) or [0, 0])[1])}
    for pct in ("50", "99"):
        match = re.search(rf"\s{pct}%\s+([\d.]+)(us|ms|s)", out)
        value = float(match[1]) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[match[2]]
        figures[f"p{pct}_ms"] = round(value, 2)
    return figures


def run_python_load(url: str, deliveries: Path, *, seconds: int, concurrency: int = 16) -> dict:
    lines = deliveries.read_text().splitlines()
    position = iter(range(10**9))
    lock = threading.Lock()
    latencies: list[float] = []
    failures = 0
    deadline = time.monotonic() + seconds

    def loop():
        nonlocal failures
        session = requests.Session()
        while time.monotonic() < deadline:
            with lock:
                sig, body = lines[next(position) % len(lines)].split("\t", 1)
            started = time.perf_counter()
            response = session.post(url, data=body, headers={"Stripe-Signature": sig,
                                                              "Content-Type": "application/json"})
            elapsed = (time.perf_counter() - started) * 1000
            with lock:
                latencies.append(elapsed)
                failures += response.status_code != 200

    with ThreadPoolExecutor(concurrency) as pool:
        for _ in range(concurrency):
            pool.submit(loop)
    ordered = sorted(latencies)
    return {"requests_per_second": round(len(ordered) / seconds, 1), "requests": len(ordered),
            "non_2xx": failures, "p50_ms": round(ordered[len(ordered) // 2], 2),
            "p99_ms": round(ordered[int(len(ordered) * 0.99)], 2)}


def load(wrk, url, deliveries, seconds):
    return run_wrk(wrk, url, deliveries, seconds=seconds) if wrk else \
        run_python_load(url, deliveries, seconds=seconds)


def paced_latency(url: str, *, per_minute: float, seconds: int,
                  orders: list[tuple[int, int]]) -> dict:
    """Send at a steady rate from a few threads; latencies of every request."""
    interval = 60.0 / per_minute
    threads = max(1, min(32, int(per_minute / 600) + 1))
    latencies: list[float] = []
    lock = threading.Lock()
    start = time.monotonic()

    def sender(first: int):
        session = requests.Session()
        n = first
        while True:
            due = start + n * interval
            if due - start >= seconds:
                return
            time.sleep(max(0.0, due - time.monotonic()))
            order_id, total = orders[n % len(orders)]
            _, body, headers, _ = signing.stripe_payment(order_id, total, secret=SECRET)
            began = time.perf_counter()
            session.post(url, data=body, headers=headers)
            with lock:
                latencies.append((time.perf_counter() - began) * 1000)
            n += threads

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(sender, range(threads)))
    ordered = sorted(latencies)
    return {"requests": len(ordered), "rate_per_minute": per_minute,
            "p50_ms": round(statistics.median(ordered), 2),
            "p99_ms": round(ordered[int(len(ordered) * 0.99)], 2)}


DONE = ("processed", "ignored")


class Pipeline:
    """Where one pipeline keeps its events and its queue, and which processes are its own."""

    def __init__(self, name: str, table: str, queue: str, processes: tuple[str, ...]):
        self.name = name
        self.table = table
        self.queue = queue
        self.processes = processes


PROJECT = Pipeline("project", "webhook_events", "webhooks",
                   ("web", "worker-webhooks", "worker-default", "worker-orders", "beat"))
NAIVE = Pipeline("naive", "naive_events", "naive", ("naive-web", "naive-worker"))


def counts(dsn: str, table: str = "webhook_events") -> dict:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return dict(conn.execute(
            f"SELECT status, count(*) FROM {table} GROUP BY status").fetchall())


def done_count(dsn: str, table: str) -> int:
    by_status = counts(dsn, table)
    return sum(by_status.get(status, 0) for status in DONE)


def wait_drained(client, dsn: str, *, timeout: float, pipeline: Pipeline = PROJECT) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        by_status = counts(dsn, pipeline.table)
        outstanding = sum(v for k, v in by_status.items() if k not in DONE)
        if outstanding == 0 and client.llen(pipeline.queue) == 0:
            return time.monotonic() - started
        time.sleep(0.1)
    raise SystemExit(f"bench: {pipeline.name} not drained in {timeout} s: "
                     f"{counts(dsn, pipeline.table)}")


def cpu_seconds(stack: Stack, names: tuple[str, ...]) -> dict[str, float]:
    """CPU seconds (user + system) used so far by each named process and its children."""
    import psutil

    spent: dict[str, float] = {}
    for name, proc in stack.processes:
        if name not in names or proc.poll() is not None:
            continue
        total = 0.0
        try:
            root = psutil.Process(proc.pid)
            for each in [root, *root.children(recursive=True)]:
                try:
                    times = each.cpu_times()
                    total += times.user + times.system
                except psutil.NoSuchProcess:
                    pass
        except psutil.NoSuchProcess:
            continue
        spent[name] = spent.get(name, 0.0) + total
    return spent


def _cpu_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {name: round(after[name] - before.get(name, 0.0), 1) for name in after}


def drain_rate(stack: Stack, client, dsn: str, *, jobs: int, concurrency: int,
               pipeline: Pipeline = PROJECT, noop: bool = False) -> float:
    """Start a worker on a full queue; jobs per second until every job is done."""
    started = time.monotonic()
    if pipeline is NAIVE:
        stack.spawn("naive-worker", naive_worker(concurrency, stack.webhook_pool))
        name = "naive-worker"
    else:
        stack.start_webhook_worker(concurrency)
        name = "worker-webhooks"
    while True:
        if time.monotonic() - started > 900:
            raise SystemExit(f"bench: {pipeline.name} queue did not drain in 15 minutes")
        if client.llen(pipeline.queue) == 0:
            outstanding = 0 if noop else sum(
                v for k, v in counts(dsn, pipeline.table).items() if k not in DONE)
            if outstanding == 0:
                break
        time.sleep(0.05)
    elapsed = time.monotonic() - started
    stack.stop(name)
    return jobs / elapsed


def naive_web(workers: int, threads: int, port: int) -> list[str]:
    return [str(BIN / "gunicorn"), "-w", str(workers), "--threads", str(threads),
            "-b", f"127.0.0.1:{port}", "loadtests.naive:app"]


def naive_worker(concurrency: int, pool: str) -> list[str]:
    return [str(BIN / "celery"), "-A", "loadtests.naive:celery", "worker", "-Q", "naive",
            "-c", str(concurrency), "--prefetch-multiplier", "4", "--pool", pool,
            "--loglevel", "WARNING", "-n", f"naive-{os.getpid()}@%h", "--without-mingle",
            "--without-gossip"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=15, help="per intake measurement (15)")
    parser.add_argument("--e2e-seconds", type=int, default=60, help="end-to-end run (60)")
    parser.add_argument("--web-workers", type=int, default=4)
    parser.add_argument("--web-threads", type=int, default=1)
    parser.add_argument("--worker-concurrency", type=int, default=4,
                        help="webhooks worker processes or threads (4: the tasks wait on "
                             "the database more than they compute)")
    parser.add_argument("--worker-pool", default="prefork", choices=("prefork", "threads"))
    parser.add_argument("--orders", type=int, default=60000,
                        help="orders seeded, each paid once at its exact total (60000)")
    parser.add_argument("--only", choices=("intake", "worker"),
                        help="stop after the intake, or the intake and worker, measurements")
    parser.add_argument("--ceiling", action="store_true",
                        help="also run end to end with events no handler takes (stored, "
                             "claimed, marked ignored), for both pipelines: their own limit "
                             "on this machine, before any domain work")
    parser.add_argument("--no-naive", action="store_true",
                        help="skip the naive pipeline (no ratios)")
    parser.add_argument("--py-spy", dest="py_spy", action="store_true",
                        help="profile every process of each pipeline with py-spy during its "
                             "end-to-end load (py-spy must be installed in the venv); the "
                             "report gets where each process spent its samples")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    REPORTS.mkdir(parents=True, exist_ok=True)
    wrk = ensure_wrk()
    say(f"load generator: {wrk or 'python client'}")
    with_naive = not args.no_naive
    report: dict = {"machine": {"cpus": os.cpu_count()}, "generator": "wrk" if wrk else "python",
                    "gunicorn": f"-w {args.web_workers} --threads {args.web_threads}",
                    "webhooks_worker": f"--pool {args.worker_pool} -c {args.worker_concurrency}"}
    lines = 150000 if wrk else 40000

    # 1. Intake against the bare endpoint, workers off, no depth bound in the way.
    with Stack(web_workers=args.web_workers, web_threads=args.web_threads, with_workers=False,
               with_beat=False, extra_env={"QUEUE_DEPTH_MAX": "100000000"},
               webhook_pool=args.worker_pool) as stack:
        orders = seed_orders(stack, args.orders)
        bare_port, naive_port = free_port(), free_port()
        stack.spawn("bare", [str(BIN / "gunicorn"), "-w", str(args.web_workers), "--threads",
                             str(args.web_threads), "-b", f"127.0.0.1:{bare_port}",
                             "loadtests.bare_app:app"])
        if with_naive:
            stack.spawn("naive-web", naive_web(args.web_workers, args.web_threads, naive_port))
        time.sleep(2)
        say("intake: bare endpoint")
        bare = load(wrk, f"http://127.0.0.1:{bare_port}/webhooks/stripe",
                    write_deliveries(stack.tmp / "bare.tsv", lines, orders), args.seconds)
        say("intake: real endpoint")
        real = load(wrk, f"{stack.url}/webhooks/stripe",
                    write_deliveries(stack.tmp / "real.tsv", lines, orders), args.seconds)
        report["intake"] = {"bare": bare, "real": real,
                            "ratio": round(real["requests_per_second"]
                                           / bare["requests_per_second"], 3)}
        if with_naive:
            say("intake: naive endpoint")
            naive = load(wrk, f"http://127.0.0.1:{naive_port}/webhooks/stripe",
                         write_deliveries(stack.tmp / "naive.tsv", lines, orders), args.seconds)
            report["intake"]["naive"] = naive
            report["intake"]["naive_ratio"] = round(
                naive["requests_per_second"] / bare["requests_per_second"], 3)

        if args.only == "intake":
            return _finish(report, args)
        # 2. Workers: drain what intake stored, then as many no-op tasks.
        client = redis.Redis.from_url(stack.env["REDIS_URL"])
        dsn = stack.env["DATABASE_URL"]
        stored = done_count(dsn, "webhook_events") + sum(
            v for k, v in counts(dsn).items() if k not in DONE)
        _relay_everything(stack)
        say(f"worker: processing {stored} real events")
        real_rate = drain_rate(stack, client, dsn, jobs=stored,
                               concurrency=args.worker_concurrency)
        report["worker"] = {"jobs": stored, "real_per_second": round(real_rate, 1)}
        if with_naive:
            naive_stored = sum(counts(dsn, "naive_events").values())
            say(f"worker: processing {naive_stored} naive events")
            naive_rate = drain_rate(stack, client, dsn, jobs=naive_stored,
                                    concurrency=args.worker_concurrency, pipeline=NAIVE)
            report["worker"]["naive_jobs"] = naive_stored
            report["worker"]["naive_per_second"] = round(naive_rate, 1)
        _publish_noops(stack, stored)
        say(f"worker: draining {stored} no-op tasks")
        noop_rate = drain_rate(stack, client, dsn, jobs=stored,
                               concurrency=args.worker_concurrency, noop=True)
        report["worker"]["noop_per_second"] = round(noop_rate, 1)
        report["worker"]["ratio"] = round(real_rate / noop_rate, 3)
        if with_naive:
            report["worker"]["naive_ratio"] = round(naive_rate / noop_rate, 3)

    if args.only == "worker":
        return _finish(report, args)
    # 3. End to end, 4. latency at 500/min, 5. a 10x burst: the whole stack, default bound.
    # Then the naive pipeline end to end on the same database server and Redis, with the
    # service's processes stopped.
    with Stack(web_workers=args.web_workers, web_threads=args.web_threads,
               webhook_workers=args.worker_concurrency, webhook_pool=args.worker_pool) as stack:
        orders = seed_orders(stack, args.orders)
        client = redis.Redis.from_url(stack.env["REDIS_URL"])
        dsn = stack.env["DATABASE_URL"]
        bare_port = free_port()
        stack.spawn("bare", [str(BIN / "gunicorn"), "-w", str(args.web_workers), "--threads",
                             str(args.web_threads), "-b", f"127.0.0.1:{bare_port}",
                             "loadtests.bare_app:app"])
        lines = 120000 if wrk else 60000
        # Orders paid end to end (by each pipeline in its own tables), at 500/min, in the
        # burst: no order is paid twice.
        cut, cut2 = len(orders) * 2 // 3, len(orders) * 5 // 6
        e2e_orders, paced_orders, burst_orders = orders[:cut], orders[cut:cut2], orders[cut2:]
        say(f"end to end: {args.e2e_seconds} s at full speed")
        report["end_to_end"] = end_to_end(
            wrk, stack, client, dsn, stack.url,
            write_deliveries(stack.tmp / "e2e.tsv", lines, e2e_orders),
            seconds=args.e2e_seconds, pipeline=PROJECT, profile=args.py_spy)
        if args.ceiling:
            say(f"pipeline ceiling: {args.e2e_seconds} s of events no handler takes")
            report["pipeline_ceiling"] = end_to_end(
                wrk, stack, client, dsn, stack.url,
                write_deliveries(stack.tmp / "unhandled.tsv", lines, e2e_orders,
                                 event_type="customer.updated"),
                seconds=args.e2e_seconds, pipeline=PROJECT)
        say("latency at 500 events/min: bare, then real")
        bare_lat = paced_latency(f"http://127.0.0.1:{bare_port}/webhooks/stripe",
                                 per_minute=500, seconds=30, orders=paced_orders)
        real_lat = paced_latency(f"{stack.url}/webhooks/stripe", per_minute=500, seconds=30,
                                 orders=paced_orders)
        report["latency_500_per_min"] = {
            **real_lat, "bare": bare_lat,
            "overhead_p50_ms": round(real_lat["p50_ms"] - bare_lat["p50_ms"], 2),
            "overhead_p99_ms": round(real_lat["p99_ms"] - bare_lat["p99_ms"], 2)}
        say("burst: 10x for 30 s")
        samples: list[int] = []
        stop = threading.Event()
        threading.Thread(target=_sample, args=(client, PROJECT.queue, samples, stop),
                         daemon=True).start()
        burst = paced_latency(f"{stack.url}/webhooks/stripe", per_minute=5000, seconds=30,
                              orders=burst_orders)
        wait_drained(client, dsn, timeout=600)
        stop.set()
        burst["max_depth"] = max(samples, default=0)
        burst["bound"] = int(stack.env.get("QUEUE_DEPTH_MAX", 2000))
        report["burst_10x"] = burst
        if with_naive:
            for name in (*PROJECT.processes, "bare"):
                stack.stop(name)
            naive_port = free_port()
            stack.spawn("naive-web", naive_web(args.web_workers, args.web_threads, naive_port))
            stack.spawn("naive-worker", naive_worker(args.worker_concurrency, args.worker_pool))
            time.sleep(3)
            naive_url = f"http://127.0.0.1:{naive_port}"
            say(f"naive end to end: {args.e2e_seconds} s at full speed")
            report["naive_end_to_end"] = end_to_end(
                wrk, stack, client, dsn, naive_url,
                write_deliveries(stack.tmp / "naive-e2e.tsv", lines, e2e_orders),
                seconds=args.e2e_seconds, pipeline=NAIVE, profile=args.py_spy)
            if args.ceiling:
                say(f"naive ceiling: {args.e2e_seconds} s of events no handler takes")
                report["naive_ceiling"] = end_to_end(
                    wrk, stack, client, dsn, naive_url,
                    write_deliveries(stack.tmp / "naive-unhandled.tsv", lines, e2e_orders,
                                     event_type="customer.updated"),
                    seconds=args.e2e_seconds, pipeline=NAIVE)
    return _finish(report, args)


def _relay_everything(stack: Stack) -> None:
    """Hand every stored event to the queue before the workers start (the relay's pass
    with no bound in the way), so the worker figure is the workers' alone."""
    result = subprocess.run([str(BIN / "flask"), "--app", "service", "webhooks", "relay",
                             "--until-empty"], env=stack.env, cwd=ROOT, capture_output=True,
                            text=True)
    if result.returncode == 2 and "No such command" in result.stderr:
        return  # a service whose intake publishes every event itself
    if result.returncode != 0:
        raise SystemExit(f"bench: relay failed:\n{result.stderr[-2000:]}")


def _finish(report: dict, args) -> int:
    report["targets"] = _judge(report)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = REPORTS / f"bench-{stamp}.json"
    path.write_text(json.dumps(report, indent=2))
    _print(report, path)
    if args.json:
        print(json.dumps(report, indent=2))
    return 0


def end_to_end(wrk, stack: Stack, client, dsn: str, url: str, deliveries: Path, *,
               seconds: int, pipeline: Pipeline, profile: bool = False) -> dict:
    """Load at full speed for `seconds`, wait until every event is done; events/min overall.

    Also: the CPU seconds each process of the pipeline used during the load and during
    the drain after it, and the largest queue depth sampled.
    """
    samples: list[int] = []
    stop = threading.Event()
    threading.Thread(target=_sample, args=(client, pipeline.queue, samples, stop),
                     daemon=True).start()
    before = done_count(dsn, pipeline.table)
    cpu_start = cpu_seconds(stack, pipeline.processes)
    started = time.monotonic()
    spies = _start_py_spy(stack, pipeline, seconds) if profile else []
    sent = load(wrk, f"{url}/webhooks/stripe", deliveries, seconds)
    cpu_loaded = cpu_seconds(stack, pipeline.processes)
    drain = wait_drained(client, dsn, timeout=900, pipeline=pipeline)
    total_seconds = time.monotonic() - started
    cpu_end = cpu_seconds(stack, pipeline.processes)
    stop.set()
    done = done_count(dsn, pipeline.table) - before
    accepted = sent["requests"] - sent["non_2xx"]
    profiles = _py_spy_results(spies)
    return {**({"profile": profiles} if profile else {}), "seconds": seconds,
            "accepted": accepted, "processed": done,
            "lost": max(0, accepted - done), "drain_after_load_seconds": round(drain, 1),
            "events_per_minute": round(done / total_seconds * 60),
            "intake_per_second": sent["requests_per_second"],
            "intake_p50_ms": sent["p50_ms"], "intake_p99_ms": sent["p99_ms"],
            "max_depth": max(samples, default=0),
            "cpu_seconds_during_load": _cpu_delta(cpu_start, cpu_loaded),
            "cpu_seconds_during_drain": _cpu_delta(cpu_loaded, cpu_end)}


def _start_py_spy(stack: Stack, pipeline: Pipeline, seconds: int) -> list:
    """py-spy on each process of the pipeline (children included) for the load's length."""
    spies = []
    for name, proc in stack.processes:
        if name not in pipeline.processes or proc.poll() is not None:
            continue
        out = stack.tmp / f"py-spy-{pipeline.name}-{name}.txt"
        spy = subprocess.Popen(
            [str(BIN / "py-spy"), "record", "--pid", str(proc.pid), "--subprocesses",
             "--rate", "50", "--duration", str(max(1, seconds - 2)), "--format", "raw",
             "--nonblocking", "--output", str(out)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        spies.append((name, spy, out))
    return spies


def _py_spy_results(spies: list, top: int = 12) -> dict:
    """Per process: samples, and the functions (file:function) most often on the stack,
    as a share of that process's samples (inclusive: a function counts when any frame
    below it is running)."""
    results = {}
    for name, spy, out in spies:
        try:
            spy.wait(timeout=60)
        except subprocess.TimeoutExpired:
            spy.kill()
        if not out.exists():
            results[name] = {"samples": 0}
            continue
        total = 0
        inclusive: dict[str, int] = {}
        leaf: dict[str, int] = {}
        for line in out.read_text(errors="replace").splitlines():
            stack_text, _, count_text = line.rpartition(" ")
            if not count_text.isdigit():
                continue
            count = int(count_text)
            frames = [_frame(f) for f in stack_text.split(";")]
            total += count
            for frame in set(frames):
                inclusive[frame] = inclusive.get(frame, 0) + count
            leaf[frames[-1]] = leaf.get(frames[-1], 0) + count
        ranked = sorted(inclusive.items(), key=lambda item: -item[1])
        results[name] = {
            "samples": total,
            "inclusive": [(f, round(100 * c / max(total, 1), 1)) for f, c in ranked
                          if _ours(f)][:top],
            "self": [(f, round(100 * c / max(total, 1), 1))
                     for f, c in sorted(leaf.items(), key=lambda item: -item[1])[:top]],
        }
    return results


def _ours(frame: str) -> bool:
    return frame.startswith(("service/", "loadtests/")) or "/service/" in frame \
        or "/loadtests/" in frame


def _frame(raw: str) -> str:
    """`function (path/to/file.py:line)` -> `path/to/file.py:function`, from the
    package on."""
    function, _, where = raw.partition(" (")
    path = where.rsplit(":", 1)[0]
    for marker in ("site-packages/", "/work/", "lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{path}:{function.strip()}"


def _publish_noops(stack: Stack, count: int) -> None:
    env = {**stack.env, "WEBHOOK_HANDLER_MODULES": "loadtests.bench_tasks"}
    code = ("import sys; from service import create_app; app = create_app(); "
            "c = app.extensions['celery']\n"
            "with app.app_context():\n"
            f"    [c.send_task('bench.noop', args=[n], queue='webhooks') for n in range({count})]")
    subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, check=True,
                   capture_output=True)
    stack.env["WEBHOOK_HANDLER_MODULES"] = "loadtests.bench_tasks"


def _sample(client, queue: str, samples: list[int], stop: threading.Event) -> None:
    from service.queues.depth import depth

    while not stop.is_set():
        try:
            samples.append(depth(client, queue))
        except redis.RedisError:
            pass
        time.sleep(0.05)


def _ratio(report: dict, mine: str, naive: str, key: str) -> float | None:
    if mine not in report or naive not in report:
        return None
    return round(report[mine][key] / max(report[naive][key], 1e-9), 3)


def _judge(report: dict) -> list[dict]:
    rows = [("intake throughput vs bare", report["intake"]["ratio"], TARGETS["intake_ratio"],
             ">=")]
    if "worker" in report:
        rows.append(("worker rate vs no-op", report["worker"]["ratio"], TARGETS["worker_ratio"],
                     ">="))
    if "end_to_end" in report:
        e2e = report["end_to_end"]
        latency = report["latency_500_per_min"]
        rows += [
            ("events lost end to end", e2e["lost"], 0, "<="),
            ("drain after the load, s", e2e["drain_after_load_seconds"],
             TARGETS["drain_seconds"], "<="),
            ("max depth end to end", e2e["max_depth"], report["burst_10x"]["bound"], "<="),
            ("intake p99 ms at 500/min", latency["p99_ms"],
             TARGETS["latency_p99_ms_at_500_per_min"], "<="),
            ("overhead p50 ms at 500/min (real - bare)", latency["overhead_p50_ms"],
             TARGETS["overhead_ms"], "<="),
            ("overhead p99 ms at 500/min (real - bare)", latency["overhead_p99_ms"],
             TARGETS["overhead_ms"], "<="),
            ("max depth in a 10x burst", report["burst_10x"]["max_depth"],
             report["burst_10x"]["bound"], "<="),
        ]
        ratio = _ratio(report, "end_to_end", "naive_end_to_end", "events_per_minute")
        if ratio is not None:
            rows.append(("end to end vs naive", ratio, TARGETS["e2e_vs_naive"], ">="))
    if "pipeline_ceiling" in report:
        rows.append(("ceiling events/min", report["pipeline_ceiling"]["events_per_minute"],
                     TARGETS["ceiling_events_per_minute"], ">="))
    return [{"name": name, "measured": value, "target": f"{op} {target}",
             "met": value >= target if op == ">=" else value <= target}
            for name, value, target, op in rows]


def _print(report: dict, path: Path) -> None:
    out = sys.stderr
    intake = report["intake"]
    print("\n=== benchmark ===", file=out)
    print(f"generator {report['generator']}, gunicorn {report['gunicorn']}, webhooks worker "
          f"{report['webhooks_worker']}, "
          f"{report['machine']['cpus']} cpus", file=out)
    print(f"intake   bare {intake['bare']['requests_per_second']:.0f} req/s "
          f"(p50 {intake['bare']['p50_ms']} ms, p99 {intake['bare']['p99_ms']} ms)   "
          f"real {intake['real']['requests_per_second']:.0f} req/s "
          f"(p50 {intake['real']['p50_ms']} ms, p99 {intake['real']['p99_ms']} ms)   "
          f"ratio {intake['ratio']}", file=out)
    if "naive" in intake:
        naive = intake["naive"]
        print(f"         naive {naive['requests_per_second']:.0f} req/s (p50 {naive['p50_ms']} ms,"
              f" p99 {naive['p99_ms']} ms)   ratio {intake['naive_ratio']}   project/naive "
              f"{round(intake['ratio'] / intake['naive_ratio'], 3)}", file=out)
    worker = report.get("worker")
    if worker:
        print(f"worker   real {worker['real_per_second']} events/s   no-op "
              f"{worker['noop_per_second']} tasks/s   ratio {worker['ratio']} "
              f"({worker['jobs']} events)", file=out)
        if "naive_ratio" in worker:
            print(f"         naive {worker['naive_per_second']} events/s   ratio "
                  f"{worker['naive_ratio']}   project/naive "
                  f"{round(worker['ratio'] / worker['naive_ratio'], 3)}", file=out)
    if report.get("end_to_end"):
        _print_stack_figures(report, out)
    for row in report["targets"]:
        print(f"  {'met ' if row['met'] else 'MISS'}  {row['name']}: {row['measured']} "
              f"(target {row['target']})", file=out)
    print(f"report: {path}", file=out)


def _print_run(label: str, run: dict, out) -> None:
    cpu = ", ".join(f"{name} {seconds}" for name, seconds in run["cpu_seconds_during_load"].items())
    drain_cpu = ", ".join(f"{name} {seconds}"
                          for name, seconds in run["cpu_seconds_during_drain"].items())
    print(f"{label:<9}{run['events_per_minute']} events/min; accepted {run['accepted']}, "
          f"done {run['processed']}, lost {run['lost']}, drain {run['drain_after_load_seconds']}"
          f" s, max depth {run['max_depth']}, intake p50 {run['intake_p50_ms']} ms, "
          f"p99 {run['intake_p99_ms']} ms", file=out)
    print(f"{'':<9}CPU s during the load: {cpu}; during the drain: {drain_cpu}", file=out)


def _print_stack_figures(report: dict, out) -> None:
    _print_run("e2e", report["end_to_end"], out)
    if "naive_end_to_end" in report:
        _print_run("naive", report["naive_end_to_end"], out)
        print(f"{'':<9}project/naive end to end "
              f"{_ratio(report, 'end_to_end', 'naive_end_to_end', 'events_per_minute')}",
              file=out)
    if "pipeline_ceiling" in report:
        _print_run("ceiling", report["pipeline_ceiling"], out)
    if "naive_ceiling" in report:
        _print_run("naive-c", report["naive_ceiling"], out)
    lat = report["latency_500_per_min"]
    print(f"latency  at 500/min: real p50 {lat['p50_ms']} ms, p99 {lat['p99_ms']} ms; bare p50 "
          f"{lat['bare']['p50_ms']} ms, p99 {lat['bare']['p99_ms']} ms; overhead p50 "
          f"{lat['overhead_p50_ms']} ms, p99 {lat['overhead_p99_ms']} ms", file=out)
    burst = report["burst_10x"]
    print(f"burst    10x ({burst['rate_per_minute']:.0f}/min): max depth {burst['max_depth']} "
          f"(bound {burst['bound']}), p99 {burst['p99_ms']} ms", file=out)


if __name__ == "__main__":
    sys.exit(main())
