"""What other domains may ask of the webhooks domain, without touching its models."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta

import redis
from flask import current_app
from sqlalchemy import func, select, tuple_

from service.alerts.services import Flow, Outcomes, raise_signal
from service.clock import utcnow
from service.extensions import db
from service.webhooks.dedup import DUPLICATES_BUCKET_SECONDS, STORED, DedupCache, duplicates_key
from service.webhooks.models import EventStatus, WebhookEvent, WebhookFailure

OUTSTANDING = (EventStatus.RECEIVED, EventStatus.QUEUED, EventStatus.PROCESSING)
SUCCEEDED = EventStatus.DONE  # processed, or a type no handler takes


class WebhookBacklog:
    """The `webhooks` queue's work kept in the inbox, for queue health."""

    def waiting(self) -> int:
        """Stored events no message carries yet (broker down or queue full at intake)."""
        return db.session.scalar(select(func.count()).select_from(WebhookEvent)
                                 .where(WebhookEvent.status == EventStatus.RECEIVED)) or 0

    def failures_since(self, since: datetime) -> int:
        """Failure rows opened or updated since `since`."""
        return db.session.scalar(select(func.count()).select_from(WebhookFailure)
                                 .where(WebhookFailure.updated_at >= since)) or 0


class WebhookPaymentEvents:
    """Figures about payment events for the escalation policy's rules, report and metrics.

    Every webhook this service takes is a payment provider's event, so "payment events"
    are all stored webhook events.
    """

    def flow(self, *, now: datetime, window: timedelta) -> Flow:
        since = now - window
        arrived = db.session.scalar(select(func.count()).select_from(WebhookEvent).where(
            WebhookEvent.received_at > since, WebhookEvent.received_at <= now)) or 0
        finished = db.session.scalar(select(func.count()).select_from(WebhookEvent).where(
            WebhookEvent.status.in_(SUCCEEDED), WebhookEvent.processed_at > since,
            WebhookEvent.processed_at <= now)) or 0
        outstanding, oldest = db.session.execute(
            select(func.count(), func.min(WebhookEvent.received_at))
            .where(WebhookEvent.status.in_(OUTSTANDING), WebhookEvent.received_at <= now)).one()
        last_finished = db.session.scalar(select(func.max(WebhookEvent.processed_at)).where(
            WebhookEvent.status.in_(SUCCEEDED), WebhookEvent.processed_at <= now))
        return Flow(arrived=arrived, finished=finished, outstanding=outstanding or 0,
                    oldest_outstanding_at=oldest, last_finished_at=last_finished)

    def latest_outcomes(self, count: int, *, now: datetime) -> list[tuple[int, bool, datetime]]:
        rows = db.session.execute(
            select(WebhookEvent.id, WebhookEvent.status, WebhookEvent.received_at)
            .where(WebhookEvent.status.in_((EventStatus.PROCESSED, EventStatus.FAILED)),
                   WebhookEvent.received_at <= now)
            .order_by(WebhookEvent.id.desc()).limit(count)).all()
        return [(pk, status == EventStatus.FAILED, received) for pk, status, received in rows]

    def last_stored_at(self, *, now: datetime) -> datetime | None:
        return db.session.scalar(select(func.max(WebhookEvent.received_at))
                                 .where(WebhookEvent.received_at <= now))

    def outcomes(self, *, since: datetime, until: datetime) -> Outcomes:
        counts = dict(db.session.execute(
            select(WebhookEvent.status, func.count())
            .where(WebhookEvent.received_at > since, WebhookEvent.received_at <= until)
            .group_by(WebhookEvent.status)).all())
        return Outcomes(succeeded=sum(counts.get(s, 0) for s in SUCCEEDED),
                        failed=counts.get(EventStatus.FAILED, 0),
                        outstanding=sum(counts.get(s, 0) for s in OUTSTANDING))


# ---- read-only figures for the runbooks (notebooks/) ------------------------------------

def error_kind(message: str | None) -> str:
    """A failure's error class (stored error text is `<Class>: <our reason>`)."""
    return (message or "").split(":", 1)[0].strip()[:80] or "unknown"


