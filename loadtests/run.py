"""Run Locust scenarios headless against a fresh stack, check each end to end.

    python -m loadtests.run --scenario steady --rate 500 --duration 60
    python -m loadtests.run --scenario steady,duplicate_storm,bad_actors --rate 1000

Exit code 0 when every scenario met its thresholds (loadtests/thresholds.toml), 1 when
one missed, 2 on a usage or set-up error. Reports go to loadtests/reports/.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time

from loadtests.stack import BIN, ROOT, Stack, say

SCENARIOS = {
    "steady": "SteadyUser",
    "flash_sale": "FlashSaleUser",
    "duplicate_storm": "DuplicateStormUser",
    "bad_actors": "BadActorUser",
}
REPORTS = ROOT / "loadtests" / "reports"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m loadtests.run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenario", default="steady",
                        help=f"comma-separated, from: {', '.join(SCENARIOS)}")
    parser.add_argument("--rate", type=float, default=500, help="events per minute (500)")
    parser.add_argument("--duration", type=int, default=60, help="seconds per scenario (60)")
    parser.add_argument("--users", type=int, default=0,
                        help="Locust users sharing the rate (default: one per 4 events/s)")
    parser.add_argument("--orders", type=int, default=2000, help="orders seeded to pay (2000)")
    parser.add_argument("--json", action="store_true", help="print the reports as JSON")
    args = parser.parse_args(argv)
    args.scenarios = [s.strip() for s in args.scenario.split(",") if s.strip()]
    unknown = [s for s in args.scenarios if s not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario(s): {', '.join(unknown)}")
    if args.rate <= 0 or args.duration <= 0:
        parser.error("--rate and --duration must be positive")
    return args


def run_scenario(stack: Stack, scenario: str, args, order_range: str) -> dict:
    users = args.users or max(2, math.ceil(args.rate / 60 / 4))
    duration = args.duration
    if scenario == "flash_sale":
        duration = max(duration, 100)  # room for the minute at 5x
    stamp = time.strftime("%Y%m%d-%H%M%S")
    report = REPORTS / f"{scenario}-{stamp}.json"
    env = {**stack.env, "LOADTEST_SCENARIO": scenario, "LOADTEST_RATE": str(args.rate),
           "LOADTEST_USERS": str(users), "LOADTEST_ORDER_IDS": order_range,
           "LOADTEST_PAYPAL_KEY": stack.paypal_key_path, "LOADTEST_REPORT": str(report)}
    argv = [str(BIN / "locust"), "-f", str(ROOT / "loadtests" / "locustfile.py"), "--headless",
            "-u", str(users), "-r", str(users), "--run-time", f"{duration}s",
            "--stop-timeout", "5", "--host", stack.url, "--only-summary",
            "--csv", str(REPORTS / f"{scenario}-{stamp}"), SCENARIOS[scenario]]
    say(f"{scenario}: {args.rate:g} events/min for {duration} s with {users} users")
    started = time.monotonic()
    result = subprocess.run(argv, env=env, cwd=ROOT)
    data = json.loads(report.read_text()) if report.exists() else {
        "scenario": scenario, "passed": False, "figures": {}, "checks": []}
    data["locust_exit_code"] = result.returncode
    data["passed"] = bool(data.get("passed")) and result.returncode == 0
    data["wall_seconds"] = round(time.monotonic() - started, 1)
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text(json.dumps(data, indent=2, default=str))
    return data


def main(argv=None) -> int:
    args = parse_args(argv)
    REPORTS.mkdir(parents=True, exist_ok=True)
    results = []
    with Stack() as stack:
        say(stack.flask("demo", "seed", "--customers", "50", "--products", "20",
                        "--orders", str(args.orders)).strip())
        order_range = f"1-{args.orders}"
        for scenario in args.scenarios:
            results.append(run_scenario(stack, scenario, args, order_range))
    print("\n=== load scenarios ===", file=sys.stderr)
    for data in results:
        figures = data.get("figures", {})
        print(f"{data['scenario']:<16} {'PASSED' if data['passed'] else 'FAILED'}  "
              f"sent/min {figures.get('events_per_minute_sent')}  "
              f"lost {figures.get('lost')}  twice {figures.get('effects_twice')}  "
              f"lag p50/p99 {figures.get('lag_p50_seconds')}/{figures.get('lag_p99_seconds')} s  "
              f"max depth {figures.get('max_queue_depth')}  "
              f"errors {figures.get('error_ratio')}", file=sys.stderr)
    if args.json:
        print(json.dumps(results, indent=2, default=str))
    return 0 if results and all(r["passed"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
