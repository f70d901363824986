"""Responders' tools: `flask incidents list|show|ack|resolve`, `flask alerts
evaluate|rules`, the admin API for incidents, and the `/metrics` gauges."""

from __future__ import annotations

import json

import pytest

from service.clock import utcnow
from tests.support.admin import caller
from tests.support.alerting import add_events, evaluate_at, incidents, minutes, notices, policy_app
from tests.support.audit import audit_writes_refused
from tests.support.db import rows


@pytest.fixture
def policy(build_app, clean, monkeypatch):
    yield from policy_app(build_app, monkeypatch)


@pytest.fixture
def operator(policy):
    return caller(policy, "operator", email="oncall@racine.test")


@pytest.fixture
def p0(policy):
    """An open P0 (the last five payment events failed) and its opening notice."""
    t0 = utcnow()
    add_events(5, status="failed", received_at=t0)
    evaluate_at(t0)
    return incidents()[0]


def _cli(app, *args):
    return app.test_cli_runner().invoke(args=list(args))


# -- CLI ---------------------------------------------------------------------------------

def test_every_alerts_and_incidents_command_has_help(policy):
    for args in (["alerts"], ["alerts", "evaluate"], ["alerts", "test"], ["alerts", "rules"],
                 ["incidents"], ["incidents", "list"], ["incidents", "show"], ["incidents", "ack"],
                 ["incidents", "resolve"], ["incidents", "report"]):
        result = _cli(policy, *args, "--help")
        assert result.exit_code == 0 and "Usage:" in result.output, args


def test_evaluate_from_the_cli_reports_what_it_did_and_exits_2_with_a_p0_open(policy):
    add_events(5, status="failed", received_at=utcnow())

    result = _cli(policy, "alerts", "evaluate", "--json")

    assert result.exit_code == 2
    report = json.loads(result.output)
    assert report["firing"] == ["payment_failure_streak"]
    assert len(report["opened"]) == 1 and report["active"] == {"P0": 1}


def test_evaluate_exits_0_when_nothing_is_wrong(policy):
    result = _cli(policy, "alerts", "evaluate")

    assert result.exit_code == 0, result.output
    assert "active incidents: none" in result.output


def test_the_rules_command_lists_each_rule_with_its_severity_and_runbook(policy):
    rules = {r["rule"]: r for r in json.loads(_cli(policy, "alerts", "rules", "--json").output)}

    assert {name: (r["severity"], r["runbook"]) for name, r in rules.items()} == {
        "payment_stall": ("P0", "payment_processing_failure"),
        "payment_failure_streak": ("P0", "payment_processing_failure"),
        "intake_unavailable": ("P0", "payment_processing_failure"),
        "webhook_failures": ("P1", "payment_processing_failure"),
        "webhook_success_ratio": ("P1", "payment_processing_failure"),
        "queue_backlog": ("P2", "queue_overload"),
        "webhook_loop": ("P2", "webhook_loop_detected"),  # registered by the webhooks package
        "erp_sync_failing": ("P2", "stock_sync_failure"),  # registered by the ERP package
        "slow_jobs": ("P3", "-"),
        "signals": ("P1", "-"),
    }


