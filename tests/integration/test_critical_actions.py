"""Coverage of the critical actions is a test, not a promise.

Every registered action is driven through each of its public entry points (admin API,
CLI, provider webhook) and must leave exactly one audit row for its entity, with before,
after and actor, and the IP and user agent when there was a request. A registered action
without a driver here, or a public service function without a marker, fails the suite.
"""

from __future__ import annotations

import importlib
import inspect
import json
import uuid
from datetime import timedelta

import pytest
from sqlalchemy import text

from scripts.erp_standin import ErpStandIn
from service.alerts import services as alerts_services  # registers the incident actions
from service.alerts.incidents import evaluate
from service.alerts.models import Incident
from service.audit import registry
from service.audit.actor import Actor
from service.audit.partitions import Month, create_partition_sql
from service.clock import utcnow
from service.erp import services as erp_services  # registers the ERP actions
from service.extensions import db
from service.orders import services as orders_services
from service.webhooks import handlers
from service.webhooks.models import WebhookEvent, WebhookFailure
from tests.support.admin import caller
from tests.support.audit import audit_writes_refused
from tests.support.db import rows, scalar
from tests.support.events import (
    charge_refunded,
    paypal_event,
    paypal_headers,
    process_stored_event,
    stripe_event,
    stripe_headers,
)
from tests.support.providers import paid_order

UA = "racine-tests/1.0"


def _cli(app, *args):
    with app.app_context():
        result = app.test_cli_runner().invoke(args=list(args))
    assert result.exit_code == 0, result.output
    return result


def _product(app) -> int:
    with app.app_context():
        pid = db.session.execute(text(
            "INSERT INTO products (sku, name, price_cents, stock, updated_at)"
            " VALUES ('SKU-COV', 'Cov', 100, 10, now()) RETURNING id")).scalar()
        db.session.commit()
    return pid


def _customer_with_methods(app) -> tuple[int, int, int]:
    with app.app_context():
        cid = db.session.execute(text(
            "INSERT INTO customers (email, name, created_at) VALUES ('c@x.test', 'C', now())"
            " RETURNING id")).scalar()
        ids = [db.session.execute(text(
            "INSERT INTO payment_methods (customer_id, provider, provider_ref, is_default,"
            " created_at) VALUES (:c, 'stripe', :ref, :d, now()) RETURNING id"),
            {"c": cid, "ref": f"pm_{n}", "d": n == 0}).scalar() for n in range(2)]
        db.session.commit()
    return cid, ids[0], ids[1]


def _failed_event(app) -> tuple[int, int]:
    with app.app_context():
        event = WebhookEvent(provider="stripe", event_id=f"evt_{uuid.uuid4().hex}",
                             event_type="payment_intent.succeeded", payload="{}",
                             status="failed", attempts=3)
        db.session.add(event)
        db.session.flush()
        failure = WebhookFailure(event_pk=event.id, provider="stripe", event_type=event.event_type,
                                 payload="{}", error_message="boom", retry_count=0)
        db.session.add(failure)
        db.session.commit()
        return event.id, failure.id


def _process_last_event(app):
    with app.app_context():
        pk = scalar("SELECT max(id) FROM webhook_events")
        assert process_stored_event(pk) == "processed"


# Each driver performs the action once through one entry point and returns
# (entity_type, entity_id, expected actor prefix, through an HTTP request?).

def api_refund(app, env):
    order_id, _ = paid_order(app)
    who = caller(app, "operator", email="refunder@x.test")
    response = who.post(f"/api/admin/orders/{order_id}/refunds",
                        json={"amount_cents": 400, "reason": "r"},
                        headers={"Idempotency-Key": uuid.uuid4().hex})
    assert response.status_code == 201, response.get_json()
    return "order", order_id, "user:refunder@x.test", True


def _deliver_stripe(app, event_type, obj):
    body, _ = stripe_event(event_type, obj)
    assert app.test_client().post("/webhooks/stripe", data=body,
                                  headers=stripe_headers(body)).status_code == 200
    _process_last_event(app)


def _deliver_paypal(app, env, event_type, resource):
    body, _ = paypal_event(event_type, resource)
    headers = paypal_headers(env["paypal_key"], body)
    assert app.test_client().post("/webhooks/paypal", data=body, headers=headers).status_code == 200
    _process_last_event(app)


