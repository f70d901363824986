"""Benchmark: the webhook pipeline against the bare stack, on one machine, in one run.

    python -m loadtests.bench [--seconds 15] [--e2e-seconds 60] [--ceiling] [--json]

Measures, with the same gunicorn settings for both endpoints:
  intake      requests/s and p50/p99 of POST /webhooks/stripe (verify, store, enqueue)
              against a bare Flask endpoint that only reads the body and answers 200
  worker      events/s of webhooks.process_event doing real work against a no-op task
  end-to-end  events/min sustained through intake and workers, every one processed
  latency     intake p50/p99 at a steady 500 events/min
  burst       the largest `webhooks` depth during 10x that rate
  ceiling     (--ceiling) end to end again with events no handler takes: the pipeline's
              own limit on this machine, before any domain work
Prints the figures and ratios against the targets and writes a JSON report to
loadtests/reports/. The load generator is wrk (installed with apt-get when missing and
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
    "e2e_events_per_minute": 30000,
    "latency_p99_ms_at_500_per_min": 50.0,
}


def ensure_wrk() -> str | None:
    found = shutil.which("wrk")
    if found or os.geteuid() != 0 or not shutil.which("apt-get"):
        return found
    say("installing wrk with apt-get")
    subprocess.run(["apt-get", "install", "-y", "-q", "wrk"], capture_output=True, check=False)
    return shutil.which("wrk")


def write_deliveries(path: Path, count: int, orders: int, *,
                     event_type: str = "payment_intent.succeeded") -> None:
    """Signed Stripe deliveries, one per line; payments for seeded orders by default."""
    with path.open("w") as handle:
        for n in range(count):
            _, body, headers, _ = signing.stripe_payment(1 + n % orders, 1000, secret=SECRET)
            if event_type != "payment_intent.succeeded":
                event = json.loads(body)
                event["type"] = event_type
                body = json.dumps(event).encode()
                headers = signing.stripe_headers(body, secret=SECRET)
            handle.write(f"{headers['Stripe-Signature']}\t{body.decode()}\n")


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


def paced_latency(url: str, *, per_minute: float, seconds: int, orders: int,
                  sampler=None) -> dict:
    """Send at a steady rate from a few threads; latencies of every request."""
    interval = 60.0 / per_minute
    threads = max(1, min(32, int(per_minute / 600) + 1))
    latencies: list[float] = []
    lock = threading.Lock()
    start = time.monotonic()

    def sender(offset: int):
        session = requests.Session()
        n = offset
        while True:
            due = start + n * interval
            if due - start >= seconds:
                return
            time.sleep(max(0.0, due - time.monotonic()))
            _, body, headers, _ = signing.stripe_payment(1 + n % orders, 1000, secret=SECRET)
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


def counts(dsn: str) -> dict:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return dict(conn.execute(
            "SELECT status, count(*) FROM webhook_events GROUP BY status").fetchall())


def wait_drained(client, dsn: str, *, timeout: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        by_status = counts(dsn)
        outstanding = sum(v for k, v in by_status.items() if k not in DONE)
        if outstanding == 0 and client.llen("webhooks") == 0:
            return time.monotonic() - started
        time.sleep(0.2)
    raise SystemExit(f"bench: not drained in {timeout} s: {counts(dsn)}")


def drain_rate(stack: Stack, client, dsn: str, *, jobs: int, concurrency: int) -> float:
    """Start a webhooks worker on a full queue; jobs per second until it is empty."""
    started = time.monotonic()
    stack.start_webhook_worker(concurrency)
    while client.llen("webhooks") > 0:
        if time.monotonic() - started > 600:
            raise SystemExit("bench: queue did not drain in 10 minutes")
        time.sleep(0.05)
    elapsed = time.monotonic() - started
    stack.stop("worker-webhooks")
    return jobs / elapsed


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
    parser.add_argument("--orders", type=int, default=2000)
    parser.add_argument("--only", choices=("intake", "worker"),
                        help="stop after the intake, or the intake and worker, measurements")
    parser.add_argument("--ceiling", action="store_true",
                        help="also run end to end with events no handler takes (stored, "
                             "claimed, marked ignored): the pipeline without domain work")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    REPORTS.mkdir(parents=True, exist_ok=True)
    wrk = ensure_wrk()
    say(f"load generator: {wrk or 'python client'}")
    report: dict = {"machine": {"cpus": os.cpu_count()}, "generator": "wrk" if wrk else "python",
                    "gunicorn": f"-w {args.web_workers} --threads {args.web_threads}",
                    "webhooks_worker": f"--pool {args.worker_pool} -c {args.worker_concurrency}"}

    # 1. Intake against the bare endpoint, workers off, no depth bound in the way.
    with Stack(web_workers=args.web_workers, web_threads=args.web_threads, with_workers=False,
               with_beat=False, extra_env={"QUEUE_DEPTH_MAX": "100000000"},
               webhook_pool=args.worker_pool) as stack:
        stack.flask("demo", "seed", "--customers", "50", "--products", "20",
                    "--orders", str(args.orders))
        deliveries = stack.tmp / "deliveries.tsv"
        write_deliveries(deliveries, 150000 if wrk else 40000, args.orders)
        bare_port = free_port()
        stack.spawn("bare", [str(BIN / "gunicorn"), "-w", str(args.web_workers), "--threads",
                             str(args.web_threads), "-b", f"127.0.0.1:{bare_port}",
                             "loadtests.bare_app:app"])
        time.sleep(2)
        say("intake: bare endpoint")
        bare = load(wrk, f"http://127.0.0.1:{bare_port}/webhooks/stripe", deliveries, args.seconds)
        say("intake: real endpoint")
        real = load(wrk, f"{stack.url}/webhooks/stripe", deliveries, args.seconds)
        report["intake"] = {"bare": bare, "real": real,
                            "ratio": round(real["requests_per_second"]
                                           / bare["requests_per_second"], 3)}

        if args.only == "intake":
            return _finish(report, args)
        # 2. Workers: drain what intake queued, then as many no-op tasks.
        client = redis.Redis.from_url(stack.env["REDIS_URL"])
        dsn = stack.env["DATABASE_URL"]
        queued = client.llen("webhooks")
        say(f"worker: draining {queued} real events")
        real_rate = drain_rate(stack, client, dsn, jobs=queued, concurrency=args.worker_concurrency)
        _publish_noops(stack, queued)
        say(f"worker: draining {queued} no-op tasks")
        noop_rate = drain_rate(stack, client, dsn, jobs=queued, concurrency=args.worker_concurrency)
        report["worker"] = {"jobs": queued, "real_per_second": round(real_rate, 1),
                            "noop_per_second": round(noop_rate, 1),
                            "ratio": round(real_rate / noop_rate, 3)}

    if args.only == "worker":
        return _finish(report, args)
    # 3. End to end, 4. latency at 500/min, 5. a 10x burst: the whole stack, default bound.
    with Stack(web_workers=args.web_workers, web_threads=args.web_threads,
               webhook_workers=args.worker_concurrency, webhook_pool=args.worker_pool) as stack:
        stack.flask("demo", "seed", "--customers", "50", "--products", "20",
                    "--orders", str(args.orders))
        client = redis.Redis.from_url(stack.env["REDIS_URL"])
        dsn = stack.env["DATABASE_URL"]
        deliveries = stack.tmp / "deliveries.tsv"
        write_deliveries(deliveries, 400000 if wrk else 60000, args.orders)
        samples: list[int] = []
        stop = threading.Event()
        threading.Thread(target=_sample, args=(client, samples, stop), daemon=True).start()
        say(f"end to end: {args.e2e_seconds} s at full speed")
        report["end_to_end"] = end_to_end(wrk, stack, client, dsn, deliveries,
                                          seconds=args.e2e_seconds, samples=samples)
        if args.ceiling:
            samples.clear()
            unhandled = stack.tmp / "unhandled.tsv"
            write_deliveries(unhandled, 400000 if wrk else 60000, args.orders,
                             event_type="customer.updated")
            say(f"pipeline ceiling: {args.e2e_seconds} s of events no handler takes")
            report["pipeline_ceiling"] = end_to_end(wrk, stack, client, dsn, unhandled,
                                                    seconds=args.e2e_seconds, samples=samples)
        samples.clear()
        say("latency at 500 events/min")
        report["latency_500_per_min"] = paced_latency(f"{stack.url}/webhooks/stripe",
                                                      per_minute=500, seconds=30,
                                                      orders=args.orders)
        say("burst: 10x for 30 s")
        burst = paced_latency(f"{stack.url}/webhooks/stripe", per_minute=5000, seconds=30,
                              orders=args.orders)
        wait_drained(client, dsn, timeout=600)
        burst["max_depth"] = max(samples, default=0)
        burst["bound"] = int(stack.env.get("QUEUE_DEPTH_MAX", 2000))
        report["burst_10x"] = burst
        stop.set()
    return _finish(report, args)


def _finish(report: dict, args) -> int:
    report["targets"] = _judge(report)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = REPORTS / f"bench-{stamp}.json"
    path.write_text(json.dumps(report, indent=2))
    _print(report, path)
    if args.json:
        print(json.dumps(report, indent=2))
    return 0


def end_to_end(wrk, stack: Stack, client, dsn: str, deliveries: Path, *, seconds: int,
               samples: list[int]) -> dict:
    """Load at full speed for `seconds`, wait until every event is done; events/min overall."""
    before = sum(counts(dsn).get(status, 0) for status in DONE)
    started = time.monotonic()
    sent = load(wrk, f"{stack.url}/webhooks/stripe", deliveries, seconds)
    drain = wait_drained(client, dsn, timeout=900)
    total_seconds = time.monotonic() - started
    done = sum(counts(dsn).get(status, 0) for status in DONE) - before
    accepted = sent["requests"] - sent["non_2xx"]
    return {"seconds": seconds, "accepted": accepted, "processed": done,
            "lost": max(0, accepted - done), "drain_after_load_seconds": round(drain, 1),
            "events_per_minute": round(done / total_seconds * 60),
            "intake_per_second": sent["requests_per_second"],
            "max_depth": max(samples, default=0)}


def _publish_noops(stack: Stack, count: int) -> None:
    env = {**stack.env, "WEBHOOK_HANDLER_MODULES": "loadtests.bench_tasks"}
    code = ("import sys; from service import create_app; app = create_app(); "
            "c = app.extensions['celery']\n"
            "with app.app_context():\n"
            f"    [c.send_task('bench.noop', args=[n], queue='webhooks') for n in range({count})]")
    subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, check=True,
                   capture_output=True)
    stack.env["WEBHOOK_HANDLER_MODULES"] = "loadtests.bench_tasks"


def _sample(client, samples: list[int], stop: threading.Event) -> None:
    from service.queues.depth import depth

    while not stop.is_set():
        try:
            samples.append(depth(client, "webhooks"))
        except redis.RedisError:
            pass
        time.sleep(0.05)


def _judge(report: dict) -> list[dict]:
    rows = [("intake throughput vs bare", report["intake"]["ratio"], TARGETS["intake_ratio"],
             ">=")]
    if "worker" in report:
        rows.append(("worker rate vs no-op", report["worker"]["ratio"], TARGETS["worker_ratio"],
                     ">="))
    if "end_to_end" in report:
        rows += [
            ("end-to-end events/min", report["end_to_end"]["events_per_minute"],
             TARGETS["e2e_events_per_minute"], ">="),
            ("events lost end to end", report["end_to_end"]["lost"], 0, "<="),
            ("intake p99 ms at 500/min", report["latency_500_per_min"]["p99_ms"],
             TARGETS["latency_p99_ms_at_500_per_min"], "<="),
            ("max depth in a 10x burst", report["burst_10x"]["max_depth"],
             report["burst_10x"]["bound"], "<="),
        ]
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
    worker = report.get("worker")
    if worker:
        print(f"worker   real {worker['real_per_second']} events/s   no-op "
              f"{worker['noop_per_second']} tasks/s   ratio {worker['ratio']} "
              f"({worker['jobs']} jobs)", file=out)
    e2e = report.get("end_to_end")
    if e2e:
        _print_stack_figures(report, out)
    for row in report["targets"]:
        print(f"  {'met ' if row['met'] else 'MISS'}  {row['name']}: {row['measured']} "
              f"(target {row['target']})", file=out)
    print(f"report: {path}", file=out)


def _print_stack_figures(report: dict, out) -> None:
    e2e = report["end_to_end"]
    print(f"e2e      {e2e['events_per_minute']} events/min sustained; accepted {e2e['accepted']},"
          f" processed {e2e['processed']}, lost {e2e['lost']}, max depth {e2e['max_depth']}",
          file=out)
    ceiling = report.get("pipeline_ceiling")
    if ceiling:
        print(f"ceiling  {ceiling['events_per_minute']} events/min with no domain work; accepted "
              f"{ceiling['accepted']}, done {ceiling['processed']}, lost {ceiling['lost']}",
              file=out)
    lat = report["latency_500_per_min"]
    print(f"latency  at 500/min: p50 {lat['p50_ms']} ms, p99 {lat['p99_ms']} ms", file=out)
    burst = report["burst_10x"]
    print(f"burst    10x ({burst['rate_per_minute']:.0f}/min): max depth {burst['max_depth']} "
          f"(bound {burst['bound']}), p99 {burst['p99_ms']} ms", file=out)


if __name__ == "__main__":
    sys.exit(main())