def test_list_show_ack_and_resolve_from_the_cli(p0, policy):
    listed = json.loads(_cli(policy, "incidents", "list", "--json").output)
    assert [i["id"] for i in listed] == [p0["id"]]
    assert "payment_failure_streak" not in _cli(policy, "incidents", "list", "--status",
                                                "resolved").output

    shown = json.loads(_cli(policy, "incidents", "show", str(p0["id"]), "--json").output)
    assert shown["notifications"][0]["kind"] == "opened"
    assert {d["channel"] for d in shown["notifications"][0]["deliveries"]} == {"slack", "email", "sms"}
    text = _cli(policy, "incidents", "show", str(p0["id"])).output
    assert "flask runbook run payment_processing_failure" in text
    assert "failed_in_a_row: 5" in text

    acked = _cli(policy, "incidents", "ack", str(p0["id"]), "--reason", "on it")
    assert acked.exit_code == 0 and "acknowledged" in acked.output
    incident = incidents()[0]
    assert incident["status"] == "acknowledged"
    assert incident["acknowledged_by"].startswith("cli:")
    assert incident["acknowledge_reason"] == "on it"

    assert _cli(policy, "incidents", "resolve", str(p0["id"])).exit_code == 2  # --reason required
    resolved = _cli(policy, "incidents", "resolve", str(p0["id"]), "--reason", "workers restarted",
                    "--json")
    assert resolved.exit_code == 0
    assert json.loads(resolved.output)["changed"] is True
    assert [n["kind"] for n in notices(p0["id"])] == ["opened", "resolved"]

    again = _cli(policy, "incidents", "ack", str(p0["id"]))
    assert again.exit_code == 3 and "already resolved" in again.output
    missing = _cli(policy, "incidents", "show", "999999")
    assert missing.exit_code == 1 and "no incident with id 999999" in missing.output


# -- admin API ---------------------------------------------------------------------------

