"""`service.queues.publishing.send` against the real Redis broker.

No worker runs in these tests, and each one checks that nothing is registered as a
consumer of the queue it fills: what `send` pushed is still on the list when it is read
back. The gate is QUEUE_DEPTH_MAX - QUEUE_PUBLISH_HEADROOM, set through `build_app`.
"""

from __future__ import annotations

import base64
import json
import socket
import threading
import time
import uuid
from collections import Counter

import pytest

from service.queues.depth import (
    ENQUEUED_AT_HEADER,
    PRIORITY_SEPARATOR,
    depth,
    depths,
    queue_keys,
    weight_key,
)
from service.queues.hooks import CONSUMERS_KEY
from service.queues.publishing import (
    BROKER_DOWN,
    FULL,
    SENT,
    Job,
    gate,
    release,
    room,
    send,
    send_batch,
)
from tests.support.processes import start_worker
from tests.support.queue_handlers import RECORDED_KEY
from tests.support.waiting import wait_until

QUEUE = "erp"  # a real queue of the service; no worker consumes it here
TASK = "erp.sync_order"
DEAD_REDIS_URL = "redis://127.0.0.1:1/0"


def gated_app(build_app, gate_size: int, headroom: int = 20):
    return build_app({"QUEUE_DEPTH_MAX": gate_size + headroom,
                      "QUEUE_PUBLISH_HEADROOM": headroom})


@pytest.fixture
def broker(clean):
    """The session's Redis, empty, with nobody consuming QUEUE."""
    client = clean.extensions["redis"]
    assert client.zcard(CONSUMERS_KEY.format(queue=QUEUE)) == 0, "a worker consumes the queue"
    assert depth(client, QUEUE) == 0
    return client


def decode(raw: bytes) -> tuple[dict, list]:
    """A message as Kombu's Redis transport stores it: (envelope, [args, kwargs, embed])."""
    envelope = json.loads(raw)
    assert envelope["properties"]["body_encoding"] == "base64"
    return envelope, json.loads(base64.b64decode(envelope["body"]))


# --- the gate --------------------------------------------------------------------------


