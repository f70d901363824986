"""Medians of several benchmark reports, side by side for the service and the naive pipeline.

    python -m loadtests.bench_summary loadtests/reports/bench-*.json

The machine is shared and noisy: compare medians of runs made in one sitting, and ratios
within one run rather than figures across runs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path


def _get(report: dict, path: str):
    value = report
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def _ratio(report: dict, mine: str, naive: str):
    a, b = _get(report, mine), _get(report, naive)
    return None if a is None or not b else a / b


ROWS = [
    ("intake, ratio to bare", "intake.naive_ratio", "intake.ratio"),
    ("worker, ratio to no-op", "worker.naive_ratio", "worker.ratio"),
    ("end to end, events/min, 0 lost", "naive_end_to_end.events_per_minute",
     "end_to_end.events_per_minute"),
    ("events accepted in the load", "naive_end_to_end.accepted", "end_to_end.accepted"),
    ("lost", "naive_end_to_end.lost", "end_to_end.lost"),
    ("drain after the load, s", "naive_end_to_end.drain_after_load_seconds",
     "end_to_end.drain_after_load_seconds"),
    ("max queue depth", "naive_end_to_end.max_depth", "end_to_end.max_depth"),
    ("intake p99 at saturation, ms", "naive_end_to_end.intake_p99_ms", "end_to_end.intake_p99_ms"),
    ("--ceiling, events/min", "naive_ceiling.events_per_minute",
     "pipeline_ceiling.events_per_minute"),
    ("overhead at 500/min p50, ms (real - bare)", None, "latency_500_per_min.overhead_p50_ms"),
    ("overhead at 500/min p99, ms (real - bare)", None, "latency_500_per_min.overhead_p99_ms"),
    ("max depth in a 10x burst", None, "burst_10x.max_depth"),
]


def _median(values: list) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    middle = statistics.median(values)
    spread = f" ({round(min(values), 3):g}-{round(max(values), 3):g})" if len(values) > 1 else ""
    return f"{round(middle, 3):g}{spread}"


def summary(reports: list[dict]) -> str:
    lines = [f"medians of {len(reports)} run(s) (range)", "",
             "| measure | naive pipeline | this project | project/naive |",
             "| --- | --- | --- | --- |"]
    for label, naive, mine in ROWS:
        naive_values = [_get(r, naive) for r in reports] if naive else []
        mine_values = [_get(r, mine) for r in reports]
        ratios = [_ratio(r, mine, naive) for r in reports] if naive else []
        lines.append(f"| {label} | {_median(naive_values) if naive else '-'} | "
                     f"{_median(mine_values)} | {_median(ratios) if naive else '-'} |")
    cpu = {}
    for report in reports:
        for key in ("end_to_end", "naive_end_to_end"):
            for name, seconds in (_get(report, f"{key}.cpu_seconds_during_load") or {}).items():
                cpu.setdefault(name, []).append(seconds)
    lines += ["", "CPU seconds per process during the end-to-end load: " + ", ".join(
        f"{name} {_median(values)}" for name, values in cpu.items())]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.bench_summary",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("reports", nargs="+", type=Path)
    args = parser.parse_args(argv)
    print(summary([json.loads(path.read_text()) for path in args.reports]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
