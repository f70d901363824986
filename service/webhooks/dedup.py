"""The fast duplicate check in Redis, in front of the database's unique constraint.

A key is first claimed as `pending`, and only marked `stored` after the event's row is
committed. A delivery that finds `stored` is a duplicate without touching the database;
one that finds `pending` (a concurrent delivery, or one that crashed before its commit)
goes on to the database, which stays the authority. So a Redis answer can never make
the service acknowledge an event that is not stored.
"""

from __future__ import annotations

import logging
import time

import redis

log = logging.getLogger(__name__)

STORED = b"stored"
PENDING = b"pending"


class DedupCache:
    def __init__(self, *, client: redis.Redis, ttl_seconds: int = 300, prefix: str = "racine:dedup"):
        self._client = client
        self._ttl = ttl_seconds
        self._prefix = prefix

    def _key(self, provider: str, event_id: str) -> str:
        return f"{self._prefix}:{provider}:{event_id}"

    def seen_stored(self, provider: str, event_id: str) -> bool:
        """Claim the key; True only when an earlier delivery's row is known to be committed.

        Redis being unreachable answers False: the database check then decides.
        """
        try:
            previous = _set_unless_present(self._client, self._key(provider, event_id), PENDING,
                                           self._ttl)
        except redis.RedisError as exc:
            log.warning("dedup cache unavailable", extra={"error": type(exc).__name__})
            return False
        return previous == STORED

    def stored_mark(self, provider: str, event_id: str) -> tuple[str, bytes, int]:
        """(key, value, ttl) that marks the event stored, for a caller that sets it
        together with other writes in one round trip."""
        return self._key(provider, event_id), STORED, self._ttl

    def mark_stored(self, provider: str, event_id: str) -> None:
        try:
            self._client.set(self._key(provider, event_id), STORED, ex=self._ttl)
        except redis.RedisError:
            pass

    def note_duplicate(self, provider: str, event_id: str) -> None:
        """Count a duplicate delivery for the webhook loop runbook; best effort."""
        note_duplicate(self._client, provider, event_id, now=time.time())

    def release(self, provider: str, event_id: str) -> None:
        """Forget a pending claim whose row could not be stored, so a redelivery is not delayed."""
        try:
            self._client.delete(self._key(provider, event_id))
        except redis.RedisError:
            pass


def _set_unless_present(client: redis.Redis, key: str, value, ttl: int) -> bytes | None:
    """SET key NX EX ttl; the value already there, or None when this call set it."""
    try:
        return client.set(key, value, nx=True, ex=ttl, get=True)
    except redis.ResponseError:  # servers before 7.0 refuse NX together with GET
        if client.set(key, value, nx=True, ex=ttl):
            return None
        return client.get(key)


# Duplicate deliveries per event id, in 5-minute buckets kept for a day: what the
# webhook loop rule reads to open its incident, and the runbook to name the most
# repeated event ids. Counted only for
# duplicates, so the first delivery of an event pays nothing for it.
DUPLICATES_BUCKET_SECONDS = 300
DUPLICATES_KEEP_SECONDS = 25 * 3600
DUPLICATES_KEY = "racine:webhooks:duplicates:{bucket}"


def duplicates_key(bucket: int) -> str:
    return DUPLICATES_KEY.format(bucket=bucket)


def note_duplicate(client: redis.Redis, provider: str, event_id: str, *, now: float) -> None:
    """Count one duplicate delivery of (provider, event id); best effort."""
    key = duplicates_key(int(now // DUPLICATES_BUCKET_SECONDS))
    try:
        pipe = client.pipeline(transaction=False)
        pipe.zincrby(key, 1, f"{provider}:{event_id}")
        pipe.expire(key, DUPLICATES_KEEP_SECONDS)
        pipe.execute()
    except redis.RedisError:
        pass


def repeated_duplicates(client: redis.Redis, *, first: int, last: int, min_repeats: int,
                        scan: int = 50) -> list[tuple[str, int]]:
    """("provider:event id", duplicates) of the events counted at least `min_repeats`
    times over buckets `first`..`last`, most repeated first; what the webhook loop rule
    reads every minute, so the read is bounded whatever the traffic.

    An event with `min_repeats` duplicates over k buckets has at least
    ceil(min_repeats / k) of them in one bucket, so only members at that score are
    candidates (the `scan` highest of them); their counts in every bucket are then read
    in one more round trip. Ordinary redeliveries, a duplicate or two per event, are never
    read back.
    """
    buckets = range(first, last + 1)
    if not buckets or min_repeats < 1:
        return []
    at_least = -(-min_repeats // len(buckets))
    pipe = client.pipeline(transaction=False)
    for bucket in buckets:
        pipe.zrevrangebyscore(duplicates_key(bucket), "+inf", at_least, start=0, num=scan,
                              withscores=True)
    best: dict[bytes, float] = {}
    for members in pipe.execute():
        for member, score in members:
            best[member] = max(score, best.get(member, 0))
    candidates = sorted(best, key=lambda m: (-best[m], m))[:scan]
    if not candidates:
        return []
    pipe = client.pipeline(transaction=False)
    for bucket in buckets:
        for member in candidates:
            pipe.zscore(duplicates_key(bucket), member)
    totals = dict.fromkeys(candidates, 0)
    for index, score in enumerate(pipe.execute()):
        totals[candidates[index % len(candidates)]] += int(score or 0)
    found = [(m.decode() if isinstance(m, bytes) else m, n) for m, n in totals.items()
             if n >= min_repeats]
    return sorted(found, key=lambda item: (-item[1], item[0]))