def bucket_start(moment: datetime, seconds: int) -> datetime:
    """The start of the `seconds`-long bucket `moment` falls in (naive UTC in, naive out)."""
    epoch = moment.replace(tzinfo=UTC).timestamp()
    return datetime.fromtimestamp(epoch - epoch % seconds, UTC).replace(tzinfo=None)


def failures_in_window(*, since: datetime, until: datetime | None = None,
                       provider: str | None = None, unresolved_only: bool = False) -> list[dict]:
    """Failure rows opened or updated in the window, oldest first (no payloads)."""
    query = (select(WebhookFailure.id, WebhookFailure.event_pk, WebhookFailure.provider,
                    WebhookFailure.event_type, WebhookFailure.error_message,
                    WebhookFailure.retry_count, WebhookFailure.updated_at,
                    WebhookFailure.resolved_at)
             .where(WebhookFailure.updated_at >= since)
             .order_by(WebhookFailure.updated_at, WebhookFailure.id))
    if until is not None:
        query = query.where(WebhookFailure.updated_at <= until)
    if provider:
        query = query.where(WebhookFailure.provider == provider)
    if unresolved_only:
        query = query.where(WebhookFailure.resolved_at.is_(None))
    return [{**row._asdict(), "error": error_kind(row.error_message)}
            for row in db.session.execute(query)]


def failure_groups(failures: list[dict]) -> list[dict]:
    """Failures grouped by provider, error and event type, largest group first."""
    counts = Counter((f["provider"], f["error"], f["event_type"]) for f in failures)
    unresolved = Counter((f["provider"], f["error"], f["event_type"]) for f in failures
                         if f["resolved_at"] is None)
    return [{"provider": p, "error": e, "event_type": t, "failures": n,
             "unresolved": unresolved[(p, e, t)]}
            for (p, e, t), n in counts.most_common()]


def failure_timeline(failures: list[dict], *, bucket_seconds: int = 300) -> list[dict]:
    """Failures per bucket by provider and error: [{"bucket", "provider", "error", "count"}]."""
    counts = Counter((bucket_start(f["updated_at"], bucket_seconds), f["provider"], f["error"])
                     for f in failures)
    return [{"bucket": b, "provider": p, "error": e, "count": n}
            for (b, p, e), n in sorted(counts.items())]


def event_flow_timeline(*, since: datetime, until: datetime | None = None,
                        bucket_seconds: int = 300, provider: str | None = None) -> list[dict]:
    """Events received and processed (or failed) per bucket over the window."""
    until = until or utcnow()
    received = select(WebhookEvent.received_at).where(
        WebhookEvent.received_at >= since, WebhookEvent.received_at <= until)
    finished = select(WebhookEvent.processed_at, WebhookEvent.status).where(
        WebhookEvent.processed_at >= since, WebhookEvent.processed_at <= until)
    if provider:
        received = received.where(WebhookEvent.provider == provider)
        finished = finished.where(WebhookEvent.provider == provider)
    buckets: dict[datetime, dict] = {}
    start = bucket_start(since, bucket_seconds)
    while start <= until:
        buckets[start] = {"bucket": start, "received": 0, "processed": 0, "failed": 0}
        start += timedelta(seconds=bucket_seconds)

    def slot(moment: datetime) -> dict:
        return buckets.setdefault(bucket_start(moment, bucket_seconds),
                                  {"bucket": bucket_start(moment, bucket_seconds),
                                   "received": 0, "processed": 0, "failed": 0})

    for (moment,) in db.session.execute(received):
        slot(moment)["received"] += 1
    for moment, status in db.session.execute(finished):
        slot(moment)["failed" if status == EventStatus.FAILED else "processed"] += 1
    return [buckets[b] for b in sorted(buckets)]


