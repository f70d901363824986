"""Admin JSON API under /api/admin/. Views parse, call a service, shape the answer.

Every endpoint is declared through `api.operation` (see `spec`): its role, its request
models and its place in the OpenAPI document at /api/admin/openapi.json.
"""

from __future__ import annotations

from flask import Blueprint, current_app, g, jsonify, request

from service.accounts import services as accounts
from service.accounts.exceptions import (
    AccountsError,
    InactiveUser,
    InvalidUser,
    TokenNotFound,
    UserExists,
    UserNotFound,
)
from service.accounts.roles import Role
from service.admin import schemas
from service.admin.errors import ApiError, error_response, install_blueprint_handlers
from service.admin.spec import AdminApi
from service.alerts import services as alerts
from service.alerts.exceptions import AlertsError, IncidentNotFound, InvalidTransition
from service.audit.services import AuditFilter, list_logs
from service.cli_utils import parse_duration, parse_time_point
from service.clock import utcnow
from service.erp import services as erp
from service.erp.exceptions import ErpError, InvalidReason
from service.extensions import db
from service.orders import refunds
from service.orders import services as orders
from service.orders.exceptions import (
    CustomerNotFound,
    IdempotencyConflict,
    InsufficientStock,
    InvalidAmount,
    InvalidChange,
    OrderNotFound,
    OrdersError,
    PaymentMethodConflict,
    PaymentMethodNotFound,
    ProductNotFound,
    RefundInProgress,
    RefundNotAllowed,
)
from service.queues.health import queue_health
from service.webhooks.replay import Selection, retry_failures, select_failures

bp = Blueprint("admin_api", __name__, url_prefix="/api/admin")
api = AdminApi(bp, title="Racine admin API", version="1")
install_blueprint_handlers(bp)

IDEMPOTENCY_HEADER = "Idempotency-Key"

_ORDERS_ERRORS = {
    ProductNotFound: (404, "not_found"), CustomerNotFound: (404, "not_found"),
    PaymentMethodNotFound: (404, "not_found"), InvalidChange: (400, "validation_failed"),
    InsufficientStock: (422, "insufficient_stock"),
    PaymentMethodConflict: (409, "conflict"), IdempotencyConflict: (409, "idempotency_conflict"),
    RefundInProgress: (409, "in_progress"), RefundNotAllowed: (422, "refund_not_allowed"),
    OrderNotFound: (404, "not_found"), InvalidAmount: (400, "validation_failed"),
}
_ALERTS_ERRORS = {IncidentNotFound: (404, "not_found"), InvalidTransition: (409, "conflict")}
_ACCOUNTS_ERRORS = {
    UserNotFound: (404, "not_found"), TokenNotFound: (404, "not_found"),
    InvalidUser: (400, "validation_failed"), UserExists: (409, "conflict"),
    InactiveUser: (409, "conflict"),
}


_ERP_ERRORS = {InvalidReason: (400, "validation_failed")}


@bp.errorhandler(OrdersError)
@bp.errorhandler(AccountsError)
@bp.errorhandler(AlertsError)
@bp.errorhandler(ErpError)
def _domain_error(exc: Exception):
    db.session.rollback()
    status, code = {**_ORDERS_ERRORS, **_ACCOUNTS_ERRORS, **_ALERTS_ERRORS, **_ERP_ERRORS}.get(
        type(exc), (422, "refused"))
    return error_response(status, code, str(exc))


def _actor():
    return g.principal.actor


def _idempotency_key(*, required: bool) -> str | None:
    key = request.headers.get(IDEMPOTENCY_HEADER, "").strip()
    if not key:
        if required:
            raise ApiError(400, "idempotency_key_required",
                           f"send an {IDEMPOTENCY_HEADER} header (a unique string per refund)")
        return None
    if len(key) > 255 or not key.isascii() or not key.isprintable():
        raise ApiError(400, "validation_failed",
                       f"{IDEMPOTENCY_HEADER} must be 1 to 255 printable ASCII characters")
    return key