def stripe_webhook_refund(app, env):
    order_id, intent = paid_order(app)
    _deliver_stripe(app, "charge.refunded", charge_refunded(
        order_id, intent_id=intent, amount=1000, refunds=[("re_webhook_1", 1000)]))
    return "order", order_id, "system:stripe", False


def _stripe_refund(order_id, intent, refund_id, status, amount=400):
    return {"id": refund_id, "object": "refund", "amount": amount, "currency": "eur",
            "status": status, "payment_intent": intent, "metadata": {"order_id": str(order_id)}}


def _stripe_refund_event(event_type, status):
    def drive(app, env):
        order_id, intent = paid_order(app)
        _deliver_stripe(app, event_type, _stripe_refund(order_id, intent, f"re_{uuid.uuid4().hex}",
                                                        status))
        return "order", order_id, "system:stripe", False
    return drive


def stripe_refund_failed(app, env):
    """A refund that had succeeded fails (the bank returned it): its money comes back."""
    order_id, intent = paid_order(app)
    with app.app_context():
        db.session.execute(text(
            "INSERT INTO refunds (order_id, provider, provider_refund_id, provider_payment_id,"
            " amount_cents, currency, status, created_at)"
            " VALUES (:o, 'stripe', 're_bounced', :p, 400, 'EUR', 'succeeded', now())"),
            {"o": order_id, "p": intent})
        db.session.execute(text("UPDATE orders SET refunded_cents = 400,"
                                " status = 'partially_refunded' WHERE id = :o"), {"o": order_id})
        db.session.commit()
    _deliver_stripe(app, "refund.failed", _stripe_refund(order_id, intent, "re_bounced", "failed"))
    with app.app_context():
        assert scalar("SELECT refunded_cents FROM orders WHERE id = :o", o=order_id) == 0
    return "order", order_id, "system:stripe", False


def _paypal_refund_event(event_type):
    def drive(app, env):
        order_id, capture = paid_order(app, provider="paypal")
        _deliver_paypal(app, env, event_type, {
            "id": f"PP{uuid.uuid4().hex[:12].upper()}", "status": "COMPLETED",
            "amount": {"value": "2.50", "currency_code": "EUR"}, "custom_id": str(order_id),
            "links": [{"rel": "up",
                       "href": f"https://api.paypal.com/v2/payments/captures/{capture}"}]})
        return "order", order_id, "system:paypal", False
    return drive


def api_stock(app, env):
    pid = _product(app)
    who = caller(app, "operator", email="stock@x.test")
    response = who.post(f"/api/admin/products/{pid}/stock-adjustments",
                        json={"delta": -3, "reason": "broken"})
    assert response.status_code == 201, response.get_json()
    return "product", pid, "user:stock@x.test", True


def cli_stock(app, env):
    pid = _product(app)
    _cli(app, "stock", "adjust", "SKU-COV", "-4", "--reason", "recount")
    return "product", pid, "cli:", False


def _payment_method_api(change_for):
    def drive(app, env):
        cid, default_id, other_id = _customer_with_methods(app)
        who = caller(app, "operator", email="pm@x.test")
        response = who.put(f"/api/admin/customers/{cid}/payment-method",
                           json=change_for(default_id, other_id))
        assert response.status_code == 200, response.get_json()
        return "customer", cid, "user:pm@x.test", True
    return drive


def api_retry(app, env):
    event_pk, failure_id = _failed_event(app)
    who = caller(app, "operator", email="retry@x.test")
    response = who.post("/api/admin/webhooks/failures/retry", json={"ids": [failure_id]})
    assert response.status_code == 200, response.get_json()
    return "webhook_event", event_pk, "user:retry@x.test", True


def cli_retry(app, env):
    event_pk, failure_id = _failed_event(app)
    _cli(app, "webhooks", "retry", "--id", str(failure_id), "--reason", "fixed")
    return "webhook_event", event_pk, "cli:", False


def api_user_create(app, env):
    who = caller(app, "admin", email="boss@x.test")
    response = who.post("/api/admin/users", json={"email": "u@x.test", "name": "U",
                                                  "role": "viewer"})
    assert response.status_code == 201
    return "user", response.get_json()["id"], "user:boss@x.test", True


def cli_user_create(app, env):
    result = _cli(app, "users", "create", "--email", "v@x.test", "--name", "V", "--json")
    return "user", json.loads(result.output)["id"], "cli:", False


def api_user_deactivate(app, env):
    who = caller(app, "admin", email="boss@x.test")
    target = caller(app, "viewer", email="gone@x.test")
    response = who.post(f"/api/admin/users/{target.user_id}/deactivate", json={})
    assert response.status_code == 200
    return "user", target.user_id, "user:boss@x.test", True


