"""The ERP endpoints of the admin API: viewers read the status, operators pause, resume
and sync (each pause or resume audited with the caller), errors in the one shape, and
the OpenAPI entries; queue health shows the erp queue paused."""

from __future__ import annotations

import json

import pytest

from tests.support.admin import caller
from tests.support.db import rows


@pytest.fixture
def callers(erp_app):
    """A viewer and an operator; the test runs in an app context (to read the tables)."""
    found = {role: caller(erp_app, role, email=f"{role}@erp.test")
             for role in ("viewer", "operator")}
    with erp_app.app_context():
        yield found


def _error(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.get_json()
    body = response.get_json()
    assert set(body) == {"error", "message", "details", "request_id"} and body["error"] == code
    return body


def test_viewers_read_the_status_but_may_not_pause_resume_or_sync(erp_app, callers):
    viewer = callers["viewer"]

    status = viewer.get("/api/admin/erp?limit=5")

    assert status.status_code == 200
    body = status.get_json()
    assert (body["configured"], body["paused"], body["runs"]) == (True, False, [])
    _error(viewer.post("/api/admin/erp/pause", json={"reason": "x"}), 403, "forbidden")
    _error(viewer.post("/api/admin/erp/resume", json={}), 403, "forbidden")
    _error(viewer.post("/api/admin/erp/sync"), 403, "forbidden")
    _error(erp_app.test_client().get("/api/admin/erp"), 401, "unauthorized")


def test_operators_pause_and_resume_with_an_audit_row_each(erp_app, callers):
    operator = callers["operator"]

    paused = operator.post("/api/admin/erp/pause", json={"reason": "ERP upgrade"})
    again = operator.post("/api/admin/erp/pause", json={"reason": "still"})
    status = operator.get("/api/admin/erp").get_json()
    resumed = operator.post("/api/admin/erp/resume", json={"reason": "done"})

    assert paused.status_code == 200 and paused.get_json()["changed"] is True
    assert again.get_json()["changed"] is False
    assert status["paused"] is True and status["pause"]["paused_by"] == "user:operator@erp.test"
    assert status["pause"]["reason"] == "ERP upgrade"
    assert resumed.get_json() | {"changed": True} == resumed.get_json()
    assert resumed.get_json()["paused"] is False
    logs = rows("SELECT action, actor, reason, ip_address FROM audit_logs"
                " WHERE action LIKE 'erp.%' ORDER BY id")
    assert [(r["action"], r["actor"], r["reason"]) for r in logs] == [
        ("erp.pause", "user:operator@erp.test", "ERP upgrade"),
        ("erp.resume", "user:operator@erp.test", "done")]
    assert logs[0]["ip_address"] == "127.0.0.1"


def test_a_pause_needs_a_reason(callers):
    body = _error(callers["operator"].post("/api/admin/erp/pause", json={"reason": "  "}),
                  400, "validation_failed")

    assert body["details"][0]["field"] == "reason"


def test_sync_is_enqueued_for_the_erp_queue(callers):
    response = callers["operator"].post("/api/admin/erp/sync")

    assert response.status_code == 202 and response.get_json() == {"enqueued": True,
                                                                   "queue": "erp"}
    [job] = rows("SELECT task_name, queue, args FROM outbox_jobs")
    assert (job["task_name"], job["queue"]) == ("erp.sync_stock", "erp")
    assert json.loads(job["args"]) == ["api", "user:operator@erp.test"]


def test_sync_is_refused_while_paused_or_without_an_erp(erp_app, callers, monkeypatch):
    operator = callers["operator"]
    operator.post("/api/admin/erp/pause", json={"reason": "maintenance"})

    paused = _error(operator.post("/api/admin/erp/sync"), 409, "erp_paused")
    assert paused["details"]["reason"] == "maintenance"

    monkeypatch.setitem(erp_app.config, "ERP_API_URL", None)
    _error(operator.post("/api/admin/erp/sync"), 409, "erp_not_configured")
    assert rows("SELECT id FROM outbox_jobs") == []


def test_the_openapi_document_describes_the_erp_endpoints(erp_app):
    paths = erp_app.test_client().get("/api/admin/openapi.json").get_json()["paths"]

    assert set(paths["/api/admin/erp"]) == {"get"}
    assert paths["/api/admin/erp/pause"]["post"]["requestBody"]
    assert {"202", "401", "403", "409"} <= set(paths["/api/admin/erp/sync"]["post"]["responses"])
    assert paths["/api/admin/erp/sync"]["post"]["tags"] == ["erp"]


def test_queue_health_shows_the_erp_queue_paused(erp_app, callers):
    callers["operator"].post("/api/admin/erp/pause", json={"reason": "ERP upgrade"})

    report = callers["viewer"].get("/api/admin/queue/health").get_json()
    with erp_app.app_context():
        text = erp_app.test_cli_runner().invoke(args=["queue", "health"])

    by_name = {q["name"]: q for q in report["queues"]}
    assert by_name["erp"]["paused"] is True
    assert by_name["erp"]["pause"]["reason"] == "ERP upgrade"
    assert by_name["erp"]["status"] == "ok"  # paused on purpose: not a fault
    assert not any(q["paused"] for name, q in by_name.items() if name != "erp")
    assert "ok, paused" in text.output
    assert "erp: PAUSED since" in text.output and "ERP upgrade" in text.output
