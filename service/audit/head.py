"""The chain-head witness (`audit_chain_head`): where the writer last left the chain.

Rows deleted from the end of a hash chain leave no gap: the rows before them still link.
So the writer also records the id and hash of each row it writes in this one-row table,
in the same transaction and under the same chain lock (one UPDATE per write). Triggers
refuse DELETE and any UPDATE that does not move it to a later row, so whoever removes the
tail must also get round them to hide it. The next write continues after the witnessed
row, leaving the gap in the numbering, and `verify` compares the chain's end with it.

A database without the row (a table emptied by hand) falls back to the newest live row,
and the next write creates it again.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import insert, select, update

from service.audit.models import AuditChainHead
from service.extensions import db

_TABLE = AuditChainHead.__table__


@dataclass(frozen=True)
class Head:
    id: int
    hash: str
    created_at: datetime | None


def read() -> Head | None:
    row = db.session.execute(select(_TABLE.c.last_id, _TABLE.c.last_hash,
                                    _TABLE.c.last_created_at)).first()
    return Head(*row) if row is not None else None


def advance(row_id: int, row_hash: str, created_at: datetime) -> None:
    """Move the witness to the row just written; call under the chain lock."""
    values = {"last_id": row_id, "last_hash": row_hash, "last_created_at": created_at}
    moved = db.session.execute(update(_TABLE).where(_TABLE.c.id == 1).values(**values))
    if moved.rowcount == 0:
        db.session.execute(insert(_TABLE).values(id=1, **values))