# ---- reading -------------------------------------------------------------------------

@api.operation("GET", "/openapi.json", summary="This document", role=None, tags=("meta",))
def openapi_document():
    """The OpenAPI document of this API (no token needed: it holds no data)."""
    return jsonify(api.document())


@api.operation("GET", "/me", summary="Who the token acts as", role=Role.VIEWER,
               tags=("access",))
def me():
    principal = g.principal
    return jsonify(actor=principal.actor.label, role=principal.role,
                   user_id=principal.user_id, token_prefix=principal.actor.token_prefix)


@api.operation("GET", "/queue/health", summary="Queue health report", role=Role.VIEWER,
               tags=("queues",))
def queue_health_view():
    return jsonify(queue_health())


@api.operation("GET", "/audit-logs", summary="Audit rows, newest first", role=Role.VIEWER,
               tags=("audit",), query=schemas.AuditQuery)
def audit_logs(query: schemas.AuditQuery):
    """Filters: entity_type/entity_id, action, actor, since/until. Pages with `cursor`:
    pass the previous answer's `next_cursor` (null on the last page)."""
    try:
        since = parse_time_point(query.since) if query.since else None
        until = parse_time_point(query.until) if query.until else None
    except ValueError as exc:
        raise ApiError(400, "validation_failed", str(exc)) from None
    try:
        page = list_logs(AuditFilter(entity_type=query.entity_type, entity_id=query.entity_id,
                                     action=query.action, actor=query.actor, since=since,
                                     until=until), limit=query.limit, cursor=query.cursor)
    except ValueError as exc:
        raise ApiError(400, "validation_failed", str(exc)) from None
    return jsonify(items=page.rows, next_cursor=page.next_cursor)


# ---- stock and payment methods -------------------------------------------------------

@api.operation("POST", "/products/<int:product_id>/stock-adjustments",
               summary="Adjust a product's stock", role=Role.OPERATOR, tags=("stock",),
               body=schemas.StockAdjustmentIn,
               responses={201: "Adjusted", 200: "Replay of an earlier adjustment (same key)",
                          404: "", 409: "", 422: "Stock would go below zero"},
               headers={IDEMPOTENCY_HEADER: (False, "Makes a retried request safe")})
def adjust_stock(product_id: int, body: schemas.StockAdjustmentIn):
    """Stock never goes below zero; one audit row per adjustment."""
    outcome = orders.adjust_stock(product_id=product_id, delta=body.delta, reason=body.reason,
                                  actor=_actor(), idempotency_key=_idempotency_key(required=False))
    db.session.commit()
    return jsonify(outcome.adjustment), 201 if outcome.created else 200


@api.operation("GET", "/customers/<int:customer_id>/payment-methods",
               summary="A customer's payment methods", role=Role.VIEWER, tags=("customers",),
               responses={200: "OK", 404: ""})
def payment_methods(customer_id: int):
    return jsonify(customer_id=customer_id, payment_methods=orders.payment_methods_of(customer_id))


@api.operation("PUT", "/customers/<int:customer_id>/payment-method",
               summary="Add, remove, or set the default payment method", role=Role.OPERATOR,
               tags=("customers",), body=schemas.PaymentMethodChangeIn,
               responses={200: "Changed", 404: "", 409: ""})
def change_payment_method(customer_id: int, body: schemas.PaymentMethodChangeIn):
    """`{"action": "add", "provider", "provider_ref", "brand", "last4", "make_default"}`,
    `{"action": "set_default", "payment_method_id"}` or
    `{"action": "remove", "payment_method_id"}`; each with an optional `reason`."""
    change, actor = body.root, _actor()
    if change.action == "add":
        outcome = orders.add_payment_method(
            customer_id=customer_id, provider=change.provider, provider_ref=change.provider_ref,
            brand=change.brand, last4=change.last4, make_default=change.make_default,
            actor=actor, reason=change.reason)
    elif change.action == "set_default":
        outcome = orders.set_default_payment_method(
            customer_id=customer_id, payment_method_id=change.payment_method_id, actor=actor,
            reason=change.reason)
    else:
        outcome = orders.remove_payment_method(
            customer_id=customer_id, payment_method_id=change.payment_method_id, actor=actor,
            reason=change.reason)
    db.session.commit()
    return jsonify(customer_id=customer_id, action=change.action,
                   payment_method_id=outcome.payment_method_id,
                   payment_methods=outcome.payment_methods)


