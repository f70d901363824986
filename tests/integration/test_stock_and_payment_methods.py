"""Stock adjustments and payment-method changes: their rules, and a chain that never forks
when many writers audit at once."""

from __future__ import annotations

import json
import threading
from datetime import datetime

from sqlalchemy import text

from service.audit.actor import Actor
from service.audit.partitions import Month, ensure_partitions, existing
from service.audit.tasks import create_partitions
from service.audit.verify import verify_chain
from service.extensions import db
from service.orders import services
from tests.support.admin import caller
from tests.support.db import rows, scalar


def _product(app, stock=10, sku="SKU-S") -> int:
    with app.app_context():
        pid = db.session.execute(text(
            "INSERT INTO products (sku, name, price_cents, stock, updated_at)"
            " VALUES (:sku, 'S', 100, :stock, now()) RETURNING id"), {"sku": sku, "stock": stock}
        ).scalar()
        db.session.commit()
    return pid


def test_stock_never_goes_below_zero_through_the_api_or_the_cli(clean):
    pid = _product(clean, stock=3)
    operator = caller(clean, "operator")
    refused = operator.post(f"/api/admin/products/{pid}/stock-adjustments",
                            json={"delta": -4, "reason": "shrinkage"})
    assert (refused.status_code, refused.get_json()["error"]) == (422, "insufficient_stock")
    with clean.app_context():
        result = clean.test_cli_runner().invoke(args=["stock", "adjust", "SKU-S", "-4",
                                                      "--reason", "shrinkage"])
    assert result.exit_code == 1 and "below zero" in result.output
    assert operator.post(f"/api/admin/products/{pid}/stock-adjustments",
                         json={"delta": -3, "reason": "sold out"}).status_code == 201
    zero = operator.post(f"/api/admin/products/{pid}/stock-adjustments",
                         json={"delta": 0, "reason": "nothing"})
    assert zero.status_code == 400
    with clean.app_context():
        assert scalar("SELECT stock FROM products WHERE id = :id", id=pid) == 0
        assert scalar("SELECT count(*) FROM audit_logs WHERE action = 'product.stock_adjust'") == 1


def test_a_stock_adjustment_with_a_key_applies_once(clean):
    pid = _product(clean)
    operator = caller(clean, "operator")
    path = f"/api/admin/products/{pid}/stock-adjustments"
    headers = {"Idempotency-Key": "erp-sync-42"}
    first = operator.post(path, json={"delta": 5, "reason": "delivery"}, headers=headers)
    again = operator.post(path, json={"delta": 5, "reason": "delivery"}, headers=headers)
    other = operator.post(path, json={"delta": 6, "reason": "delivery"}, headers=headers)
    assert (first.status_code, again.status_code, other.status_code) == (201, 200, 409)
    assert again.get_json() == first.get_json()
    with clean.app_context():
        assert scalar("SELECT stock FROM products WHERE id = :id", id=pid) == 15
        assert scalar("SELECT count(*) FROM audit_logs WHERE action = 'product.stock_adjust'") == 1


