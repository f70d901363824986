"""Counts kept in memory per process and added to Redis in batches.

Counting on a hot path (a request, a task) then costs no round trip: a process adds its
counts at most once per `every` seconds, on the next count after that. With `timer`, a
thread of its own adds what is left when the process goes quiet (a worker that always
writes to one Redis). What a process still holds when it exits is added then
(`flush_all`, run at interpreter exit and by the Celery shutdown hooks), so a gunicorn
worker recycled or a pool process stopped loses nothing. Counting never fails the
caller: when Redis is down the counts wait for the next flush.
"""

from __future__ import annotations

import atexit
import os
import threading
import time
import weakref
from collections import Counter
from collections.abc import Callable

import redis

_instances: weakref.WeakSet[BufferedCounts] = weakref.WeakSet()


class BufferedCounts:
    def __init__(self, write: Callable[[object, str, int], None], *, every: float = 1.0,
                 timer: bool = False, name: str = "racine-counts"):
        """`write(pipeline, key, amount)` queues the Redis commands that add one count."""
        self._write = write
        self.every = every
        self._name = name
        self._pending: Counter = Counter()
        self._lock = threading.Lock()
        self._last_flush = time.monotonic()
        self._timer_pid = 0 if timer else None
        # The client of the last count: where an exit flush sends what is left.
        self._last_client: redis.Redis | None = None
        _instances.add(self)

    def add(self, key: str, amount: int, client: Callable[[], redis.Redis]) -> None:
        """Count; `client` gives the Redis client the counts go to."""
        resolved = self._last_client = client()
        with self._lock:
            self._pending[key] += amount
            due = time.monotonic() - self._last_flush >= self.every
        if self._timer_pid is not None and self._timer_pid != os.getpid():
            # The first count in this (possibly forked) process starts its timer.
            self._timer_pid = os.getpid()
            threading.Thread(target=self._flush_forever, args=(resolved,), name=self._name,
                             daemon=True).start()
        if due:
            self.flush(resolved)

    def flush(self, client: redis.Redis | None = None) -> None:
        client = client or self._last_client
        with self._lock:
            pending = dict(self._pending)
            self._pending.clear()
            self._last_flush = time.monotonic()
        if not pending or client is None:
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
            time.sleep(self.every)
            self.flush(client)


def flush_all(**_signal_kwargs) -> None:
    """Add every count this process still holds to Redis (at exit, worker shutdown)."""
    for counts in list(_instances):
        counts.flush()


atexit.register(flush_all)
