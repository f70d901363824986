"""The runbooks' charts (matplotlib): what a responder would rather look at than read.

Each function draws one figure; the notebook's inline backend shows it under the cell.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime, timedelta

import matplotlib.pyplot as plt

WIDE = (10, 3.2)


def _empty(ax, title: str, message: str) -> None:
    ax.set_title(title)
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes)
    ax.set_xticks([])
    ax.set_yticks([])


def _time_axis(ax, fig) -> None:
    ax.set_xlabel("UTC")
    fig.autofmt_xdate()


def failures_per_bucket(timeline: list[dict], *, bucket_seconds: int = 300,
                        window: tuple[datetime, datetime] | None = None) -> None:
    """Stacked bars: failures per bucket, one colour per provider and error, over the
    window (`(since, until)`) when given."""
    fig, ax = plt.subplots(figsize=WIDE)
    title = f"Webhook failures per {bucket_seconds // 60} min, by provider and error"
    if not timeline:
        _empty(ax, title, "no failures in the window")
        return
    series: dict[str, dict[datetime, int]] = defaultdict(dict)
    for row in timeline:
        series[f"{row['provider']}: {row['error']}"][row["bucket"]] = row["count"]
    buckets = sorted({row["bucket"] for row in timeline})
    width = timedelta(seconds=bucket_seconds * 0.8)
    bottom = [0] * len(buckets)
    for label, counts in sorted(series.items()):
        heights = [counts.get(b, 0) for b in buckets]
        ax.bar(buckets, heights, width=width, bottom=bottom, label=label, align="edge")
        bottom = [a + b for a, b in zip(bottom, heights, strict=True)]
    ax.set_title(title)
    ax.set_ylabel("failures")
    if window is not None:
        ax.set_xlim(window[0], window[1] + timedelta(seconds=bucket_seconds))
    ax.legend(fontsize="small", loc="upper left")
    _time_axis(ax, fig)


def received_vs_processed(flow: list[dict], *, duplicates: list[dict] | None = None) -> None:
    """Events received, processed and failed per bucket (and duplicate deliveries)."""
    fig, ax = plt.subplots(figsize=WIDE)
    title = "Events received vs processed"
    if not flow:
        _empty(ax, title, "no events in the window")
        return
    buckets = [row["bucket"] for row in flow]
    ax.plot(buckets, [row["received"] for row in flow], marker="o", label="received (stored)")
    ax.plot(buckets, [row["processed"] for row in flow], marker="o", label="processed")
    ax.plot(buckets, [row["failed"] for row in flow], marker="x", label="failed")
    if duplicates is not None:
        ax.plot([d["bucket"] for d in duplicates], [d["duplicates"] for d in duplicates],
                marker="^", linestyle="--", label="duplicate deliveries")
    ax.set_title(title)
    ax.set_ylabel("events per bucket")
    ax.legend(fontsize="small", loc="upper left")
    _time_axis(ax, fig)


def queue_depth_and_wait(samples: list[dict], *, queue: str,
                         window: tuple[datetime, datetime] | None = None) -> None:
    """A queue's depth (left axis) and its oldest job's wait (right axis) over the window,
    from the samples beat records every minute."""
    fig, ax = plt.subplots(figsize=WIDE)
    title = f"Queue {queue}: depth and oldest wait"
    points = [s for s in samples if s["queue"] == queue]
    if not points:
        _empty(ax, title, "no samples in the window (beat records one a minute)")
        return
    times = [datetime.fromisoformat(s["sampled_at"].replace("Z", "+00:00")) for s in points]
    ax.plot(times, [s["depth"] for s in points], color="tab:blue", marker="o", label="depth")
    ax.set_ylabel("jobs waiting", color="tab:blue")
    wait = ax.twinx()
    wait.plot(times, [s["oldest_wait_seconds"] or 0 for s in points], color="tab:red",
              marker="x", label="oldest wait (s)")
    wait.set_ylabel("oldest wait (s)", color="tab:red")
    if window is not None:
        ax.set_xlim(*(t.replace(tzinfo=times[0].tzinfo) for t in window))
    ax.set_title(title)
    _time_axis(ax, fig)


def sync_runs(runs: list[dict]) -> None:
    """The ERP sync runs, oldest first: stock changes applied per run, failed runs marked."""
    _fig, ax = plt.subplots(figsize=WIDE)
    title = "ERP sync runs: stock changes applied (failed runs in red)"
    if not runs:
        _empty(ax, title, "no sync runs in the window")
        return
    labels = [f"#{r['id']}" for r in runs]
    colours = ["tab:red" if r["status"] == "failed" else
               "tab:green" if r["status"] == "succeeded" else "tab:gray" for r in runs]
    ax.bar(labels, [max(r["applied"], 0.2) for r in runs], color=colours)
    ax.set_title(title)
    ax.set_ylabel("applied")
    ax.set_xlabel("run")
