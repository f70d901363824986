"""The `webhooks` depth bound under a flood, against a real (deliberately slow) worker.

10,000 events are stored in this process through the intake service (what the HTTP
view calls after verifying a signature), faster than a worker of two pool processes,
sharing two cores with the intake, can apply them.
The publish gate refuses whatever would take the queue to its bound; those rows stay
`received` in the database and the relay (beat, every second) feeds them to the broker
as room appears. A background thread samples the queue depth every 20 ms throughout.
"""

from __future__ import annotations

import base64
import json
import threading
import time
import uuid
from datetime import timedelta

import pytest
import redis as redis_lib
from sqlalchemy import text, update

from service.clock import utcnow
from service.extensions import db
from service.queues.depth import depth
from service.queues.hooks import CONSUMERS_KEY
from service.queues.publishing import release
from service.webhooks.intake import accept_event
from service.webhooks.models import WebhookEvent
from service.webhooks.relay import relay_pending
from service.webhooks.verifiers import VerifiedEvent
from tests.support.apps import use_celery_of
from tests.support.db import scalar
from tests.support.processes import VENV_BIN, Process
from tests.support.queue_handlers import HANDLED_KEY
from tests.support.waiting import wait_until

BOUND = 300
HEADROOM = 20
EVENTS = 10_000
HANDLER_MODULES = "tests.support.test_handlers,tests.support.queue_handlers"
TEST_BUDGET_SECONDS = 240


@pytest.fixture
def bounded_app(clean):
    """An app like the session's, but with a small depth bound."""
    from service import create_app

    bounded = create_app({"TESTING": True, "QUEUE_DEPTH_MAX": BOUND,
                          "QUEUE_PUBLISH_HEADROOM": HEADROOM})
    yield bounded
    with bounded.app_context():
        db.engine.dispose()
    use_celery_of(clean)


@pytest.fixture
def slow_worker(clean, tmp_path):
    """Two pool processes for processing and the relay, with embedded beat.

    Like `start_worker`, but Celery's own two log lines per task are left out (the
    service's "event handled" lines stay): on two cores they cost a good part of the run.
    """
    argv = [str(VENV_BIN / "celery"), "-A", "service.worker", "worker", "-Q", "webhooks,default",
            "-c", "2", "-P", "prefork", "--loglevel", "WARNING",
            "-n", f"bounded-{uuid.uuid4().hex[:8]}@%h", "--without-mingle", "--without-gossip",
            "-B", "--schedule", str(tmp_path / "beat-schedule")]
    proc = Process(argv, log_path=tmp_path / "bounded.log",
                   env={"QUEUE_DEPTH_MAX": str(BOUND), "QUEUE_PUBLISH_HEADROOM": str(HEADROOM),
                        "WEBHOOK_HANDLER_MODULES": HANDLER_MODULES, "RELAY_BATCH_SIZE": "500"})
    try:
        # A worker registers as a consumer once it is ready (service/queues/hooks.py).
        wait_until(lambda: clean.extensions["redis"].zcard(CONSUMERS_KEY.format(queue="webhooks")),
                   60, "the worker to be ready", logs=(proc,))
    except BaseException:
        proc.stop()
        raise
    yield proc
    proc.stop()


class DepthSampler(threading.Thread):
    """Reads the depth of `webhooks` every `interval` seconds until stopped."""

    def __init__(self, redis_url: str, interval: float = 0.02):
        super().__init__(name="depth-sampler", daemon=True)
        self._client = redis_lib.Redis.from_url(redis_url)
        self._interval = interval
        self._halt = threading.Event()
        self.samples: list[int] = []

    def run(self) -> None:
        while not self._halt.is_set():
            self.samples.append(depth(self._client, "webhooks"))
            self._halt.wait(self._interval)

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=5)
        self._client.close()


def counted_event(index: int) -> VerifiedEvent:
    event_id = f"evt_bound_{index:05d}_{uuid.uuid4().hex[:8]}"
    body = json.dumps({"id": event_id, "object": "event", "type": "test.counted",
                       "data": {"object": {"n": index}}})
    return VerifiedEvent("stripe", event_id, "test.counted", body, json.loads(body))


def statuses() -> dict[str, int]:
    with db.engine.connect() as conn:
        return dict(conn.execute(text(
            "SELECT status, count(*) FROM webhook_events GROUP BY status")).all())