def cli_user_deactivate(app, env):
    target = caller(app, "viewer", email="gone@x.test")
    _cli(app, "users", "deactivate", "gone@x.test")
    return "user", target.user_id, "cli:", False


def api_token_create(app, env):
    who = caller(app, "admin", email="boss@x.test")
    response = who.post("/api/admin/tokens", json={"user": "boss@x.test", "expires_in": "30d"})
    assert response.status_code == 201
    return "api_token", response.get_json()["id"], "user:boss@x.test", True


def cli_token_create(app, env):
    caller(app, "viewer", email="t@x.test")
    result = _cli(app, "tokens", "create", "--user", "t@x.test", "--expires", "30d", "--json")
    return "api_token", json.loads(result.output)["id"], "cli:", False


def api_token_revoke(app, env):
    who = caller(app, "admin", email="boss@x.test")
    token_id = who.post("/api/admin/tokens", json={"user": "boss@x.test"}).get_json()["id"]
    assert who.delete(f"/api/admin/tokens/{token_id}").status_code == 200
    return "api_token", token_id, "user:boss@x.test", True


def cli_token_revoke(app, env):
    target = caller(app, "viewer", email="t@x.test")
    with app.app_context():
        token_id = scalar("SELECT id FROM api_tokens WHERE user_id = :u", u=target.user_id)
    _cli(app, "tokens", "revoke", str(token_id))
    return "api_token", token_id, "cli:", False


def cli_archive(app, env):
    month = Month(2001, 1)
    with app.app_context():
        for statement in create_partition_sql(month):
            db.session.execute(text(statement))
        db.session.commit()
    _cli(app, "audit", "archive", "--before", "2001-02", "--dir", str(env["tmp_path"]))
    return "audit_partition", "2001-01", "cli:", False


def _open_incident(app) -> int:
    with app.app_context():
        now = utcnow()
        incident = Incident(key=f"coverage:{uuid.uuid4().hex[:8]}", rule="coverage", subject="",
                            severity="P1", title="Coverage", details="{}", runbook="",
                            status="open", condition_since=now, opened_at=now, last_seen_at=now)
        db.session.add(incident)
        db.session.commit()
        return incident.id


def _incident_api(verb, body):
    def drive(app, env):
        incident_id = _open_incident(app)
        who = caller(app, "operator", email="oncall@x.test")
        response = who.post(f"/api/admin/incidents/{incident_id}/{verb}", json=body)
        assert response.status_code == 200, response.get_json()
        assert response.get_json()["changed"] is True
        return "incident", incident_id, "user:oncall@x.test", True
    return drive


def _incident_cli(*args):
    def drive(app, env):
        incident_id = _open_incident(app)
        _cli(app, "incidents", args[0], str(incident_id), *args[1:])
        return "incident", incident_id, "cli:", False
    return drive


def evaluation_resolve(app, env):
    """A P3 signal opens its incident at once; an hour later, with no further signal, the
    condition is clear and (P3 waits 0 s clear) the evaluation resolves it."""
    t0 = utcnow()
    with app.app_context():
        alerts_services.raise_signal(severity="P3", kind="coverage_probe", source="tests")
        db.session.commit()
        assert evaluate(now=t0 + timedelta(seconds=1)).opened
        db.session.commit()
        report = evaluate(now=t0 + timedelta(hours=2))
        db.session.commit()
        assert len(report.resolved) == 1, report
        return "incident", report.resolved[0], "system:alerts", False


def cli_runbook_execute(app, env):
    """An execute-mode run on empty tables: nothing to fix, but the run is audited."""
    app.config["RUNBOOK_OUTPUT_DIR"] = str(env["tmp_path"] / "runs")
    result = _cli(app, "runbook", "run", "webhook_loop_detected", "--execute", "--json")
    return "runbook_run", json.loads(result.output)["run_id"], "cli:", False


def cli_workers_scale(app, env):
    from tests.support.supervisor import Supervisor

    supervisor = Supervisor(env["tmp_path"] / "supervisor").start()
    try:
        saved = {key: app.config[key] for key in supervisor.settings()}
        app.config.update(supervisor.settings())
        try:
            _cli(app, "workers", "scale", "erp", "1", "--reason", "coverage")
        finally:
            app.config.update(saved)
    finally:
        supervisor.stop()
    return "worker_pool", "erp", "cli:", False


