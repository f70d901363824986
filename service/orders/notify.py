"""Outbound order notifications, behind a small interface chosen by configuration."""

from __future__ import annotations

import logging
from typing import Protocol

import requests

log = logging.getLogger(__name__)


class Notifier(Protocol):
    channel: str

    def send(self, *, order_id: int, kind: str, payload: dict) -> None:
        """Deliver the message or raise; callers retry."""


class LogNotifier:
    """Development default: the notification is a log line (ids only)."""

    channel = "log"

    def send(self, *, order_id: int, kind: str, payload: dict) -> None:
        log.info("order notification", extra={"outcome": kind, "count": order_id})


class HttpNotifier:
    """POSTs the notification as JSON to ORDER_NOTIFY_URL (the messaging service)."""

    channel = "http"

    def __init__(self, *, url: str, timeout: float = 5.0, session: requests.Session | None = None):
        self._url = url
        self._timeout = timeout
        self._session = session or requests.Session()

    def send(self, *, order_id: int, kind: str, payload: dict) -> None:
        response = self._session.post(self._url, json={"order_id": order_id, "kind": kind,
                                                        **payload}, timeout=self._timeout)
        response.raise_for_status()
