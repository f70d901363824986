"""Responders' tools: `flask incidents list|show|ack|resolve`, `flask alerts
evaluate|rules`, the admin API for incidents, and the `/metrics` gauges."""

from __future__ import annotations

import json

import pytest

from service.clock import utcnow
from tests.support.alerting import add_events, evaluate_at, incidents, minutes, notices, policy_app

TOKEN = "incident-tools-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def policy(build_app, clean, monkeypatch):
    yield from policy_app(build_app, monkeypatch, ADMIN_API_TOKENS=TOKEN)


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

def test_the_incidents_api_needs_a_token(policy, p0):
    client = policy.test_client()

    assert client.get("/api/admin/incidents").status_code == 401
    assert client.post(f"/api/admin/incidents/{p0['id']}/ack",
                       headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert incidents()[0]["status"] == "open"


def test_list_acknowledge_and_resolve_through_the_api(policy, p0):
    client = policy.test_client()

    listed = client.get("/api/admin/incidents?severity=P0", headers=AUTH).get_json()
    assert [i["id"] for i in listed["incidents"]] == [p0["id"]]
    assert listed["next_before"] is None
    assert client.get("/api/admin/incidents?severity=P2", headers=AUTH).get_json()["incidents"] == []

    ack = client.post(f"/api/admin/incidents/{p0['id']}/ack", json={"reason": "looking"}, headers=AUTH)
    assert ack.status_code == 200
    assert ack.get_json()["changed"] is True
    actor = ack.get_json()["incident"]["acknowledged_by"]
    assert actor.startswith("api-token:") and TOKEN not in actor
    assert client.post(f"/api/admin/incidents/{p0['id']}/ack", headers=AUTH).get_json()["changed"] is False

    no_reason = client.post(f"/api/admin/incidents/{p0['id']}/resolve", json={}, headers=AUTH)
    assert (no_reason.status_code, no_reason.get_json()["error"]) == (400, "reason_required")
    resolved = client.post(f"/api/admin/incidents/{p0['id']}/resolve",
                           json={"reason": "replayed the failures"}, headers=AUTH)
    assert resolved.status_code == 200
    assert resolved.get_json()["incident"]["status"] == "resolved"
    assert resolved.get_json()["incident"]["resolve_reason"] == "replayed the failures"

    conflict = client.post(f"/api/admin/incidents/{p0['id']}/ack", headers=AUTH)
    assert (conflict.status_code, conflict.get_json()["error"]) == (409, "conflict")
    shown = client.get(f"/api/admin/incidents/{p0['id']}", headers=AUTH).get_json()
    assert [n["kind"] for n in shown["notifications"]] == ["opened", "resolved"]


@pytest.mark.parametrize(("path", "kwargs", "status", "error"), [
    ("/api/admin/incidents?status=closed", {}, 400, "bad_status"),
    ("/api/admin/incidents?severity=P9", {}, 400, "bad_severity"),
    ("/api/admin/incidents?limit=0", {}, 400, "bad_limit"),
    ("/api/admin/incidents?limit=ten", {}, 400, "bad_number"),
    ("/api/admin/incidents/424242", {}, 404, "not_found"),
])
def test_bad_api_queries_get_a_clear_error(policy, path, kwargs, status, error):
    response = policy.test_client().get(path, headers=AUTH, **kwargs)

    assert (response.status_code, response.get_json()["error"]) == (status, error)


@pytest.mark.parametrize(("body", "error"), [
    (b"not json", "bad_body"),
    (b"[1, 2]", "bad_body"),
    (b'{"reason": 42}', "bad_reason"),
    (json.dumps({"reason": "x" * 501}).encode(), "bad_reason"),
])
def test_a_malformed_action_body_is_refused_and_changes_nothing(policy, p0, body, error):
    response = policy.test_client().post(f"/api/admin/incidents/{p0['id']}/resolve", data=body,
                                         headers={**AUTH, "Content-Type": "application/json"})

    assert (response.status_code, response.get_json()["error"]) == (400, error)
    assert incidents()[0]["status"] == "open"


def test_acting_on_an_unknown_incident_is_404(policy):
    response = policy.test_client().post("/api/admin/incidents/424242/ack", headers=AUTH)

    assert (response.status_code, response.get_json()["error"]) == (404, "not_found")


def test_the_list_pages_with_before(policy):
    t0 = utcnow()
    add_events(5, status="failed", received_at=t0)
    evaluate_at(t0)
    add_events(3, status="queued", received_at=t0)
    evaluate_at(minutes(t0, 6))
    client = policy.test_client()

    first = client.get("/api/admin/incidents?limit=1", headers=AUTH).get_json()
    second = client.get(f"/api/admin/incidents?limit=1&before={first['next_before']}",
                        headers=AUTH).get_json()

    assert [first["incidents"][0]["rule"], second["incidents"][0]["rule"]] == \
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
