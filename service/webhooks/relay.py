"""The relay: hands the broker every stored event it does not have, as the queue has room.

Four kinds of rows are outstanding without a message on the way: `received` rows (intake
stored them without publishing: the queue was past WEBHOOK_DIRECT_PUBLISH_DEPTH, at its
bound, or the broker was down), `queued` rows whose message was lost (a broker restart
that kept nothing, or a web process that died between its commit and its publish: the
publish lease has expired), `processing` rows whose lease expired (a worker killed
mid-task, whose unacknowledged message Redis would only return after its visibility
timeout), and `queued` rows waiting for a retry whose lease expired (the worker holding
the delayed retry message died).

Pull by demand: a pass reads the room left under the queue's bound, claims that many
outstanding rows, oldest first, in one statement (`UPDATE ... WHERE id IN (SELECT ...
FOR UPDATE SKIP LOCKED LIMIT n) RETURNING id`: several relays at once never claim the
same row), and publishes them in one Lua call as `webhooks.process_events` jobs of
WEBHOOK_EVENTS_PER_JOB events, each counting its events in the queue's depth (an event
tried before, whose worker died under it, goes in a job of its own). The bound
holds by construction: the claim is sized by the room, and the Lua gate checks it again.
Whatever the broker did not take goes back to `received` in one statement. The pass goes
on while there is work, waiting briefly for room as the workers drain the queue, for up
to RELAY_PASS_SECONDS; beat starts one every RELAY_INTERVAL_SECONDS. So a backlog is fed
to the workers as fast as they free room, in a few statements and round trips per
thousand events, and nothing waits for a sweep.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from datetime import timedelta

import redis
from flask import current_app
from sqlalchemy import and_, or_, select, update

from service.clock import utcnow
from service.extensions import db
from service.fastsql import Statement, fetch_all
from service.queues.depth import oldest_wait_seconds
from service.queues.publishing import Job, room, send_batch
from service.webhooks.models import EventStatus, WebhookEvent
from service.webhooks.queueing import BATCH_TASK, QUEUE, TASK, publish_lease

log = logging.getLogger(__name__)

# How long a pass waits before it looks for room again when the queue is at its bound.
ROOM_POLL_SECONDS = 0.05


@dataclass
class RelayReport:
    found: int = 0
    enqueued: int = 0
    jobs: int = 0
    broker_down: bool = False

    def as_dict(self) -> dict:
        return asdict(self)


def outstanding_filter(now, horizon):
    """Rows that have no message on the way. `horizon`: see `queue_horizon`."""
    cfg = current_app.config
    received_before = now - timedelta(seconds=cfg["RELAY_MIN_AGE_SECONDS"])
    queued_before = now - timedelta(seconds=cfg["RELAY_QUEUED_STALE_SECONDS"])
    return or_(
        and_(WebhookEvent.status == EventStatus.RECEIVED,
             WebhookEvent.received_at <= received_before),
        and_(WebhookEvent.status == EventStatus.QUEUED, WebhookEvent.queued_at <= queued_before,
             WebhookEvent.queued_at < horizon),
        # Waiting for a retry whose message was held by a worker that died, or stored by
        # a process that died before it published: queued with an expired lease.
        and_(WebhookEvent.status == EventStatus.QUEUED, WebhookEvent.lease_expires_at < now,
             WebhookEvent.queued_at < horizon),
        and_(WebhookEvent.status == EventStatus.PROCESSING, WebhookEvent.lease_expires_at < now),
    )


def queue_horizon(now):
    """Rows queued after the oldest message still waiting may still have theirs in the queue.

    The queue is first in, first out: a row queued before its oldest waiting message was
    taken off it already (or never put on). So an expired lease alone never republishes
    an event that is merely waiting behind a deep queue.
    """
    wait = oldest_wait_seconds(current_app.extensions["redis"], QUEUE)
    return now if wait is None else now - timedelta(seconds=wait)


def relay_pending(*, limit: int | None = None, until_empty: bool = False) -> RelayReport:
    """Publish outstanding events, oldest first, as far as the queue has room.

    Loops while there is work, for up to RELAY_PASS_SECONDS (`until_empty`: until
    nothing is outstanding, however long the workers take to make room), or until
    `limit` events are published. Stops at once when the broker is down.
    """
    cfg = current_app.config
    deadline = time.monotonic() + cfg["RELAY_PASS_SECONDS"]
    report = RelayReport()
    more = False  # known to have work left that did not fit
    try:
        while limit is None or report.enqueued < limit:
            available = room(QUEUE)
            if available is None:
                report.broker_down = True
                break
            wanted = min(available, cfg["RELAY_BATCH_SIZE"])
            if limit is not None:
                wanted = min(wanted, limit - report.enqueued)
            if wanted > 0:
                claimed = _claim(wanted)
                report.found += len(claimed)
                if claimed and not _publish(claimed, report):
                    break  # the broker is down
                more = len(claimed) == wanted
                if not more:
                    break  # that was all there was
            elif not more and not _outstanding():
                break
            else:
                more = True
            if not until_empty and time.monotonic() >= deadline:
                break
            if wanted <= 0:
                time.sleep(ROOM_POLL_SECONDS)
    except redis.RedisError:
        report.broker_down = True
    if report.broker_down:
        log.warning("relay pass stopped: broker unavailable",
                    extra={"count": report.enqueued, "outcome": "broker_down"})
    elif report.enqueued:
        log.info("relay published stored events", extra={"count": report.enqueued})
    return report


def _claim(count: int) -> list[tuple[int, int]]:
    """Mark up to `count` outstanding rows queued, oldest first, and return their
    (id, attempts).

    One statement, committed on its own, on purpose: a row must be `queued` (under a
    publish lease, so a relay that dies before publishing leaves it to the next pass)
    before its message exists, and no publish happens inside a transaction. SKIP LOCKED
    lets several relays, and intake, work at once without waiting for or taking each
    other's rows. Taking an expired processing lease away here means a worker that
    somehow still runs cannot commit its result: its final UPDATE checks the lease token.
    """
    now = utcnow()
    horizon = queue_horizon(now)
    chosen = (select(WebhookEvent.id).where(outstanding_filter(now, horizon))
              .order_by(WebhookEvent.received_at, WebhookEvent.id).limit(count)
              .with_for_update(skip_locked=True))
    claimed = db.session.execute(
        update(WebhookEvent).where(WebhookEvent.id.in_(chosen.scalar_subquery()))
        .values(status=EventStatus.QUEUED, queued_at=now, lease_token=None,
                lease_expires_at=publish_lease(now))
        .returning(WebhookEvent.id, WebhookEvent.attempts)
        .execution_options(synchronize_session=False)
    ).all()
    db.session.commit()
    return sorted((pk, attempts) for pk, attempts in claimed)


def _outstanding() -> bool:
    """Whether anything waits for the relay (asked only while the queue is full)."""
    now = utcnow()
    found = db.session.execute(
        select(WebhookEvent.id).where(outstanding_filter(now, queue_horizon(now))).limit(1)
    ).first()
    db.session.rollback()
    return found is not None


def job_groups(claimed: list[tuple[int, int]], per_job: int) -> list[list[int]]:
    """The claimed events, grouped into jobs: events never tried before in batches of
    `per_job`, an event tried before alone. An event whose worker died under it may be
    the one that kills its worker; alone, it spends only its own attempts, never those
    of the events that would share its batch again each time the relay brings it back."""
    fresh = [pk for pk, attempts in claimed if not attempts]
    groups = [fresh[i:i + per_job] for i in range(0, len(fresh), per_job)]
    return groups + [[pk] for pk, attempts in claimed if attempts]


def _publish(claimed: list[tuple[int, int]], report: RelayReport) -> bool:
    """Send claimed events in jobs; put back what the broker did not take. True to go on."""
    groups = job_groups(claimed, max(1, current_app.config["WEBHOOK_EVENTS_PER_JOB"]))
    jobs = [Job(TASK, [group[0]]) if len(group) == 1 else Job(BATCH_TASK, [group], len(group))
            for group in groups]
    sent = send_batch(jobs, queue=QUEUE)
    taken = sum(len(group) for group in groups[:sent or 0])
    report.enqueued += taken
    report.jobs += sent or 0
    if taken < len(claimed):
        put_back([pk for group in groups[sent or 0:] for pk in group])
        report.broker_down = sent is None
        return sent is not None  # the queue filled meanwhile: wait for room
    return True


# The relay's own rows, put back to `received` in one statement: no one else touches a
# `queued` row under its publish lease.
_PUT_BACK = {
    "postgresql": Statement(
        "UPDATE webhook_events SET status = :received, queued_at = NULL,"
        " lease_expires_at = NULL WHERE id = ANY(:event_pks) AND status = :queued"),
    "sqlite": Statement(
        "UPDATE webhook_events SET status = :received, queued_at = NULL,"
        " lease_expires_at = NULL WHERE id IN :event_pks AND status = :queued",
        expanding=("event_pks",)),
}


def put_back(event_pks: list[int]) -> None:
    """Rows marked `queued` whose publish failed go back to `received`, for the next pass.

    One autocommit statement, on purpose: the rows were committed as `queued` before the
    publish (a worker must find them), so their correction is a transaction of its own.
    """
    fetch_all(_PUT_BACK[db.engine.dialect.name], {
        "event_pks": list(event_pks), "received": EventStatus.RECEIVED,
        "queued": EventStatus.QUEUED})
