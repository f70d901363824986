"""Retention: payloads of processed events keep their ids, amounts, currencies and types,
and lose everything else (names, e-mail addresses, postal addresses, card details).

`redact_payload` is a pure function over the stored JSON text, by allow-list: a key is
kept only when it is known to carry no personal data, so a field a provider adds
tomorrow is removed rather than kept. `purge_payloads` applies it in batches to events
processed before a cut-off (`flask webhooks purge`, and a daily beat entry with
PAYLOAD_RETENTION_DAYS).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, select, update

from service.clock import utcnow
from service.extensions import db
from service.webhooks.models import EventStatus, WebhookEvent, WebhookFailure

log = logging.getLogger(__name__)

# Scalar fields kept wherever they appear: identity, type, state, time, money.
_KEPT = frozenset({
    "id", "object", "type", "event_type", "resource_type", "resource_version",
    "summary_type", "api_version", "created", "create_time", "update_time", "livemode",
    "status", "currency", "currency_code", "payment_intent", "charge", "custom_id",
    "final_capture", "has_more", "rel", "href", "method",
})
# Containers walked into (their kept fields stay, the rest goes).
_WALKED = frozenset({
    "data", "object", "resource", "refunds", "links", "previous_attributes",
    "seller_payable_breakdown", "seller_receivable_breakdown",
})
# Inside metadata, only the order reference.
_METADATA_KEPT = frozenset({"order_id"})
REDACTED_MARK = "_redacted"


def redact_payload(text: str) -> str:
    """The payload with only ids, amounts, currencies, types and states left.

    A payload that is not a JSON object (it could not have been accepted) becomes an
    empty marked object: nothing in it can be told safe.
    """
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    kept = _walk(data) if isinstance(data, dict) else {}
    kept[REDACTED_MARK] = True
    return json.dumps(kept, separators=(",", ":"), sort_keys=True)


def _keeps(key: str) -> bool:
    return key in _KEPT or key.endswith("_id") or "amount" in key


def _walk(node: dict, *, in_amount: bool = False) -> dict:
    kept = {}
    for key, value in node.items():
        if key == "metadata" and isinstance(value, dict):
            kept[key] = {k: v for k, v in value.items()
                         if k in _METADATA_KEPT and not isinstance(v, dict | list)}
        elif isinstance(value, dict):
            if key in _WALKED or _keeps(key):
                kept[key] = _walk(value, in_amount="amount" in key)
        elif isinstance(value, list):
            if key in _WALKED:
                kept[key] = [_walk(item) if isinstance(item, dict) else None
                             for item in value]
        elif _keeps(key) or (in_amount and key == "value"):
            kept[key] = value
    return kept


@dataclass
class PurgeReport:
    cutoff: str
    dry_run: bool
    selected: int = 0
    redacted: int = 0
    failures_redacted: int = 0

    def as_dict(self) -> dict:
        return asdict(self)


def retention_cutoff(days: int) -> datetime:
    """Events processed before this are past PAYLOAD_RETENTION_DAYS."""
    return utcnow() - timedelta(days=days)


def _purgeable(cutoff: datetime):
    return (WebhookEvent.status.in_(EventStatus.DONE), WebhookEvent.processed_at < cutoff,
            WebhookEvent.redacted_at.is_(None))


def count_purgeable(cutoff: datetime) -> int:
    return db.session.scalar(select(func.count()).select_from(WebhookEvent)
                             .where(*_purgeable(cutoff)))


def purge_payloads(cutoff: datetime, *, dry_run: bool = False, batch_size: int = 500,
                   progress: Callable[[int], None] | None = None) -> PurgeReport:
    """Redact the payloads of events processed before `cutoff`, a batch per transaction.

    It commits each batch itself, on purpose (the daily beat task and the CLI alike): a
    purge of months of events must not hold one long transaction and its row locks
    against the workers, and what is done stands if it is stopped half way.

    Events still failed or outstanding keep their payload (a replay needs it); their
    failure rows are redacted with them once they are processed. Idempotent: a redacted
    event is stamped and never selected again.
    """
    report = PurgeReport(cutoff=cutoff.isoformat() + "Z", dry_run=dry_run,
                         selected=count_purgeable(cutoff))
    db.session.rollback()
    if dry_run or not report.selected:
        return report
    last_id = 0
    while True:
        batch = db.session.execute(
            select(WebhookEvent.id, WebhookEvent.payload)
            .where(*_purgeable(cutoff), WebhookEvent.id > last_id)
            .order_by(WebhookEvent.id).limit(batch_size)
        ).all()
        if not batch:
            break
        now = utcnow()
        for event_pk, payload in batch:
            redacted = redact_payload(payload)
            db.session.execute(update(WebhookEvent).where(WebhookEvent.id == event_pk)
                               .values(payload=redacted, redacted_at=now))
            report.failures_redacted += db.session.execute(
                update(WebhookFailure).where(WebhookFailure.event_pk == event_pk)
                .values(payload=redacted)).rowcount
        db.session.commit()
        report.redacted += len(batch)
        last_id = batch[-1][0]
        if progress is not None:
            progress(len(batch))
    log.info("payloads redacted", extra={"count": report.redacted})
    return report