def test_concurrent_sends_fill_the_queue_exactly_to_the_gate(build_app, broker):
    gated = gated_app(build_app, 50)
    threads_count, per_thread = 8, 40
    start = threading.Barrier(threads_count)
    outcomes: list[str] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def publisher(index: int) -> None:
        try:
            with gated.app_context():
                start.wait(timeout=10)
                mine = [send(TASK, [index, n], queue=QUEUE) for n in range(per_thread)]
            with lock:
                outcomes.extend(mine)
        except BaseException as exc:  # reported below; a thread's exception is otherwise lost
            errors.append(exc)

    with gated.app_context():
        assert gate(QUEUE) == 50
        assert room(QUEUE) == 50
    threads = [threading.Thread(target=publisher, args=(i,), name=f"publisher-{i}")
               for i in range(threads_count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert not errors, errors
    assert not any(thread.is_alive() for thread in threads)
    assert Counter(outcomes) == {SENT: 50, FULL: threads_count * per_thread - 50}
    assert broker.llen(QUEUE) == 50
    assert depth(broker, QUEUE) == 50
    ids = {decode(raw)[0]["headers"]["id"] for raw in broker.lrange(QUEUE, 0, -1)}
    assert len(ids) == 50
    with gated.app_context():
        assert room(QUEUE) == 0
        # The gate is the depth, not a count of sends: one message taken makes room for one.
        broker.rpop(QUEUE)
        assert room(QUEUE) == 1
        assert send(TASK, ["after"], queue=QUEUE) == SENT
        assert send(TASK, ["after"], queue=QUEUE) == FULL
    assert broker.llen(QUEUE) == 50


def test_messages_waiting_on_the_priority_lists_count_toward_the_gate(build_app, broker):
    gated = gated_app(build_app, 20)
    broker.rpush(f"{QUEUE}{PRIORITY_SEPARATOR}3", *[b"waiting"] * 12)
    broker.rpush(f"{QUEUE}{PRIORITY_SEPARATOR}9", *[b"waiting"] * 3)

    with gated.app_context():
        outcomes = [send(TASK, [n], queue=QUEUE) for n in range(10)]

    assert outcomes == [SENT] * 5 + [FULL] * 5
    assert broker.llen(QUEUE) == 5  # pushed onto the plain (priority 0) list only
    assert [broker.llen(key) for key in queue_keys(QUEUE)] == [5, 12, 0, 3]
    assert depth(broker, QUEUE) == 20


# --- weights, batches and the lower mark ---------------------------------------------


def test_a_batch_message_counts_its_weight_until_released(build_app, broker):
    gated = gated_app(build_app, 100)
    with gated.app_context():
        pushed = send_batch([Job(TASK, [[1, 2, 3]], 50), Job(TASK, [[4]], 30),
                             Job(TASK, [[5]], 30)], queue=QUEUE)
        # 50 + 30 fit; the third would take the depth to 110: it and what follows stay.
        assert pushed == 2
        assert broker.llen(QUEUE) == 2
        assert depth(broker, QUEUE) == 80
        assert depths(broker, [QUEUE, "orders"]) == {QUEUE: 80, "orders": 0}
        assert 0 < broker.ttl(weight_key(QUEUE)) <= 3600
        assert room(QUEUE) == 20
        assert send(TASK, [6], queue=QUEUE) == SENT
        # Taking a message off the list leaves its weight counted: its task still runs.
        broker.rpop(QUEUE)
        assert depth(broker, QUEUE) == 80
        release(QUEUE, 50)
        assert depth(broker, QUEUE) == 31
        release(QUEUE, 30)
        release(QUEUE, 30)  # released twice (a message delivered twice): never below zero
        assert depth(broker, QUEUE) == 2
        assert broker.exists(weight_key(QUEUE)) == 0
        release(QUEUE, 1)  # a one-event job carries no extra weight
        assert depth(broker, QUEUE) == 2


def test_concurrent_batches_never_pass_the_gate(build_app, broker):
    gated = gated_app(build_app, 200)
    pushed: list[int] = []
    lock = threading.Lock()
    start = threading.Barrier(6)

    def publisher(index: int) -> None:
        with gated.app_context():
            start.wait(timeout=10)
            for n in range(10):
                sent = send_batch([Job(TASK, [[index, n]], 7), Job(TASK, [[index, n]], 7)],
                                  queue=QUEUE)
                with lock:
                    pushed.append(sent)

    threads = [threading.Thread(target=publisher, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    # 200 // 7 = 28 messages fit, whoever sent them.
    assert sum(pushed) == 28
    assert broker.llen(QUEUE) == 28
    assert depth(broker, QUEUE) == 196


def test_below_publishes_only_under_the_lower_mark(build_app, broker):
    gated = gated_app(build_app, 100)
    with gated.app_context():
        outcomes = [send(TASK, [n], queue=QUEUE, below=3) for n in range(5)]
        assert room(QUEUE, below=3) == 0
        assert room(QUEUE) == 97
        assert send(TASK, ["no mark"], queue=QUEUE) == SENT
        # A mark above the gate is the gate.
        assert gate(QUEUE, below=10_000) == gate(QUEUE) == 100
    assert outcomes == [SENT] * 3 + [FULL] * 2
    assert depth(broker, QUEUE) == 4


def test_a_batch_to_a_dead_broker_answers_none(build_app, broker):
    no_broker = build_app({"REDIS_URL": DEAD_REDIS_URL})
    with no_broker.app_context():
        assert send_batch([Job(TASK, [[1]], 5)], queue=QUEUE) is None
        assert send_batch([], queue=QUEUE) == 0
        release(QUEUE, 5)  # never raises
    assert depth(broker, QUEUE) == 0


# --- also_set --------------------------------------------------------------------------


def test_also_set_sets_the_key_with_its_ttl_when_sent_and_when_full(build_app, broker):
    gated = gated_app(build_app, 1)
    sent_key, full_key = f"test:also:{uuid.uuid4().hex}", f"test:also:{uuid.uuid4().hex}"
    broker.set(sent_key, b"pending")  # no TTL yet, as an existing claim could be

    with gated.app_context():
        first = send(TASK, [1], queue=QUEUE, also_set=(sent_key, b"stored", 120))
        second = send(TASK, [2], queue=QUEUE, also_set=(full_key, "marked", 60))

    assert (first, second) == (SENT, FULL)
    assert broker.get(sent_key) == b"stored"
    assert 0 < broker.ttl(sent_key) <= 120
    assert broker.get(full_key) == b"marked"
    assert 0 < broker.ttl(full_key) <= 60
    # The extra key is not taken for one of the queue's lists.
    [raw] = broker.lrange(QUEUE, 0, -1)
    assert decode(raw)[1][0] == [1]
    assert depth(broker, QUEUE) == 1


# --- the message -----------------------------------------------------------------------


def test_the_pushed_message_is_a_celery_protocol_2_message_for_the_queue(build_app, broker):
    gated = gated_app(build_app, 10)
    before = time.time()
    with gated.app_context():
        assert send(TASK, [42, "ord-7"], queue=QUEUE, retries=2) == SENT
        assert send(TASK, [43], queue=QUEUE) == SENT
    after = time.time()

    newest, oldest = broker.lrange(QUEUE, 0, -1)  # pushed on the left, taken from the right
    envelope, body = decode(oldest)
    assert envelope["content-type"] == "application/json"
    assert envelope["content-encoding"] == "utf-8"
    args, kwargs, embed = body
    assert (args, kwargs) == ([42, "ord-7"], {})
    assert embed == {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
    headers, properties = envelope["headers"], envelope["properties"]
    assert headers["task"] == TASK
    assert headers["retries"] == 2
    assert str(uuid.UUID(headers["id"])) == headers["id"]
    assert headers["root_id"] == headers["id"] == properties["correlation_id"]
    assert headers["lang"] == "py"
    assert headers["argsrepr"] == repr([42, "ord-7"])
    assert before <= headers[ENQUEUED_AT_HEADER] <= after
    assert properties["delivery_info"]["routing_key"] == QUEUE
    assert properties["priority"] == 0

    other, other_body = decode(newest)
    assert other_body[0] == [43]
    assert other["headers"]["retries"] == 0
    assert other["headers"]["id"] != headers["id"]
    assert other["properties"]["delivery_tag"] != properties["delivery_tag"]


# --- the contract with Celery ---------------------------------------------------------

CONTRACT_QUEUE = "contract"


def test_a_message_sent_here_matches_one_celery_sends_and_a_worker_consumes_both(
        clean, broker, tmp_path):
    celery = clean.extensions["celery"]
    with clean.app_context():
        assert send("tests.record", [1, "ours"], queue=CONTRACT_QUEUE, retries=1) == SENT
    celery.send_task("tests.record", args=[2, "celery's"], queue=CONTRACT_QUEUE, retries=1)

    celerys_raw, ours_raw = broker.lrange(CONTRACT_QUEUE, 0, -1)
    ours, ours_body = decode(ours_raw)
    celerys, celerys_body = decode(celerys_raw)
    assert ours.keys() == celerys.keys()
    assert ours["headers"].keys() == celerys["headers"].keys()
    assert ours["properties"].keys() == celerys["properties"].keys()
    for envelope in (ours, celerys):
        assert envelope["properties"]["delivery_info"] == {"exchange": "",
                                                           "routing_key": CONTRACT_QUEUE}
    shared = ("content-type", "content-encoding")
    assert {k: ours[k] for k in shared} == {k: celerys[k] for k in shared}
    same_values = ("lang", "task", "retries", "eta", "expires", "group", "parent_id",
                   "shadow", "stamps")
    assert {k: ours["headers"][k] for k in same_values} == \
        {k: celerys["headers"][k] for k in same_values}
    assert {k: v for k, v in ours["properties"].items()
            if k not in ("correlation_id", "reply_to", "delivery_tag")} == \
        {k: v for k, v in celerys["properties"].items()
         if k not in ("correlation_id", "reply_to", "delivery_tag")}
    assert ours_body[1:] == celerys_body[1:]
    # send_task stamps the app-wide default limits; none here lets the worker apply the
    # task's own (per-task annotations), as apply_async of a known task would.
    assert ours["headers"]["timelimit"] == [None, None]
    assert (ours_body[0], celerys_body[0]) == ([1, "ours"], [2, "celery's"])

    worker = start_worker(tmp_path, queues=CONTRACT_QUEUE, concurrency=1, beat=False,
                          env={"WEBHOOK_HANDLER_MODULES": "tests.support.queue_handlers"})
    try:
        wait_until(lambda: broker.llen(RECORDED_KEY) == 2, 30, "both messages consumed",
                   logs=[worker])
    finally:
        worker.stop()
    assert sorted(json.loads(raw) for raw in broker.lrange(RECORDED_KEY, 0, -1)) == \
        [[1, "ours"], [2, "celery's"]]


# --- the broker down -------------------------------------------------------------------


def test_broker_down_answers_broker_down_promptly_without_raising(build_app, broker):
    no_broker = build_app({"REDIS_URL": DEAD_REDIS_URL})
    key = f"test:also:{uuid.uuid4().hex}"

    with no_broker.app_context():
        started = time.monotonic()
        outcomes = [send(TASK, [1], queue=QUEUE),
                    send(TASK, [2], queue=QUEUE, also_set=(key, b"stored", 60))]
        elapsed = time.monotonic() - started
        assert room(QUEUE) is None

    assert outcomes == [BROKER_DOWN, BROKER_DOWN]
    assert elapsed < 5.0, f"two sends to a dead broker took {elapsed:.1f} s"
    assert depth(broker, QUEUE) == 0
    assert broker.exists(key) == 0


def test_a_broker_that_accepts_but_never_answers_costs_one_socket_timeout(build_app, broker):
    """A hung Redis (stopped, or stalled behind a slow command): the connection is made but
    no reply comes. The app's client gives up after its 1 s socket timeout."""
    with socket.create_server(("127.0.0.1", 0), backlog=64) as silent:
        port = silent.getsockname()[1]
        hung = build_app({"REDIS_URL": f"redis://127.0.0.1:{port}/0"})
        with hung.app_context():
            started = time.monotonic()
            outcome = send(TASK, [1], queue=QUEUE, also_set=(f"test:also:{uuid.uuid4().hex}",
                                                              b"stored", 60))
            elapsed = time.monotonic() - started

    assert outcome == BROKER_DOWN
    assert elapsed < 3.0, f"a send to a silent broker took {elapsed:.1f} s"
    assert depth(broker, QUEUE) == 0
