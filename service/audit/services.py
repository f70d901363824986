"""The one function that writes an audit row, and the queries that read them.

`record` runs in the caller's transaction: the change and its row commit together or
not at all. Writers are serialised so the chain never forks: on PostgreSQL by a
transaction-level advisory lock taken right before the row is written and held until
the caller's commit; on SQLite by the database write lock every transaction already
holds (BEGIN IMMEDIATE). Call it last in a service function, after the change, so the
lock is held for as short a time as possible.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from flask import g, has_request_context, request
from sqlalchemy import insert, select, text

from service.audit import head, registry
from service.audit.actor import Actor
from service.audit.chain import GENESIS_HASH, canonical_json, row_hash
from service.audit.exceptions import UnknownAction
from service.audit.models import AuditArchive, AuditLog
from service.clock import utcnow
from service.extensions import db
from service.logs import request_id_var

log = logging.getLogger(__name__)

__all__ = ["Actor", "AuditFilter", "Page", "chain_head", "list_logs", "record"]

# pg_advisory_xact_lock key of the audit chain ("RACINEAU" as a 64-bit integer).
CHAIN_LOCK_KEY = 0x524143494E454155

_TABLE = AuditLog.__table__


@dataclass(frozen=True)
class RequestContext:
    ip_address: str | None = None
    user_agent: str | None = None
    request_id: str | None = None


def current_request_context() -> RequestContext:
    """IP, user agent and request id of the Flask request being served, if any."""
    if has_request_context():
        agent = request.user_agent.string or None
        return RequestContext(ip_address=(request.remote_addr or None),
                              user_agent=agent[:512] if agent else None,
                              request_id=g.get("request_id"))
    return RequestContext(request_id=request_id_var.get())


def record(*, action: str, entity_type: str, entity_id: object, actor: Actor,
           before: Mapping | None, after: Mapping | None, reason: str | None = None,
           details: Mapping | None = None, context: RequestContext | None = None) -> int:
    """Append one audit row to the current transaction; the caller commits.

    `before` and `after` are the entity's relevant state around the change (None for a
    creation or a removal). `details` adds further facts (amounts, keys, ids) to the
    row's metadata. Returns the row's chain position (`id`).
    """
    spec = registry.action(action)
    if spec is None:
        raise UnknownAction(f"audit action {action!r} is not in the registry of critical actions")
    if entity_type != spec.entity_type:
        raise ValueError(f"{action} records a {spec.entity_type}, not a {entity_type}")
    context = context or current_request_context()
    # Round-trip through JSON first: the hash covers exactly what the column will hold.
    metadata = json.loads(json.dumps({**(details or {}), "before": before, "after": after},
                                     default=str))
    session = db.session
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": CHAIN_LOCK_KEY})
    head_id, head_hash, head_time = chain_head()
    row = {
        "id": head_id + 1,
        # Never before the previous row: a month's partition then holds one unbroken
        # stretch of the chain, even when the writers' clocks disagree a little.
        "created_at": max(utcnow(), head_time) if head_time else utcnow(),
        "action": action, "entity_type": entity_type, "entity_id": str(entity_id)[:64],
        "user_id": actor.user_id, "actor": actor.label[:255], "token_prefix": actor.token_prefix,
        "ip_address": context.ip_address, "user_agent": context.user_agent,
        "request_id": context.request_id, "reason": reason, "metadata": metadata,
        "prev_hash": head_hash,
    }
    row["hash"] = row_hash(row)
    session.execute(insert(_TABLE), [{**row, "metadata": canonical_json(metadata)}])
    head.advance(row["id"], row["hash"], row["created_at"])
    return row["id"]


def chain_head() -> tuple[int, str, datetime | None]:
    """(id, hash, created_at) of the chain's head: the row the chain-head witness records;
    without a witness, the newest row, or the newest archive when the live table is
    empty, or (0, genesis, None) for a new chain.

    Only the writer moves the witness, so rows removed from the end do not move the head
    back (the next row takes the id after the witnessed one, and `verify` reports the
    ones in between as missing), and rows added after it by a plain INSERT are not taken
    into the chain (the next row takes the same id, and `verify` reports it twice).
    """
    witness = head.read()
    if witness is not None:
        return witness.id, witness.hash, witness.created_at
    last = db.session.execute(
        select(_TABLE.c.id, _TABLE.c.hash, _TABLE.c.created_at)
        .order_by(_TABLE.c.id.desc()).limit(1)
    ).first()
    if last is not None:
        return last.id, last.hash, last.created_at
    archived = db.session.execute(
        select(AuditArchive.last_id, AuditArchive.last_hash, AuditArchive.created_at)
        .where(AuditArchive.last_id.is_not(None))
        .order_by(AuditArchive.last_id.desc()).limit(1)
    ).first()
    if archived is not None:
        return archived.last_id, archived.last_hash, None
    return 0, GENESIS_HASH, None


# ---- reading -------------------------------------------------------------------------

@dataclass(frozen=True)
class AuditFilter:
    entity_type: str | None = None
    entity_id: str | None = None
    action: str | None = None
    actor: str | None = None  # exact label, or a prefix ending in ":" or "*"
    since: datetime | None = None
    until: datetime | None = None


@dataclass(frozen=True)
class Page:
    rows: list[dict]
    next_cursor: str | None


def encode_cursor(last_id: int) -> str:
    return base64.urlsafe_b64encode(f"id:{last_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    """The id a cursor continues below; ValueError for anything not made by `encode_cursor`."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        kind, _, value = raw.partition(":")
        if kind != "id":
            raise ValueError
        return int(value)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError("cursor is not one this API returned") from exc


def list_logs(filters: AuditFilter, *, limit: int = 50, cursor: str | None = None) -> Page:
    """Newest first, `limit` rows, and a cursor for the next (older) page."""
    query = select(AuditLog).order_by(AuditLog.id.desc()).limit(limit + 1)
    if filters.entity_type:
        query = query.where(AuditLog.entity_type == filters.entity_type)
    if filters.entity_id:
        query = query.where(AuditLog.entity_id == filters.entity_id)
    if filters.action:
        query = query.where(AuditLog.action == filters.action)
    if filters.actor:
        if filters.actor.endswith(("*", ":")):
            prefix = filters.actor.rstrip("*")
            query = query.where(AuditLog.actor.startswith(prefix, autoescape=True))
        else:
            query = query.where(AuditLog.actor == filters.actor)
    if filters.since:
        query = query.where(AuditLog.created_at >= filters.since)
    if filters.until:
        query = query.where(AuditLog.created_at < filters.until)
    if cursor:
        query = query.where(AuditLog.id < decode_cursor(cursor))
    found = list(db.session.scalars(query))
    rows = [entry.to_dict() for entry in found[:limit]]
    more = len(found) > limit
    return Page(rows=rows, next_cursor=encode_cursor(found[limit - 1].id) if more else None)

