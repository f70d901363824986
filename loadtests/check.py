"""The end-to-end check after a load run: nothing lost, nothing twice, lag, depth, errors."""

from __future__ import annotations

import json
import os
import sys
import time
import tomllib
from pathlib import Path

import psycopg

THRESHOLDS = Path(__file__).with_name("thresholds.toml")


def thresholds_for(scenario: str) -> dict:
    data = tomllib.loads(THRESHOLDS.read_text())
    return {**data.get("default", {}), **data.get(scenario, {})}


def _dsn() -> str:
    return os.environ["DATABASE_URL"].replace("postgresql+psycopg://", "postgresql://", 1)


def _percentile(values: list[float], fraction: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def measure(ledger, *, drain_timeout: float) -> dict:
    """Wait for the workers to finish the accepted events, then count in the database."""
    keys = sorted(ledger.accepted_keys)
    by_provider: dict[str, list[str]] = {}
    for provider, event_id in keys:
        by_provider.setdefault(provider, []).append(event_id)
    refs = [ledger.refs[k] for k in keys]
    deadline = time.monotonic() + drain_timeout
    with psycopg.connect(_dsn(), autocommit=True) as conn:
        while True:
            processed = sum(conn.execute(
                "SELECT count(*) FROM webhook_events WHERE provider = %s AND event_id = ANY(%s)"
                " AND status IN ('processed', 'ignored')", (provider, ids)).fetchone()[0]
                for provider, ids in by_provider.items())
            if processed >= len(keys) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        drained_in = drain_timeout - max(0.0, deadline - time.monotonic())
        stored = sum(conn.execute(
            "SELECT count(*) FROM webhook_events WHERE provider = %s AND event_id = ANY(%s)",
            (provider, ids)).fetchone()[0] for provider, ids in by_provider.items())
        lags = [row[0] for provider, ids in by_provider.items() for row in conn.execute(
            "SELECT EXTRACT(EPOCH FROM processed_at - received_at) FROM webhook_events"
            " WHERE provider = %s AND event_id = ANY(%s) AND processed_at IS NOT NULL",
            (provider, ids))]
        effects = dict(conn.execute(
            "SELECT provider_payment_id, count(*) FROM payments"
            " WHERE provider_payment_id = ANY(%s) GROUP BY provider_payment_id",
            (refs,)).fetchall())
        forged_ids = [event_id for event_id, _ in ledger.forged_refs]
        forged_refs = [ref for _, ref in ledger.forged_refs]
        forged_stored = conn.execute(
            "SELECT count(*) FROM webhook_events WHERE event_id = ANY(%s)", (forged_ids,)
        ).fetchone()[0]
        forged_effects = conn.execute(
            "SELECT count(*) FROM payments WHERE provider_payment_id = ANY(%s)", (forged_refs,)
        ).fetchone()[0]
    answers = dict(ledger.answers)
    total = sum(answers.values())
    elapsed = (ledger.finished_at or time.monotonic()) - (ledger.started_at or time.monotonic())
    return {
        "requests": total,
        "answers": answers,
        "accepted_events": len(keys),
        "stored": stored,
        "processed": processed,
        "lost": len(keys) - sum(1 for ref in refs if effects.get(ref, 0) >= 1),
        "effects_twice": sum(1 for count in effects.values() if count > 1),
        "forged_sent": len(forged_ids),
        "forged_stored": forged_stored,
        "forged_effects": forged_effects,
        "error_ratio": round(answers.get("unexpected", 0) / total, 5) if total else None,
        "lag_p50_seconds": _round(_percentile(lags, 0.50)),
        "lag_p99_seconds": _round(_percentile(lags, 0.99)),
        "max_queue_depth": max(ledger.depth_samples, default=0),
        "depth_samples": len(ledger.depth_samples),
        "send_seconds": round(elapsed, 1),
        "events_per_minute_sent": round(total / elapsed * 60, 1) if elapsed > 0 else None,
        "drain_seconds": round(drained_in, 1),
    }


def judge(figures: dict, limits: dict) -> list[tuple[str, object, object, bool]]:
    """(name, measured, limit, passed) for every threshold."""
    def at_most(name, measured, limit):
        return (name, measured, limit, measured is not None and measured <= limit)

    rows = [
        at_most("lost events", figures["lost"], limits["max_lost"]),
        at_most("effects applied twice", figures["effects_twice"], limits["max_effects_twice"]),
        at_most("forged events stored", figures["forged_stored"], 0),
        at_most("forged effects", figures["forged_effects"], 0),
        at_most("error ratio", figures["error_ratio"], limits["max_error_ratio"]),
        at_most("lag p50 (s)", figures["lag_p50_seconds"], limits["max_lag_p50_seconds"]),
        at_most("lag p99 (s)", figures["lag_p99_seconds"], limits["max_lag_p99_seconds"]),
        at_most("max queue depth", figures["max_queue_depth"], limits["max_queue_depth"]),
        ("requests sent", figures["requests"], f">= {limits['min_requests']}",
         figures["requests"] >= limits["min_requests"]),
    ]
    if not figures["accepted_events"]:
        # Lags of nothing are no figures: a run that accepted nothing fails here.
        rows.append(("accepted events", 0, "> 0", False))
    return rows


def print_summary(scenario: str, figures: dict, rows) -> None:
    out = sys.stderr
    print(f"\n=== load scenario {scenario}: end-to-end check ===", file=out)
    print(f"sent {figures['requests']} requests in {figures['send_seconds']} s "
          f"({figures['events_per_minute_sent']}/min): {figures['answers']}", file=out)
    print(f"accepted {figures['accepted_events']} distinct events; stored {figures['stored']}, "
          f"processed {figures['processed']} (drained in {figures['drain_seconds']} s)", file=out)
    width = max(len(r[0]) for r in rows)
    print(f"{'check'.ljust(width)}  {'measured':>10}  {'limit':>10}  result", file=out)
    for name, measured, limit, passed in rows:
        print(f"{name.ljust(width)}  {measured!s:>10}  {limit!s:>10}  "
              f"{'ok' if passed else 'MISSED'}", file=out)


def run_check(ledger, *, scenario: str, report_path: str | None) -> bool:
    limits = thresholds_for(scenario)
    figures = measure(ledger, drain_timeout=limits["drain_timeout_seconds"])
    rows = judge(figures, limits)
    print_summary(scenario, figures, rows)
    passed = all(row[3] for row in rows)
    if report_path:
        Path(report_path).parent.mkdir(parents=True, exist_ok=True)
        Path(report_path).write_text(json.dumps({
            "scenario": scenario, "passed": passed, "figures": figures,
            "checks": [{"name": n, "measured": m, "limit": lim, "passed": p}
                       for n, m, lim, p in rows]}, indent=2, default=str))
    return passed


def _round(value):
    return None if value is None else round(float(value), 3)