# ---- refunds -------------------------------------------------------------------------

@api.operation("POST", "/orders/<int:order_id>/refunds", summary="Refund an order, fully or "
               "in part", role=Role.OPERATOR, tags=("orders",), body=schemas.RefundIn,
               responses={201: "Refunded (or the stored answer for this key)", 404: "",
                          409: "Key reused with another body, or still in progress",
                          422: "Over the refundable amount, or refused by the provider",
                          502: "Provider unreachable: repeat with the same key"},
               headers={IDEMPOTENCY_HEADER: (True, "One per refund: the same key and body "
                                             "get the same answer and never a second refund")})
def refund_order(order_id: int, body: schemas.RefundIn):
    """Never more than captured minus refunded (and refunds in progress), also under
    concurrent requests. The provider's later refund webhook matches this refund."""
    result = refunds.refund_order(order_id=order_id, amount_cents=body.amount_cents,
                                  reason=body.reason, idempotency_key=_idempotency_key(required=True),
                                  actor=_actor())
    refund = result.request
    headers = {"Idempotent-Replayed": "true"} if result.replayed else {}
    if refund["status"] == "failed":
        return error_response(422, "refund_declined", refund["error"] or "refused by the provider",
                              details=refund, headers=headers)
    if refund["status"] == "pending":
        return error_response(502, "provider_unavailable", "the provider's answer is unknown; "
                              "repeat the request with the same Idempotency-Key",
                              details=refund, headers=headers)
    return jsonify(refund), 201, headers


@api.operation("GET", "/orders/<int:order_id>", summary="An order, its refunds and refund "
               "requests", role=Role.VIEWER, tags=("orders",), responses={200: "OK", 404: ""})
def order(order_id: int):
    return jsonify({**orders.order_details(order_id),
                    "refund_requests": refunds.refund_requests_of(order_id)})


# ---- webhook failures ----------------------------------------------------------------

@api.operation("GET", "/webhooks/failures", summary="Webhook failures", role=Role.VIEWER,
               tags=("webhooks",), query=schemas.FailuresQuery)
def webhook_failures(query: schemas.FailuresQuery):
    since = utcnow() - parse_duration(query.since) if query.since else None
    failures = select_failures(Selection(since=since, provider=query.provider,
                                         include_resolved=query.include_resolved))
    return jsonify(items=[f.to_dict() for f in failures[-query.limit:]])


@api.operation("POST", "/webhooks/failures/retry", summary="Retry failed webhook events",
               role=Role.OPERATOR, tags=("webhooks",), body=schemas.RetryIn,
               responses={200: "Retried", 404: "An id given is not an unresolved failure"})
def retry_webhook_failures(body: schemas.RetryIn):
    """By `ids`, or by `since` (and `provider`). One audit row per retried event."""
    if not body.ids and not body.since:
        raise ApiError(400, "validation_failed", "say which failures: ids or since")
    since = utcnow() - parse_duration(body.since) if body.since else None
    if body.ids:
        failures = [f for fid in dict.fromkeys(body.ids)
                    for f in select_failures(Selection(failure_id=fid, since=since,
                                                       provider=body.provider))]
        missing = sorted(set(body.ids) - {f.id for f in failures})
        if missing:
            raise ApiError(404, "not_found", "not unresolved failures: "
                           + ", ".join(map(str, missing)), details={"ids": missing})
    else:
        failures = select_failures(Selection(since=since, provider=body.provider))
    outcomes = list(retry_failures(failures, actor=_actor(), reason=body.reason))
    counts = {"enqueued": 0, "left_for_relay": 0, "skipped": 0}
    for outcome in outcomes:
        counts[outcome.result] += 1
    return jsonify(selected=len(failures), **counts,
                   results=[{"failure_id": o.failure_id, "event_pk": o.event_pk,
                             "result": o.result} for o in outcomes])


