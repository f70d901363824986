"""The admin API: who may do what, one error shape, and the OpenAPI document."""

from __future__ import annotations

import pytest
from openapi_spec_validator import validate
from sqlalchemy import text

from service.admin.api import api
from service.extensions import db
from tests.support.admin import caller

VIEWER_GET = "/api/admin/audit-logs"
OPERATOR_POST = ("/api/admin/products/1/stock-adjustments", {"delta": 1, "reason": "count"})
ADMIN_POST = ("/api/admin/users", {"email": "new@racine.test", "name": "New", "role": "viewer"})


@pytest.fixture
def callers(clean):
    return {role: caller(clean, role) for role in ("viewer", "operator", "admin")}


def _product(app, stock=5) -> int:
    with app.app_context():
        pid = db.session.execute(text(
            "INSERT INTO products (sku, name, price_cents, stock, updated_at)"
            " VALUES ('SKU-1', 'One', 100, :stock, now()) RETURNING id"), {"stock": stock}).scalar()
        db.session.commit()
        return pid


def _assert_error_shape(response, status: int, code: str):
    assert response.status_code == status, response.get_json()
    body = response.get_json()
    assert set(body) == {"error", "message", "details", "request_id"}
    assert body["error"] == code
    assert body["message"]
    assert body["request_id"] == response.headers["X-Request-ID"]


@pytest.mark.parametrize("header", [None, "Bearer", "Bearer rk_00000000_" + "x" * 43,
                                    "Basic dXNlcjpwYXNz", "Bearer not-a-token"])
def test_no_valid_token_is_401_with_a_challenge(clean, header):
    headers = {"Authorization": header} if header else {}
    response = clean.test_client().get(VIEWER_GET, headers=headers)
    _assert_error_shape(response, 401, "unauthorized")
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


def test_viewer_reads_but_may_not_act_or_manage(clean, callers):
    _product(clean)
    viewer = callers["viewer"]
    assert viewer.get(VIEWER_GET).status_code == 200
    _assert_error_shape(viewer.post(*OPERATOR_POST), 403, "forbidden")
    _assert_error_shape(viewer.post(*ADMIN_POST), 403, "forbidden")


def test_operator_acts_but_may_not_manage_users_or_tokens(clean, callers):
    _product(clean)
    operator = callers["operator"]
    assert operator.get(VIEWER_GET).status_code == 200
    assert operator.post(*OPERATOR_POST).status_code == 201
    _assert_error_shape(operator.post(*ADMIN_POST), 403, "forbidden")
    _assert_error_shape(operator.get("/api/admin/tokens"), 403, "forbidden")


def test_admin_may_do_everything(clean, callers):
    _product(clean)
    admin = callers["admin"]
    assert admin.get(VIEWER_GET).status_code == 200
    assert admin.post(*OPERATOR_POST).status_code == 201
    assert admin.post(*ADMIN_POST).status_code == 201


def test_revoked_expired_and_deactivated_tokens_stop_working(clean, callers):
    admin, viewer = callers["admin"], callers["viewer"]
    assert viewer.get(VIEWER_GET).status_code == 200
    token_id = admin.get("/api/admin/tokens").get_json()["items"][0]["id"]
    assert admin.delete(f"/api/admin/tokens/{token_id}?reason=leaked").status_code == 200
    _assert_error_shape(viewer.get(VIEWER_GET), 401, "unauthorized")

    operator = callers["operator"]
    assert admin.post(f"/api/admin/users/{operator.user_id}/deactivate",
                      json={"reason": "left"}).get_json()["changed"] is True
    _assert_error_shape(operator.get(VIEWER_GET), 401, "unauthorized")

    issued = admin.post("/api/admin/tokens", json={"user": admin.email, "expires_in": "1h"})
    assert issued.status_code == 201
    short = issued.get_json()
    with clean.app_context():
        db.session.execute(text("UPDATE api_tokens SET expires_at = now() - interval '1 s'"
                                " WHERE id = :id"), {"id": short["id"]})
        db.session.commit()
    response = clean.test_client().get(VIEWER_GET,
                                       headers={"Authorization": f"Bearer {short['token']}"})
    _assert_error_shape(response, 401, "unauthorized")


def test_tokens_are_stored_hashed_and_listed_by_prefix_only(clean, callers):
    admin = callers["admin"]
    with clean.app_context():
        stored = db.session.execute(text("SELECT prefix, token_hash FROM api_tokens")).all()
        db.session.remove()
    assert all(admin.token not in (prefix, digest) for prefix, digest in stored)
    listed = admin.get("/api/admin/tokens").get_json()["items"]
    assert all("token" not in item and "token_hash" not in item for item in listed)
    assert admin.token.startswith(next(i["prefix"] for i in listed if i["user_id"] == admin.user_id))


def test_bootstrap_token_acts_as_admin_only_until_an_admin_user_exists(clean, monkeypatch):
    monkeypatch.setitem(clean.config, "ADMIN_API_TOKENS", ["bootstrap-secret-0123456789"])
    client = clean.test_client()
    boot = {"Authorization": "Bearer bootstrap-secret-0123456789"}
    created = client.post("/api/admin/users", json={"email": "first@racine.test",
                                                    "name": "First", "role": "admin"},
                          headers=boot)
    assert created.status_code == 201
    _assert_error_shape(client.get(VIEWER_GET, headers=boot), 401, "unauthorized")
    with clean.app_context():
        actor = db.session.execute(text(
            "SELECT actor FROM audit_logs WHERE action = 'user.create'")).scalar()
        db.session.remove()
    assert actor == "bootstrap"


def test_errors_have_one_shape(clean, callers):
    admin = callers["admin"]
    _assert_error_shape(admin.get("/api/admin/no-such-thing"), 404, "not_found")
    _assert_error_shape(admin.put("/api/admin/audit-logs"), 405, "method_not_allowed")
    _assert_error_shape(admin.post("/api/admin/users", data="{not json",
                                   headers={"Content-Type": "application/json"}),
                        400, "invalid_json")
    bad = admin.post("/api/admin/users", json={"email": "x@y.z", "role": "root"})
    _assert_error_shape(bad, 400, "validation_failed")
    assert {d["field"] for d in bad.get_json()["details"]} == {"name", "role"}
    _assert_error_shape(admin.post("/api/admin/products/999/stock-adjustments",
                                   json={"delta": 1, "reason": "x"}), 404, "not_found")
    _assert_error_shape(admin.get("/api/admin/audit-logs?cursor=bogus"), 400, "validation_failed")
    _assert_error_shape(admin.get("/api/admin/audit-logs?limit=0"), 400, "validation_failed")


def test_openapi_document_is_valid_and_describes_every_admin_route(clean):
    response = clean.test_client().get("/api/admin/openapi.json")
    assert response.status_code == 200
    document = response.get_json()
    validate(document)
    served = set()
    for rule in clean.url_map.iter_rules():
        if rule.rule.startswith("/api/admin/"):
            path = rule.rule
            for converter in ("<int:", "<"):
                path = path.replace(converter, "{")
            path = path.replace(">", "}")
            for method in rule.methods - {"HEAD", "OPTIONS"}:
                served.add((path, method.lower()))
    documented = {(path, method) for path, ops in document["paths"].items() for method in ops}
    assert served == documented
    assert len(served) == len(api.operations)
    refunds = document["paths"].get("/api/admin/products/{product_id}/stock-adjustments")
    assert refunds["post"]["requestBody"]["content"]["application/json"]["schema"]["$ref"]