def test_ten_thousand_events_through_a_slow_worker_never_pass_the_bound_and_run_once(
        clean, bounded_app, slow_worker):
    started = time.monotonic()
    deadline = started + TEST_BUDGET_SECONDS
    sampler = DepthSampler(clean.config["REDIS_URL"])
    sampler.start()
    try:
        refused = 0
        with bounded_app.app_context():
            dedup = bounded_app.extensions["webhook_dedup"]
            for index in range(EVENTS):
                result = accept_event(counted_event(index), dedup=dedup, request_id=None)
                assert result.status == "stored"
                refused += not result.queued
                if index % 500 == 0:
                    assert time.monotonic() < deadline, f"intake too slow: {index} in budget"
            db.session.remove()
        intake_seconds = time.monotonic() - started
        print(f"\nintake done in {intake_seconds:.1f} s, {refused} refused", flush=True)

        with clean.app_context():
            def done() -> bool:
                return scalar("SELECT count(*) FROM webhook_events "
                              "WHERE status IN ('processed', 'ignored')") == EVENTS
            wait_until(done, max(1.0, deadline - time.monotonic()),
                       lambda: f"all {EVENTS} events to be processed (now {statuses()})",
                       logs=(slow_worker,), interval=0.5)
            total_seconds = time.monotonic() - started
    finally:
        sampler.stop()

    samples = sampler.samples
    peak = max(samples)
    print(f"\n{EVENTS} events: intake {intake_seconds:.1f} s ({EVENTS / intake_seconds:.0f}/s), "
          f"all processed after {total_seconds:.1f} s ({EVENTS / total_seconds:.0f}/s); "
          f"max depth {peak} of {BOUND} (gate {BOUND - HEADROOM}) over {len(samples)} samples; "
          f"{refused} publishes refused at intake and left to the relay")

    assert peak <= BOUND, f"webhooks depth reached {peak}, bound {BOUND}"
    # The flood really pressed on the bound: intake was turned away and the relay fed the rest.
    assert refused > 0
    assert peak >= (BOUND - HEADROOM) // 2, peak
    assert len(samples) >= total_seconds / 0.1, "the sampler stalled"

    with clean.app_context():
        assert scalar("SELECT count(*) FROM webhook_events") == EVENTS
        assert scalar("SELECT count(*) FROM webhook_events WHERE status <> 'processed'") == 0
        assert scalar("SELECT count(*) FROM webhook_events WHERE attempts <> 1") == 0
        assert scalar("SELECT count(*) FROM webhook_failures") == 0
    handled = clean.extensions["redis"].hgetall(HANDLED_KEY)
    assert len(handled) == EVENTS
    assert {int(v) for v in handled.values()} == {1}
    log = slow_worker.log()
    assert log.count('"msg": "event handled"') == EVENTS


def store_backlog(bounded_app, count: int) -> None:
    """Events stored while the queue was full (intake refused to publish them), which
    has since drained: `received`, old enough for the relay."""
    redis = bounded_app.extensions["redis"]
    with bounded_app.app_context():
        dedup = bounded_app.extensions["webhook_dedup"]
        redis.rpush("webhooks", *[b"placeholder"] * BOUND)
        for index in range(count):
            assert not accept_event(counted_event(index), dedup=dedup, request_id=None).queued
        redis.delete("webhooks")
        db.session.execute(update(WebhookEvent).values(
            received_at=utcnow() - timedelta(seconds=10)))
        db.session.commit()
        db.session.remove()