def duplicate_deliveries(*, since: datetime, until: datetime | None = None,
                         provider: str | None = None, top: int = 10) -> dict:
    """Duplicate deliveries in the window (5-minute resolution, kept for a day), from the
    counts the intake keeps in Redis: the total, per bucket, and the most repeated event
    ids with what the inbox knows of each."""
    client: redis.Redis = current_app.extensions["redis"]
    until = until or utcnow()
    first = int(since.replace(tzinfo=UTC).timestamp() // DUPLICATES_BUCKET_SECONDS)
    last = int(until.replace(tzinfo=UTC).timestamp() // DUPLICATES_BUCKET_SECONDS)
    pipe = client.pipeline(transaction=False)
    for bucket in range(first, last + 1):
        pipe.zrange(duplicates_key(bucket), 0, -1, withscores=True)
    per_event: Counter = Counter()
    per_bucket = []
    for bucket, members in zip(range(first, last + 1), pipe.execute(), strict=True):
        total = 0
        for member, score in members:
            name = member.decode() if isinstance(member, bytes) else member
            if provider and not name.startswith(f"{provider}:"):
                continue
            per_event[name] += int(score)
            total += int(score)
        per_bucket.append({"bucket": datetime.fromtimestamp(bucket * DUPLICATES_BUCKET_SECONDS, UTC)
                           .replace(tzinfo=None), "duplicates": total})
    most = per_event.most_common(top)
    keys = [tuple(name.split(":", 1)) for name, _ in most]
    known = {}
    if keys:
        known = {(r.provider, r.event_id): r for r in db.session.execute(
            select(WebhookEvent.id, WebhookEvent.provider, WebhookEvent.event_id,
                   WebhookEvent.event_type, WebhookEvent.status, WebhookEvent.received_at)
            .where(tuple_(WebhookEvent.provider, WebhookEvent.event_id).in_(keys)))}
    repeated = []
    for (_name, count), key in zip(most, keys, strict=True):
        row = known.get(key)
        repeated.append({"provider": key[0], "event_id": key[1], "duplicates": count,
                         "event_pk": row.id if row else None,
                         "event_type": row.event_type if row else None,
                         "status": row.status if row else None,
                         "received_at": row.received_at if row else None})
    return {"total": sum(per_event.values()), "per_bucket": per_bucket, "repeated": repeated}


def stored_events(*, since: datetime, until: datetime | None = None,
                  provider: str | None = None) -> int:
    """Events stored (first deliveries) in the window."""
    query = select(func.count()).select_from(WebhookEvent).where(WebhookEvent.received_at >= since)
    if until is not None:
        query = query.where(WebhookEvent.received_at <= until)
    if provider:
        query = query.where(WebhookEvent.provider == provider)
    return db.session.scalar(query) or 0


def event_statuses(event_pks: list[int]) -> dict[int, str]:
    """The current status of each event (missing ids left out)."""
    if not event_pks:
        return {}
    return dict(db.session.execute(select(WebhookEvent.id, WebhookEvent.status)
                                   .where(WebhookEvent.id.in_(event_pks))).all())


def pin_duplicates(events: list[tuple[str, str]], *, seconds: int) -> list[tuple[str, str]]:
    """Keep the de-duplication mark of these stored (provider, event id) pairs for
    `seconds`, so a provider redelivering them in a loop is answered from Redis without
    touching the database. Only events whose row exists are marked: a Redis answer must
    never acknowledge an event that is not stored. Returns the pairs marked."""
    if not events:
        return []
    stored = [tuple(row) for row in db.session.execute(
        select(WebhookEvent.provider, WebhookEvent.event_id)
        .where(tuple_(WebhookEvent.provider, WebhookEvent.event_id).in_(events)))]
    dedup: DedupCache = current_app.extensions["webhook_dedup"]
    client: redis.Redis = current_app.extensions["redis"]
    pipe = client.pipeline(transaction=False)
    for provider, event_id in stored:
        key, _value, _ttl = dedup.stored_mark(provider, event_id)
        pipe.set(key, STORED, ex=seconds)
    pipe.execute()
    return stored


def report_loop(*, repeated: list[dict], window: str) -> None:
    """Raise the P2 `webhook_loop` signal for event ids a provider keeps redelivering,
    in the caller's transaction: the escalation policy opens an incident that names them
    and the webhook loop runbook."""
    raise_signal(severity="P2", kind="webhook_loop", source="webhooks:duplicates",
                 details={"window": window, "events": [
                     {"provider": r["provider"], "event_id": r["event_id"],
                      "duplicates": r["duplicates"]} for r in repeated[:20]]})
