"""Counts kept in memory per process and added to Redis in batches.

Counting on a hot path (a request, a task) then costs no round trip: a process adds its
counts at most once per `every` seconds, on the next count after that. With `timer`, a
thread of its own adds what is left when the process goes quiet (a worker that always
writes to one Redis). Counting never fails the caller: when Redis is down the counts
wait for the next flush.
"""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from collections.abc import Callable

import redis


class BufferedCounts:
    def __init__(self, write: Callable[[object, str, int], None], *, every: float = 1.0,
                 timer: bool = False, name: str = "racine-counts"):
        """`write(pipeline, key, amount)` queues the Redis commands that add one count."""
        self._write = write
        self._every = every
        self._name = name
        self._pending: Counter = Counter()
        self._lock = threading.Lock()
        self._last_flush = 0.0
        self._timer_pid = 0 if timer else None

    def add(self, key: str, amount: int, client: Callable[[], redis.Redis]) -> None:
        """Count; `client` is called for the Redis client only when a flush is due."""
        with self._lock:
            self._pending[key] += amount
            due = time.monotonic() - self._last_flush >= self._every
        if self._timer_pid is not None and self._timer_pid != os.getpid():
            # The first count in this (possibly forked) process starts its timer.
            self._timer_pid = os.getpid()
            threading.Thread(target=self._flush_forever, args=(client(),), name=self._name,
                             daemon=True).start()
        if due:
            self.flush(client())

    def flush(self, client: redis.Redis) -> None:
        with self._lock:
            pending = dict(self._pending)
            self._pending.clear()
            self._last_flush = time.monotonic()
        if not pending:
            return
        try:
            pipe = client.pipeline(transaction=False)
            for key, amount in pending.items():
                self._write(pipe, key, amount)
            pipe.execute()
        except redis.RedisError:
            with self._lock:
                self._pending.update(pending)

    def _flush_forever(self, client: redis.Redis) -> None:
        while True:
            time.sleep(self._every)
            self.flush(client)
