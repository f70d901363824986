"""The durable log of PayPal transmissions: each id once, with the digest of its body."""

from __future__ import annotations

import logging

from sqlalchemy import DateTime
from sqlalchemy.exc import SQLAlchemyError

from service.clock import utcnow
from service.fastsql import Statement, fetch_one
from service.webhooks.exceptions import VerificationUnavailable

log = logging.getLogger(__name__)

_RECORD = Statement(
    "INSERT INTO paypal_transmissions (transmission_id, body_sha256, created_at)"
    " VALUES (:transmission_id, :digest, :now)"
    " ON CONFLICT (transmission_id) DO NOTHING RETURNING body_sha256",
    now=DateTime(),
)
_READ = Statement(
    "SELECT body_sha256 FROM paypal_transmissions WHERE transmission_id = :transmission_id")


class DatabaseTransmissionLog:
    """`paypal_transmissions`, whose primary key makes each transmission id unique.

    Kept in the database, not a cache: a CRC32 twin of a body seen once is refused for
    as long as the row lives, whatever happened to Redis. When the check cannot run
    (the database is down), the delivery is answered 503, never accepted unchecked.
    """

    def first_body(self, transmission_id: str, digest: str) -> bool:
        params = {"transmission_id": transmission_id, "digest": digest, "now": utcnow()}
        try:
            if fetch_one(_RECORD, params) is not None:
                return True
            row = fetch_one(_READ, params)
        except SQLAlchemyError as exc:
            log.error("paypal transmission log unavailable", extra={"error": type(exc).__name__})
            raise VerificationUnavailable(
                "the transmission log cannot be checked now; deliver again") from None
        if row is None:  # removed between the two statements: ask for another try
            raise VerificationUnavailable("the transmission log changed; deliver again")
        return row[0] == digest
