"""Short processing leases, renewed while their task runs.

A worker killed outright (kill -9 of the whole worker, or its host lost) leaves the
events it held leased until their lease expires; the relay then hands them to another
worker. So leases are short (PROCESSING_LEASE_SECONDS, 30 s), and a live worker keeps
the events it is running by renewing their leases from a background thread every
LEASE_RENEW_SECONDS (10 s).

Nothing of this is on the fast path: a task registers its claim in a dict and removes
it when done, and only a claim older than the renewal interval is ever renewed, so an
event processed in milliseconds costs no round trip at all. Should a renewal fail (the
database unreachable), the lease may expire and another worker take the event over; the
slow worker's final write then finds its token gone and commits nothing, so the event
is still applied once.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Iterator
from datetime import timedelta

from flask import Flask
from sqlalchemy import update
from sqlalchemy.exc import SQLAlchemyError

from service.clock import utcnow
from service.extensions import db
from service.webhooks.models import EventStatus, WebhookEvent

log = logging.getLogger(__name__)


class LeaseKeeper:
    """Renews the leases of the events this process is running."""

    def __init__(self, *, app: Flask, lease_seconds: float, renew_every: float):
        self._app = app
        self._lease = timedelta(seconds=lease_seconds)
        # Renewed well before it could expire, whatever the two settings say.
        self._every = min(renew_every, lease_seconds / 3)
        self._held: dict[int, tuple[str, float]] = {}  # event pk -> (token, last renewal)
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._pid: int | None = None
        self.renewals = 0

    @contextlib.contextmanager
    def hold(self, event_pk: int, token: str) -> Iterator[None]:
        """Keep `event_pk`'s lease (taken with `token`) alive while the block runs."""
        self._ensure_thread()
        with self._lock:
            self._held[event_pk] = (token, time.monotonic())
        try:
            yield
        finally:
            with self._lock:
                self._held.pop(event_pk, None)

    @contextlib.contextmanager
    def hold_all(self, leases: dict[int, str]) -> Iterator[None]:
        """Keep every lease of a batch alive (event pk -> token) while the block runs.

        The batch calls `done` for each event as it finishes, so a finished event's lease
        is no longer renewed while the rest of the batch runs; whatever is left is let go
        when the block ends, however it ends.
        """
        self._ensure_thread()
        now = time.monotonic()
        with self._lock:
            for event_pk, token in leases.items():
                self._held[event_pk] = (token, now)
        try:
            yield
        finally:
            with self._lock:
                for event_pk, token in leases.items():
                    if self._held.get(event_pk, (None,))[0] == token:
                        del self._held[event_pk]

    def done(self, event_pk: int) -> None:
        """Stop renewing `event_pk`'s lease (its outcome is committed)."""
        with self._lock:
            self._held.pop(event_pk, None)

    def renew_due(self) -> int:
        """Renew every lease held longer than the interval since its last renewal."""
        now = time.monotonic()
        with self._lock:
            due = {pk: token for pk, (token, renewed) in self._held.items()
                   if now - renewed >= self._every}
        renewed = 0
        for event_pk, token in due.items():
            if self._renew(event_pk, token):
                renewed += 1
                with self._lock:
                    if event_pk in self._held:
                        self._held[event_pk] = (token, now)
        return renewed

    def _renew(self, event_pk: int, token: str) -> bool:
        """Extend one lease, committed on its own connection at once.

        A separate transaction on purpose (beside the base task's): the renewal must be
        visible to the relay while the task's own transaction is still open, and must not
        wait for, or be rolled back with, the task's work.
        """
        with self._app.app_context():
            try:
                with db.engine.begin() as conn:
                    changed = conn.execute(
                        update(WebhookEvent)
                        .where(WebhookEvent.id == event_pk, WebhookEvent.lease_token == token,
                               WebhookEvent.status == EventStatus.PROCESSING)
                        .values(lease_expires_at=utcnow() + self._lease)
                    ).rowcount
            except SQLAlchemyError as exc:
                log.warning("lease renewal failed", extra={"event_pk": event_pk,
                                                           "error": type(exc).__name__})
                return False
        self.renewals += changed
        return bool(changed)

    def _ensure_thread(self) -> None:
        # Started lazily in each process that runs tasks: a thread does not survive the
        # fork of a prefork pool, so a pool process starts its own.
        pid = os.getpid()
        if self._pid == pid:
            return
        with self._lock:
            if self._pid == pid:
                return
            self._pid = pid
            self._held.clear()
            threading.Thread(target=self._run, name="racine-lease-keeper", daemon=True).start()

    def _run(self) -> None:
        tick = max(self._every / 4, 0.05)
        while True:
            self._wake.wait(tick)
            try:
                self.renew_due()
            except Exception as exc:  # never let the keeper thread die
                log.warning("lease keeper error", extra={"error": type(exc).__name__})
