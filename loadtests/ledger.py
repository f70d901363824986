"""What a load run sent and saw, kept in the Locust process for the end-to-end check."""

from __future__ import annotations

import os
import random
import threading
import time
from collections import Counter

import redis


class Ledger:
    def __init__(self):
        self._lock = threading.Lock()
        self.started_at: float | None = None
        self.finished_at: float | None = None
        self.sent: list[tuple[str, str, str, bytes]] = []  # provider, event id, ref, body
        self.accepted_keys: set[tuple[str, str]] = set()
        self.refs: dict[tuple[str, str], str] = {}  # (provider, event id) -> payment ref
        self.forged_refs: list[tuple[str, str]] = []
        self.answers: Counter = Counter()
        self.depth_samples: list[int] = []

    def start(self) -> None:
        with self._lock:
            if self.started_at is None:
                self.started_at = time.monotonic()

    def accepted(self, provider: str, event_id: str, ref: str, body: bytes) -> None:
        with self._lock:
            self.sent.append((provider, event_id, ref, body))
            self.accepted_keys.add((provider, event_id))
            self.refs[(provider, event_id)] = ref

    def forged(self, event_id: str, ref: str) -> None:
        with self._lock:
            self.forged_refs.append((event_id, ref))

    def answer(self, kind: str) -> None:
        with self._lock:
            self.answers[kind] += 1
            self.finished_at = time.monotonic()

    def random_sent(self):
        with self._lock:
            return random.choice(self.sent) if self.sent else None

    def sample_depth_forever(self, interval: float = 0.1) -> None:
        from service.queues.depth import depth

        client = redis.Redis.from_url(os.environ["REDIS_URL"], socket_timeout=2)
        while True:
            try:
                self.depth_samples.append(depth(client, "webhooks"))
            except redis.RedisError:
                pass
            time.sleep(interval)


LEDGER = Ledger()