def test_relay_and_intake_publishing_at_once_never_pass_the_bound(clean, bounded_app):
    """A backlog left by an outage is relayed while deliveries keep arriving.

    No worker runs: the depth only grows, so the final depth is the peak.
    """
    redis = clean.extensions["redis"]
    gate = BOUND - HEADROOM
    store_backlog(bounded_app, 2 * gate)
    dedup = bounded_app.extensions["webhook_dedup"]

    reports = []

    def relay() -> None:
        with bounded_app.app_context():
            reports.append(relay_pending())
            db.session.remove()

    relayer = threading.Thread(target=relay, name="relay")
    relayer.start()
    try:
        wait_until(lambda: depth(redis, "webhooks") > 0 or not relayer.is_alive(), 10,
                   "the relay to start publishing")
        with bounded_app.app_context():
            arrived = 0
            while relayer.is_alive() and arrived < 1_000:
                accept_event(counted_event(10_000 + arrived), dedup=dedup, request_id=None)
                arrived += 1
            db.session.remove()
    finally:
        relayer.join(timeout=60)

    peak = depth(redis, "webhooks")
    with clean.app_context():
        queued = scalar("SELECT count(*) FROM webhook_events WHERE status = 'queued'")
    print(f"\nrelay {reports}, {arrived} deliveries meanwhile; depth {peak} of {BOUND}, "
          f"{queued} rows queued")
    assert reports and reports[0].enqueued > 0 and arrived > 0
    assert peak == queued
    assert peak <= BOUND, f"webhooks depth {peak} past its bound {BOUND}"


def _event_pks(raw: bytes) -> tuple[list[int], int]:
    """The events a message carries, and its weight in the depth."""
    envelope = json.loads(raw)
    args, _kwargs, _embed = json.loads(base64.b64decode(envelope["body"]))
    if envelope["headers"]["task"] == "webhooks.process_events":
        return list(args[0]), len(args[0])
    return [args[0]], 1


def test_three_relays_intake_and_a_consumer_at_once_never_pass_the_bound_nor_publish_twice(
        clean, bounded_app):
    """Three relay passes claim and publish the same backlog while intake stores and
    publishes new deliveries and a consumer takes messages off the queue (releasing each
    batch's weight as a worker does). No event is published twice, none is lost, and
    the weighted depth never passes the bound."""
    redis = clean.extensions["redis"]
    store_backlog(bounded_app, 3 * BOUND)
    dedup = bounded_app.extensions["webhook_dedup"]
    time.sleep(1.1)  # intake's pause after a full queue is over: it publishes again

    sampler = DepthSampler(clean.config["REDIS_URL"], interval=0.005)
    stop = threading.Event()
    taken: list[int] = []
    errors: list[BaseException] = []
    reports = []
    arrived = 0

    def relay() -> None:
        try:
            with bounded_app.app_context():
                while not stop.is_set():
                    reports.append(relay_pending())
                db.session.remove()
        except BaseException as exc:  # reported below
            errors.append(exc)

    def consume() -> None:
        try:
            with bounded_app.app_context():
                while not stop.is_set():
                    raw = redis.rpop("webhooks")
                    if raw is None:
                        time.sleep(0.01)
                        continue
                    pks, weight = _event_pks(raw)
                    taken.extend(pks)
                    time.sleep(0.002 * weight)  # a worker applying them
                    release("webhooks", weight)
        except BaseException as exc:  # reported below
            errors.append(exc)

    def intake() -> None:
        nonlocal arrived
        try:
            with bounded_app.app_context():
                while not stop.is_set() and arrived < 1_500:
                    accept_event(counted_event(100_000 + arrived), dedup=dedup, request_id=None)
                    arrived += 1
                db.session.remove()
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=relay, name=f"relay-{n}") for n in range(3)]
    threads += [threading.Thread(target=consume, name="consumer"),
                threading.Thread(target=intake, name="intake")]
    sampler.start()
    for thread in threads:
        thread.start()
    time.sleep(8)
    stop.set()
    for thread in threads:
        thread.join(timeout=60)
    sampler.stop()

    assert not errors, errors
    waiting = [pk for raw in redis.lrange("webhooks", 0, -1) for pk in _event_pks(raw)[0]]
    published = taken + waiting
    with clean.app_context():
        queued = {row[0] for row in db.session.execute(text(
            "SELECT id FROM webhook_events WHERE status = 'queued'")).all()}
        total = scalar("SELECT count(*) FROM webhook_events")
        db.session.remove()
    print(f"\n{len(reports)} relay passes, {arrived} deliveries meanwhile, {len(taken)} events "
          f"taken by the consumer, {len(waiting)} waiting; max depth {max(sampler.samples)} "
          f"of {BOUND} over {len(sampler.samples)} samples")
    assert len(published) == len(set(published)), "an event was published twice"
    assert set(published) == queued, "a queued row has no message, or a message no row"
    assert total == 3 * BOUND + arrived
    assert len(taken) > BOUND  # the relays really fed a draining queue
    assert max(sampler.samples) <= BOUND