def erp_sync_stock(app, env):
    """The ERP sync sets a product's stock to the ERP's count (a real local ERP)."""
    pid = _product(app)
    server = ErpStandIn(token="coverage-token").start()
    server.catalogue.set("SKU-COV", 4)
    saved = {key: app.config[key] for key in ("ERP_API_URL", "ERP_API_TOKEN")}
    app.config.update(ERP_API_URL=server.url, ERP_API_TOKEN="coverage-token")
    try:
        with app.app_context():
            outcome = erp_services.sync_now(trigger="cli", actor=Actor.cli())
            assert (outcome.status, outcome.run["applied"]) == ("succeeded", 1), outcome.run
    finally:
        app.config.update(saved)
        server.stop()
    return "product", pid, "system:erp", False


def _erp_api(verb, body, *, paused_first=False):
    def drive(app, env):
        who = caller(app, "operator", email="erp@x.test")
        if paused_first:
            assert who.post("/api/admin/erp/pause", json={"reason": "first"}).status_code == 200
        response = who.post(f"/api/admin/erp/{verb}", json=body)
        assert response.status_code == 200 and response.get_json()["changed"] is True
        return "erp_sync", "stock", "user:erp@x.test", True
    return drive


def _erp_cli(*args, paused_first=False):
    def drive(app, env):
        if paused_first:
            _cli(app, "erp", "pause", "--reason", "first")
        _cli(app, "erp", *args)
        return "erp_sync", "stock", "cli:", False
    return drive


DRIVERS = {
    "order.refund": {
        "POST /api/admin/orders/<id>/refunds": api_refund,
        "webhook stripe charge.refunded": stripe_webhook_refund,
        "webhook stripe charge.refund.updated": _stripe_refund_event("charge.refund.updated",
                                                                     "succeeded"),
        "webhook stripe refund.created": _stripe_refund_event("refund.created", "pending"),
        "webhook stripe refund.updated": _stripe_refund_event("refund.updated", "succeeded"),
        "webhook stripe refund.failed": stripe_refund_failed,
        "webhook paypal PAYMENT.CAPTURE.REFUNDED": _paypal_refund_event("PAYMENT.CAPTURE.REFUNDED"),
        "webhook paypal PAYMENT.CAPTURE.REVERSED": _paypal_refund_event("PAYMENT.CAPTURE.REVERSED"),
    },
    "product.stock_adjust": {"POST /api/admin/products/<id>/stock-adjustments": api_stock,
                             "flask stock adjust": cli_stock,
                             "erp.sync_stock (system:erp)": erp_sync_stock},
    "erp.pause": {"POST /api/admin/erp/pause": _erp_api("pause", {"reason": "ERP upgrade"}),
                  "flask erp pause": _erp_cli("pause", "--reason", "ERP upgrade")},
    "erp.resume": {"POST /api/admin/erp/resume": _erp_api("resume", {}, paused_first=True),
                   "flask erp resume": _erp_cli("resume", paused_first=True)},
    "payment_method.add": {"PUT /api/admin/customers/<id>/payment-method": _payment_method_api(
        lambda d, o: {"action": "add", "provider": "paypal", "provider_ref": "B-1",
                      "make_default": True})},
    "payment_method.set_default": {
        "PUT /api/admin/customers/<id>/payment-method": _payment_method_api(
            lambda d, o: {"action": "set_default", "payment_method_id": o})},
    "payment_method.remove": {"PUT /api/admin/customers/<id>/payment-method": _payment_method_api(
        lambda d, o: {"action": "remove", "payment_method_id": o, "reason": "expired"})},
    "webhook.retry": {"flask webhooks retry": cli_retry,
                      "POST /api/admin/webhooks/failures/retry": api_retry},
    "user.create": {"flask users create": cli_user_create, "POST /api/admin/users": api_user_create},
    "user.deactivate": {"flask users deactivate": cli_user_deactivate,
                        "POST /api/admin/users/<id>/deactivate": api_user_deactivate},
    "token.create": {"flask tokens create": cli_token_create, "POST /api/admin/tokens": api_token_create},
    "token.revoke": {"flask tokens revoke": cli_token_revoke,
                     "DELETE /api/admin/tokens/<id>": api_token_revoke},
    "audit.archive": {"flask audit archive": cli_archive},
    "runbook.execute": {"flask runbook run --execute": cli_runbook_execute},
    "workers.scale": {"flask workers scale": cli_workers_scale},
    "incident.acknowledge": {
        "POST /api/admin/incidents/<id>/ack": _incident_api("ack", {"reason": "looking"}),
        "flask incidents ack": _incident_cli("ack", "--reason", "looking")},
    "incident.resolve": {
        "POST /api/admin/incidents/<id>/resolve": _incident_api("resolve", {"reason": "fixed"}),
        "flask incidents resolve": _incident_cli("resolve", "--reason", "fixed"),
        "alerts evaluation (condition clear)": evaluation_resolve},
}

