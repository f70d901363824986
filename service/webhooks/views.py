"""HTTP intake: `POST /webhooks/<provider>`."""

from __future__ import annotations

import logging

from flask import Blueprint, current_app, g, jsonify, request
from werkzeug.exceptions import RequestEntityTooLarge

from service.alerts.services import note_intake_unavailable
from service.webhooks.exceptions import RejectedDelivery, StorageUnavailable
from service.webhooks.intake import accept_event
from service.webhooks.metrics import DELIVERIES

log = logging.getLogger(__name__)

bp = Blueprint("webhooks", __name__, url_prefix="/webhooks")


@bp.post("/<provider>")
def receive(provider: str):
    verifiers = current_app.extensions["webhook_verifiers"]
    verifier = verifiers.get(provider)
    if verifier is None:
        return _error(404, "unknown_provider", f"no webhook endpoint for {provider!r}"[:80])
    body = _read_capped(current_app.config["WEBHOOK_MAX_BODY_BYTES"])
    if body is None:
        log.info("delivery too large", extra={"provider": provider, "code": 413})
        DELIVERIES.inc(provider=provider, outcome="too_large")
        return _error(413, "too_large", "body exceeds the size limit")
    try:
        event = verifier.verify(body, request.headers)
        result = accept_event(
            event,
            dedup=current_app.extensions["webhook_dedup"],
            request_id=g.get("request_id"),
        )
    except RejectedDelivery as exc:
        log.info("delivery rejected", extra={"provider": provider, "reason": exc.reason,
                                             "code": exc.status_code})
        DELIVERIES.inc(provider=provider, outcome=exc.code)
        response = _error(exc.status_code, exc.code, exc.reason)
        if exc.retry_after is not None:
            response.headers["Retry-After"] = str(exc.retry_after)
        return response
    except StorageUnavailable as exc:
        log.error("event not stored: database unavailable",
                  extra={"provider": provider, "event_id": event.event_id, "error": str(exc)})
        DELIVERIES.inc(provider=provider, outcome="storage_unavailable")
        # The escalation policy's P0 "intake answering 503" reads this run from Redis.
        note_intake_unavailable(current_app.extensions["redis"],
                                gap_seconds=current_app.config["ALERT_INTAKE_503_GAP_SECONDS"])
        response = _error(503, "storage_unavailable", "event not stored; deliver again")
        response.headers["Retry-After"] = "30"
        return response
    log.info("delivery accepted", extra={
        "provider": provider, "event_id": event.event_id, "event_type": event.event_type,
        "event_pk": result.event_pk, "outcome": result.status,
    })
    DELIVERIES.inc(provider=provider, outcome=result.status)
    return jsonify(status=result.status, event_id=event.event_id), 200


def _read_capped(limit: int) -> bytes | None:
    """The raw body, or None when it is larger than `limit`.

    A declared length is checked before reading; a chunked body has none, so one byte
    past the limit is read to tell "exactly the limit" from "too large".
    """
    if request.content_length is not None and request.content_length > limit:
        return None
    try:
        body = request.stream.read(limit + 1)
    except RequestEntityTooLarge:
        return None
    return None if len(body) > limit else body


def _error(status: int, code: str, reason: str):
    response = jsonify(error=code, reason=reason)
    response.status_code = status
    return response
