"""The hash chain: each row's SHA-256 covers a canonical JSON form of the row and the
previous row's hash, so editing, removing or inserting a row breaks every link after it.

The canonical form is JSON with sorted keys, no spaces and UTF-8, of the fields in
`HASHED_FIELDS`; timestamps are written as `YYYY-MM-DDTHH:MM:SS.ffffffZ` and the metadata
column is parsed and re-serialised, so the form does not depend on how a database
returns a value. Archives carry the same fields, so a file verifies on its own.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime

GENESIS_HASH = "0" * 64

HASHED_FIELDS = (
    "id", "created_at", "action", "entity_type", "entity_id", "user_id", "actor",
    "token_prefix", "ip_address", "user_agent", "request_id", "reason", "metadata",
    "prev_hash",
)


def format_time(value: datetime | str) -> str:
    if isinstance(value, str):
        value = datetime.fromisoformat(value.removesuffix("Z"))
    return value.isoformat(sep="T", timespec="microseconds") + "Z"


def canonical_json(value) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def canonical_row(row: dict) -> str:
    """The bytes-to-be of a row, from a mapping holding at least `HASHED_FIELDS`."""
    fields = {name: row[name] for name in HASHED_FIELDS}
    fields["created_at"] = format_time(fields["created_at"])
    metadata = fields["metadata"]
    fields["metadata"] = json.loads(metadata) if isinstance(metadata, str) else metadata
    return canonical_json(fields)


def row_hash(row: dict) -> str:
    return hashlib.sha256(canonical_row(row).encode()).hexdigest()