CASES = [(action, entry) for action, spec in registry.actions().items()
         for entry in spec.entry_points]


def test_every_registered_action_and_entry_point_has_a_driver():
    missing = [f"{action} via {entry}" for action, entry in CASES
               if entry not in DRIVERS.get(action, {})]
    assert not missing, f"critical actions without a coverage driver: {missing}"


@pytest.mark.parametrize(("action", "entry"), CASES, ids=[f"{a}|{e}" for a, e in CASES])
def test_each_critical_action_leaves_exactly_one_complete_audit_row(
        clean, providers, paypal_signing, tmp_path, action, entry):
    driver = DRIVERS[action][entry]
    entity_type, entity_id, actor, via_request = driver(
        clean, {"paypal_key": paypal_signing[0], "tmp_path": tmp_path})
    with clean.app_context():
        logs = rows("SELECT * FROM audit_logs WHERE action = :a AND entity_type = :t"
                    " AND entity_id = :i", a=action, t=entity_type, i=str(entity_id))
    assert len(logs) == 1, logs
    log = logs[0]
    meta = json.loads(log["metadata"])
    assert "before" in meta and "after" in meta
    assert meta["before"] is not None or meta["after"] is not None
    assert meta["before"] != meta["after"]
    assert log["actor"].startswith(actor)
    if via_request:
        assert (log["ip_address"], log["user_agent"]) == ("127.0.0.1", UA)
        assert log["request_id"] and log["token_prefix"] and log["user_id"]
    else:
        assert log["ip_address"] is None


def _public_functions(module):
    return [(name, func) for name, func in inspect.getmembers(module, inspect.isfunction)
            if func.__module__ == module.__name__ and not name.startswith("_")]


@pytest.mark.parametrize("module_name", registry.AUDITED_MODULES)
def test_every_public_service_function_is_marked_critical_or_not(module_name):
    module = importlib.import_module(module_name)
    unmarked = [name for name, func in _public_functions(module) if registry.marker(func) is None]
    assert not unmarked, (f"{module_name}: mark these @critical(action) or "
                          f"@not_critical(why): {unmarked}")


def test_every_webhook_that_calls_a_critical_service_is_an_entry_point_of_its_action():
    """A provider event wired to a critical orders service (a new refund event type, say)
    must be listed among its action's entry points, and so be driven above."""
    critical_functions = {name: registry.marker(func).split(":", 1)[1]
                          for name, func in _public_functions(orders_services)
                          if registry.marker(func).startswith("critical:")}
    assert "apply_refunds" in critical_functions
    unlisted = []
    for provider, event_type in handlers.registered():
        source = inspect.getsource(handlers.lookup(provider, event_type))
        for name, action in critical_functions.items():
            entry = f"webhook {provider} {event_type}"
            if f"orders.{name}(" in source and entry not in registry.action(action).entry_points:
                unlisted.append(f"{action} via {entry}")
    assert not unlisted, f"webhook entry points missing from the registry: {unlisted}"


def test_functions_marked_critical_name_registered_actions():
    for module_name in registry.AUDITED_MODULES:
        for name, func in _public_functions(importlib.import_module(module_name)):
            mark = registry.marker(func)
            if mark.startswith("critical:"):
                assert registry.action(mark.split(":", 1)[1]), f"{module_name}.{name}"


def test_a_change_whose_audit_row_cannot_be_written_is_rolled_back(clean):
    pid = _product(clean)
    who = caller(clean, "operator", email="stock@x.test")
    with audit_writes_refused(clean):
        response = who.post(f"/api/admin/products/{pid}/stock-adjustments",
                            json={"delta": 5, "reason": "delivery"})
    assert response.status_code == 500
    assert response.get_json()["error"] == "internal_error"
    with clean.app_context():
        assert scalar("SELECT stock FROM products WHERE id = :id", id=pid) == 10
        assert scalar("SELECT count(*) FROM stock_adjustments") == 0