def _error(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.get_json()
    body = response.get_json()
    assert set(body) == {"error", "message", "details", "request_id"} and body["error"] == code
    return body


def test_the_incidents_api_needs_a_token_and_the_operator_role_to_act(policy, p0):
    client = policy.test_client()
    _error(client.get("/api/admin/incidents"), 401, "unauthorized")
    _error(client.post(f"/api/admin/incidents/{p0['id']}/ack", json={},
                       headers={"Authorization": "Bearer wrong"}), 401, "unauthorized")

    viewer = caller(policy, "viewer")
    assert viewer.get("/api/admin/incidents").status_code == 200
    assert viewer.get(f"/api/admin/incidents/{p0['id']}").status_code == 200
    _error(viewer.post(f"/api/admin/incidents/{p0['id']}/ack", json={}), 403, "forbidden")
    _error(viewer.post(f"/api/admin/incidents/{p0['id']}/resolve", json={"reason": "x"}),
           403, "forbidden")
    assert incidents()[0]["status"] == "open"
    assert rows("SELECT id FROM audit_logs WHERE entity_type = 'incident'") == []


def test_list_acknowledge_and_resolve_through_the_api(policy, p0, operator):
    listed = operator.get("/api/admin/incidents?severity=P0").get_json()
    assert [i["id"] for i in listed["items"]] == [p0["id"]]
    assert listed["next_before"] is None
    assert operator.get("/api/admin/incidents?severity=P2").get_json()["items"] == []

    ack = operator.post(f"/api/admin/incidents/{p0['id']}/ack", json={"reason": "looking"})
    assert ack.status_code == 200
    assert (ack.get_json()["changed"], ack.get_json()["status"]) == (True, "acknowledged")
    assert ack.get_json()["acknowledged_by"] == "user:oncall@racine.test"
    assert operator.post(f"/api/admin/incidents/{p0['id']}/ack", json={}).get_json()["changed"] \
        is False

    no_reason = _error(operator.post(f"/api/admin/incidents/{p0['id']}/resolve", json={}),
                       400, "validation_failed")
    assert [d["field"] for d in no_reason["details"]] == ["reason"]
    resolved = operator.post(f"/api/admin/incidents/{p0['id']}/resolve",
                             json={"reason": "replayed the failures"})
    assert resolved.status_code == 200
    assert (resolved.get_json()["status"], resolved.get_json()["resolve_reason"]) == \
        ("resolved", "replayed the failures")

    _error(operator.post(f"/api/admin/incidents/{p0['id']}/ack", json={}), 409, "conflict")
    shown = operator.get(f"/api/admin/incidents/{p0['id']}").get_json()
    assert [n["kind"] for n in shown["notifications"]] == ["opened", "resolved"]
    audited = rows("SELECT action, actor, reason, user_agent FROM audit_logs"
                   " WHERE entity_type = 'incident' ORDER BY id")
    assert [tuple(r.values()) for r in audited] == [
        ("incident.acknowledge", "user:oncall@racine.test", "looking", "racine-tests/1.0"),
        ("incident.resolve", "user:oncall@racine.test", "replayed the failures",
         "racine-tests/1.0")]


def test_an_action_whose_audit_row_cannot_be_written_changes_nothing(policy, p0, operator):
    with audit_writes_refused(policy):
        response = operator.post(f"/api/admin/incidents/{p0['id']}/ack", json={"reason": "x"})
        cli = _cli(policy, "incidents", "resolve", str(p0["id"]), "--reason", "fixed")

    _error(response, 500, "internal_error")
    assert cli.exit_code != 0
    assert incidents()[0]["status"] == "open"
    assert [n["kind"] for n in notices(p0["id"])] == ["opened"]


@pytest.mark.parametrize(("path", "field"), [
    ("/api/admin/incidents?status=closed", "status"),
    ("/api/admin/incidents?severity=P9", "severity"),
    ("/api/admin/incidents?limit=0", "limit"),
    ("/api/admin/incidents?limit=ten", "limit"),
    ("/api/admin/incidents?before=x", "before"),
    ("/api/admin/incidents?colour=red", "colour"),
])
def test_bad_api_queries_get_a_clear_error(policy, operator, path, field):
    body = _error(operator.get(path), 400, "validation_failed")

    assert [d["field"] for d in body["details"]] == [field]


def test_an_unknown_incident_is_404(policy, operator):
    _error(operator.get("/api/admin/incidents/424242"), 404, "not_found")
    _error(operator.post("/api/admin/incidents/424242/ack", json={}), 404, "not_found")
    _error(operator.post("/api/admin/incidents/424242/resolve", json={"reason": "x"}),
           404, "not_found")


@pytest.mark.parametrize(("body", "error"), [
    (b"", "invalid_json"),
    (b"not json", "invalid_json"),
    (b"[1, 2]", "invalid_json"),
    (b'{"reason": 42}', "validation_failed"),
    (b'{"reason": "   "}', "validation_failed"),
    (json.dumps({"reason": "x" * 501}).encode(), "validation_failed"),
    (b'{"reason": "fixed", "force": true}', "validation_failed"),
])
def test_a_malformed_action_body_is_refused_and_changes_nothing(policy, p0, operator, body, error):
    response = operator.post(f"/api/admin/incidents/{p0['id']}/resolve", data=body,
                             headers={"Content-Type": "application/json"})

    _error(response, 400, error)
    assert incidents()[0]["status"] == "open"


def test_the_list_pages_with_before(policy, operator):
    t0 = utcnow()
    add_events(5, status="failed", received_at=t0)
    evaluate_at(t0)
    add_events(3, status="queued", received_at=t0)
    evaluate_at(minutes(t0, 6))

    first = operator.get("/api/admin/incidents?limit=1").get_json()
    second = operator.get(f"/api/admin/incidents?limit=1&before={first['next_before']}").get_json()

    assert [first["items"][0]["rule"], second["items"][0]["rule"]] == \
        ["payment_stall", "payment_failure_streak"]


# -- metrics -----------------------------------------------------------------------------

def test_metrics_export_active_incidents_by_severity_and_the_webhook_success_ratio(policy, p0):
    t0 = utcnow()
    add_events(995, status="processed", received_at=minutes(t0, -10), processed_at=minutes(t0, -10))

    text = policy.test_client().get("/metrics").get_data(as_text=True)

    assert 'racine_alerts_open_incidents{severity="P0"} 1' in text
    assert 'racine_alerts_open_incidents{severity="P1"} 0' in text
    assert "# TYPE racine_alerts_open_incidents gauge" in text
    assert "racine_webhooks_success_ratio 0.995\n" in text  # 995 of 1000 (5 failed)
