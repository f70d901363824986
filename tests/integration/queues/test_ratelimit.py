"""The global rate limiter against the real Redis of the test session.

Every worker process builds its own `RateLimiter` on the same Redis; the window and the
reserved slots live there, so two instances here stand for two workers.
"""

from __future__ import annotations

import time
from itertools import pairwise

import pytest

from service.queues.ratelimit import RateLimiter

RATE = "5/2second"  # 5 a window of 2 s: slots are 0.4 s apart
LIMIT, PERIOD = 5, 2.0
INTERVAL = PERIOD / LIMIT


@pytest.fixture
def redis_client(clean):
    return clean.extensions["redis"]


def new_limiter(app) -> RateLimiter:
    """A limiter as a worker process builds one: its own client, the shared Redis."""
    return RateLimiter(client=app.extensions["redis"], redis_url=app.config["REDIS_URL"])


@pytest.fixture
def limiter(clean):
    return new_limiter(clean)


def test_exactly_limit_acquisitions_in_a_window_run_now(limiter):
    waits = [limiter.acquire("orders", RATE) for _ in range(LIMIT + 1)]

    assert waits[:LIMIT] == [0.0] * LIMIT
    assert waits[LIMIT] > 0


def timed_acquire(limiter, key: str = "orders") -> tuple[float, float]:
    """(earliest, latest) absolute time of the slot given: the limiter measures "now"
    somewhere between the two clock readings around the call, so however busy the
    machine, the slot lies between them plus the wait."""
    before = time.time()
    wait = limiter.acquire(key, RATE)
    after = time.time()
    assert wait > 0
    return before + wait, after + wait


def assert_spaced(earlier: tuple[float, float], later: tuple[float, float]) -> None:
    """The two slots are INTERVAL apart, within what the clock readings can tell."""
    tolerance = 0.002  # float rounding in the Lua script's arithmetic
    assert later[0] - earlier[1] - tolerance <= INTERVAL <= later[1] - earlier[0] + tolerance, \
        (earlier, later)


def test_limited_acquisitions_get_distinct_slots_spaced_from_the_window_reset(limiter):
    started = time.time()
    assert limiter.acquire("orders", RATE) == 0.0
    first_hit_by = time.time()
    for _ in range(LIMIT - 1):
        assert limiter.acquire("orders", RATE) == 0.0

    slots = [timed_acquire(limiter) for _ in range(4)]

    # The first slot starts where the first hit leaves the window ...
    earliest, latest = slots[0]
    assert latest >= started + PERIOD - 0.01, (started, slots[0])
    assert earliest <= first_hit_by + PERIOD + 0.01, (first_hit_by, slots[0])
    # ... and the others follow period/limit apart: no two waiting jobs wake together.
    for earlier, later in pairwise(slots):
        assert_spaced(earlier, later)
    # None of them ran: the window is still full for a job asking now.
    assert limiter.state("orders", RATE)["remaining"] == 0


def test_a_slot_is_free_once_the_window_moves_on(limiter):
    for _ in range(LIMIT):
        limiter.acquire("orders", RATE)
    wait = limiter.acquire("orders", RATE)
    assert wait > 0

    time.sleep(wait + 0.05)

    assert limiter.acquire("orders", RATE) == 0.0


def test_different_keys_have_independent_windows(limiter):
    for _ in range(LIMIT):
        assert limiter.acquire("orders", RATE) == 0.0
    assert limiter.acquire("orders", RATE) > 0

    assert [limiter.acquire("erp", RATE) for _ in range(LIMIT)] == [0.0] * LIMIT
    assert limiter.acquire("erp", RATE) > 0
    # Slots reserved for one key do not push back the slots of another.
    assert limiter.acquire("orders", RATE) - limiter.acquire("erp", RATE) < INTERVAL + 0.05


def test_two_limiter_instances_share_one_window_and_one_slot_queue(clean):
    first, second = new_limiter(clean), new_limiter(clean)

    waits = [(first if n % 2 else second).acquire("orders", RATE) for n in range(LIMIT)]
    assert waits == [0.0] * LIMIT

    slot_first = timed_acquire(first)
    slot_second = timed_acquire(second)

    # The second process's job is queued behind the first's, not on the same slot.
    assert_spaced(slot_first, slot_second)
    assert first.state("orders", RATE)["remaining"] == 0
    assert second.state("orders", RATE)["remaining"] == 0


def test_state_reports_remaining_hits_and_time_to_reset(limiter):
    fresh = limiter.state("orders", RATE)
    assert fresh["rate"] == RATE
    assert fresh["remaining"] == LIMIT
    assert fresh["reset_in_seconds"] <= PERIOD

    limiter.acquire("orders", RATE)
    limiter.acquire("orders", RATE)
    after_two = limiter.state("orders", RATE)
    assert after_two["remaining"] == LIMIT - 2
    assert PERIOD - 0.3 <= after_two["reset_in_seconds"] <= PERIOD

    for _ in range(LIMIT):
        limiter.acquire("orders", RATE)
    full = limiter.state("orders", RATE)
    assert full["remaining"] == 0
    assert 0 < full["reset_in_seconds"] <= PERIOD


def test_state_without_a_broker_reports_unknown_instead_of_raising(clean):
    dead = RateLimiter(client=clean.extensions["redis"], redis_url="redis://127.0.0.1:1/0")

    assert dead.state("orders", RATE) == {"rate": RATE, "remaining": None,
                                          "reset_in_seconds": None}