def test_payment_method_changes_keep_one_default_and_record_before_and_after(clean):
    with clean.app_context():
        cid = db.session.execute(text(
            "INSERT INTO customers (email, name, created_at) VALUES ('p@x.test', 'P', now())"
            " RETURNING id")).scalar()
        db.session.commit()
    operator = caller(clean, "operator")
    path = f"/api/admin/customers/{cid}/payment-method"
    first = operator.put(path, json={"action": "add", "provider": "stripe",
                                     "provider_ref": "pm_1", "brand": "visa", "last4": "4242"})
    assert first.status_code == 200
    assert [m["is_default"] for m in first.get_json()["payment_methods"]] == [True]
    second = operator.put(path, json={"action": "add", "provider": "stripe",
                                      "provider_ref": "pm_2", "last4": "0005"}).get_json()
    new_id = second["payment_method_id"]
    old_id = first.get_json()["payment_method_id"]
    refused = operator.put(path, json={"action": "remove", "payment_method_id": old_id})
    assert (refused.status_code, refused.get_json()["error"]) == (409, "conflict")
    assert operator.put(path, json={"action": "set_default",
                                    "payment_method_id": new_id}).status_code == 200
    removed = operator.put(path, json={"action": "remove", "payment_method_id": old_id})
    assert [m["id"] for m in removed.get_json()["payment_methods"]] == [new_id]
    bad = operator.put(path, json={"action": "add", "provider": "stripe", "provider_ref": "x",
                                   "last4": "12"})
    assert bad.status_code == 400
    assert operator.put("/api/admin/customers/999/payment-method",
                        json={"action": "remove", "payment_method_id": 1}).status_code == 404
    with clean.app_context():
        logs = rows("SELECT action, metadata FROM audit_logs WHERE entity_type = 'customer'"
                    " ORDER BY id")
    assert [log["action"] for log in logs] == ["payment_method.add", "payment_method.add",
                                               "payment_method.set_default",
                                               "payment_method.remove"]
    last = json.loads(logs[-1]["metadata"])
    assert len(last["before"]["payment_methods"]) == 2
    assert len(last["after"]["payment_methods"]) == 1


def test_concurrent_writers_never_fork_the_chain(clean):
    product_ids = [_product(clean, sku=f"SKU-{n}") for n in range(4)]
    errors = []

    def writer(pid):
        try:
            with clean.app_context():
                for n in range(10):
                    services.adjust_stock(product_id=pid, delta=1 if n % 2 == 0 else -1,
                                          reason="race", actor=Actor.system("test"))
                    db.session.commit()
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(pid,)) for pid in product_ids]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    with clean.app_context():
        assert [r["id"] for r in rows("SELECT id FROM audit_logs ORDER BY id")] == \
            list(range(1, 41))
        report = verify_chain()
        db.session.remove()
    assert (report.ok, report.checked) == (True, 40)


def test_partitions_are_created_ahead_by_the_beat_task(clean, monkeypatch):
    with clean.app_context():
        created = ensure_partitions(months_ahead=6, now=datetime(2031, 11, 5))
        db.session.commit()
        assert created[0] == "audit_logs_y2031m11" and created[-1] == "audit_logs_y2032m05"
        assert ensure_partitions(months_ahead=6, now=datetime(2031, 11, 5)) == []
        db.session.commit()
        monkeypatch.setitem(clean.config, "AUDIT_PARTITIONS_AHEAD", 5)
        create_partitions()  # through the base task, which commits its run
        current = Month.of(datetime.utcnow())
        assert {current.plus(n) for n in range(6)} <= set(existing())
        for name in created:
            db.session.execute(text(f"DROP TABLE {name}"))
        db.session.commit()


def test_the_audit_row_names_the_client_behind_a_trusted_proxy_and_only_then(
        clean, build_app, monkeypatch):
    """Behind TRUSTED_PROXIES reverse proxies the audit row keeps the client's address
    from X-Forwarded-For; without that setting a caller cannot choose its own IP."""
    pid = _product(clean)
    forwarded = {"X-Forwarded-For": "203.0.113.9"}
    path = f"/api/admin/products/{pid}/stock-adjustments"
    direct = caller(clean, "operator")
    assert direct.post(path, json={"delta": 1, "reason": "count"},
                       headers=forwarded).status_code == 201
    monkeypatch.setenv("TRUSTED_PROXIES", "1")
    proxied = caller(build_app({}), "operator", email="proxied@racine.test")
    assert proxied.post(path, json={"delta": 1, "reason": "count"},
                        headers=forwarded).status_code == 201
    with clean.app_context():
        ips = [r["ip_address"] for r in rows(
            "SELECT ip_address FROM audit_logs WHERE action = 'product.stock_adjust' ORDER BY id")]
    assert ips == ["127.0.0.1", "203.0.113.9"]
