"""Raising signals: the one entry point other domains use to report a symptom."""

from __future__ import annotations

import json

from service.alerts.models import AlertSignal
from service.extensions import db

SEVERITIES = ("P0", "P1", "P2", "P3")


def raise_signal(*, severity: str, kind: str, source: str, details: dict | None = None) -> AlertSignal:
    """Add a signal to the current transaction; the caller commits."""
    if severity not in SEVERITIES:
        raise ValueError(f"severity must be one of {SEVERITIES}, got {severity!r}")
    signal = AlertSignal(severity=severity, kind=kind, source=source[:255],
                         details=json.dumps(details or {}, default=str, sort_keys=True))
    db.session.add(signal)
    return signal