# ---- incidents -----------------------------------------------------------------------

@api.operation("GET", "/incidents", summary="Incidents, newest first", role=Role.VIEWER,
               tags=("incidents",), query=schemas.IncidentsQuery)
def incidents(query: schemas.IncidentsQuery):
    """Filters: status (default active: open or acknowledged), severity. Pages by id:
    pass the previous answer's `next_before` as `before` (null on the last page)."""
    items = [i.to_dict() for i in alerts.list_incidents(
        status=query.status, severity=query.severity, before=query.before, limit=query.limit)]
    return jsonify(items=items,
                   next_before=items[-1]["id"] if len(items) == query.limit else None)


@api.operation("GET", "/incidents/<int:incident_id>", summary="An incident, its notices, "
               "every send and its signals", role=Role.VIEWER, tags=("incidents",),
               responses={200: "OK", 404: ""})
def incident(incident_id: int):
    return jsonify(alerts.incident_detail(incident_id))


@api.operation("POST", "/incidents/<int:incident_id>/ack", summary="Acknowledge an incident",
               role=Role.OPERATOR, tags=("incidents",), body=schemas.AcknowledgeIn,
               responses={200: "Acknowledged (`changed` false: it already was)", 404: "",
                          409: "Already resolved"})
def acknowledge_incident(incident_id: int, body: schemas.AcknowledgeIn):
    """Stops the incident's repeats and escalation; one audit row (`incident.acknowledge`)."""
    found, changed = alerts.acknowledge(incident_id, actor=_actor(), reason=body.reason)
    db.session.commit()
    return jsonify({**found.to_dict(), "changed": changed})


@api.operation("POST", "/incidents/<int:incident_id>/resolve", summary="Resolve an incident",
               role=Role.OPERATOR, tags=("incidents",), body=schemas.ResolveIn,
               responses={200: "Resolved (`changed` false: it already was)", 404: ""})
def resolve_incident(incident_id: int, body: schemas.ResolveIn):
    """Sends the resolved notice; one audit row (`incident.resolve`). If the condition
    still holds, the next evaluation opens a new incident."""
    found, changed = alerts.resolve(incident_id, actor=_actor(), reason=body.reason)
    db.session.commit()
    return jsonify({**found.to_dict(), "changed": changed})


# ---- ERP stock sync ------------------------------------------------------------------

@api.operation("GET", "/erp", summary="ERP stock sync: pause flag, last success, latest runs",
               role=Role.VIEWER, tags=("erp",), query=schemas.ErpStatusQuery)
def erp_status(query: schemas.ErpStatusQuery):
    """What `flask erp status` shows: `paused` and `pause` (who, when, why), `next_since`,
    `last_success`, and the latest `runs` (counts, unknown SKUs, error) newest first."""
    return jsonify(erp.status(limit=query.limit))


@api.operation("POST", "/erp/pause", summary="Pause the ERP stock sync", role=Role.OPERATOR,
               tags=("erp",), body=schemas.ErpPauseIn,
               responses={200: "Paused (`changed` false: it already was)"})
def erp_pause(body: schemas.ErpPauseIn):
    """Beat's runs and the retries of a failed one are skipped (and recorded as skipped)
    until resumed; a run already fetching finishes. One audit row (`erp.pause`)."""
    state, changed = erp.pause(actor=_actor(), reason=body.reason)
    db.session.commit()
    return jsonify({**state, "changed": changed})


