"""Bounded polling for tests that wait on other processes."""

from __future__ import annotations

import time


def wait_until(predicate, timeout: float, what, *, logs=(), interval: float = 0.1):
    """Poll `predicate` until it returns something truthy; fail after `timeout` seconds.

    `what` (a string, or a callable giving one) and the tails of `logs` (processes from
    tests.support.processes) make the failure message.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            what = what() if callable(what) else what
            tails = "".join(f"\n--- {p.log_path.name} ---\n{p.log()[-3000:]}" for p in logs if p)
            raise AssertionError(f"timed out after {timeout}s waiting for {what}{tails}")
        time.sleep(interval)