@api.operation("POST", "/erp/resume", summary="Resume the ERP stock sync", role=Role.OPERATOR,
               tags=("erp",), body=schemas.ErpResumeIn,
               responses={200: "Resumed (`changed` false: it was not paused)"})
def erp_resume(body: schemas.ErpResumeIn):
    """The next run continues from the last successful run's mark. One audit row
    (`erp.resume`)."""
    state, changed = erp.resume(actor=_actor(), reason=body.reason)
    db.session.commit()
    return jsonify({**state, "changed": changed})


@api.operation("POST", "/erp/sync", summary="Sync stock from the ERP now (on the erp queue)",
               role=Role.OPERATOR, tags=("erp",),
               responses={202: "Enqueued: the erp workers run it (see GET /erp)",
                          409: "The sync is paused, or no ERP is configured"})
def erp_sync():
    """Queues one `erp.sync_stock` run for the erp workers, with their retries; its run
    appears in `GET /erp` with trigger `api` and this token's user as its actor."""
    if not current_app.config.get("ERP_API_URL"):
        raise ApiError(409, "erp_not_configured", "ERP_API_URL is not set: there is no ERP "
                       "to sync with")
    state = erp.pause_state()
    if state["paused"]:
        raise ApiError(409, "erp_paused", "the ERP sync is paused; resume it first",
                       details=state)
    erp.enqueue_sync(trigger="api", actor=_actor())
    db.session.commit()
    return jsonify(enqueued=True, queue="erp"), 202


# ---- users and tokens ----------------------------------------------------------------

@api.operation("GET", "/users", summary="Users", role=Role.ADMIN, tags=("access",))
def users():
    return jsonify(items=[u.to_dict() for u in accounts.list_users()])


@api.operation("POST", "/users", summary="Create a user", role=Role.ADMIN, tags=("access",),
               body=schemas.UserIn, responses={201: "Created", 409: "Email taken"})
def create_user(body: schemas.UserIn):
    user = accounts.create_user(email=body.email, name=body.name, role=body.role, actor=_actor())
    db.session.commit()
    return jsonify(user.to_dict()), 201


@api.operation("POST", "/users/<int:user_id>/deactivate", summary="Deactivate a user",
               role=Role.ADMIN, tags=("access",), body=schemas.DeactivateIn,
               responses={200: "Deactivated (or already inactive)", 404: ""})
def deactivate_user(user_id: int, body: schemas.DeactivateIn):
    user, changed = accounts.deactivate_user(user_ref=user_id, actor=_actor(), reason=body.reason)
    db.session.commit()
    return jsonify({**user.to_dict(), "changed": changed})


@api.operation("GET", "/tokens", summary="API tokens (never the tokens themselves)",
               role=Role.ADMIN, tags=("access",))
def tokens():
    now = utcnow()
    return jsonify(items=[t.to_dict(now) for t in accounts.list_tokens()])


@api.operation("POST", "/tokens", summary="Issue an API token (shown once)", role=Role.ADMIN,
               tags=("access",), body=schemas.TokenIn,
               responses={201: "Issued; `token` is shown only in this answer", 404: "",
                          409: "User deactivated"})
def create_token(body: schemas.TokenIn):
    expires = parse_duration(body.expires_in) if body.expires_in else None
    issued = accounts.create_token(user_ref=body.user, actor=_actor(), name=body.name,
                                   expires_in=expires)
    db.session.commit()
    return jsonify({**issued.token.to_dict(), "token": issued.secret}), 201


@api.operation("DELETE", "/tokens/<int:token_id>", summary="Revoke an API token",
               role=Role.ADMIN, tags=("access",), query=schemas.RevokeQuery,
               responses={200: "Revoked (or already revoked)", 404: ""})
def revoke_token(token_id: int, query: schemas.RevokeQuery):
    token, changed = accounts.revoke_token(token_ref=token_id, actor=_actor(),
                                           reason=query.reason)
    db.session.commit()
    return jsonify({**token.to_dict(), "changed": changed})
