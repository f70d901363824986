"""Admin JSON API for incidents: `/api/admin/incidents` (token auth).

`GET /api/admin/incidents` lists (filters: status, severity; `before` for the next page),
`GET /api/admin/incidents/<id>` shows one with its notices, and `POST .../ack` and
`POST .../resolve` (JSON body `{"reason": "..."}`; required to resolve) act on one.
"""

from __future__ import annotations

import hashlib

from flask import Blueprint, jsonify, request

from service.admin.auth import require_token
from service.alerts.cli import incident_detail
from service.alerts.exceptions import IncidentNotFound, InvalidTransition
from service.alerts.models import SEVERITIES, Incident, IncidentStatus
from service.alerts.services import MAX_REASON, acknowledge, list_incidents, resolve
from service.extensions import db

bp = Blueprint("alerts_api", __name__, url_prefix="/api/admin/incidents")

MAX_PAGE = 200


def _error(status: int, code: str, reason: str):
    response = jsonify(error=code, reason=reason)
    response.status_code = status
    return response


def _actor() -> str:
    """Who acted: the token, named by a fingerprint (never the token itself)."""
    token = request.headers.get("Authorization", "").partition(" ")[2].strip()
    return "api-token:" + hashlib.sha256(token.encode()).hexdigest()[:12]


@bp.get("")
@require_token
def list_incidents_view():
    status = request.args.get("status", "active")
    severity = request.args.get("severity")
    if status not in (*IncidentStatus.ALL, "active", "all"):
        return _error(400, "bad_status", "status must be open, acknowledged, resolved, active or all")
    if severity is not None and severity not in SEVERITIES:
        return _error(400, "bad_severity", "severity must be one of P0, P1, P2, P3")
    try:
        limit = int(request.args.get("limit", 50))
        before = int(request.args["before"]) if "before" in request.args else None
    except ValueError:
        return _error(400, "bad_number", "limit and before must be integers")
    if not 1 <= limit <= MAX_PAGE:
        return _error(400, "bad_limit", f"limit must be between 1 and {MAX_PAGE}")
    rows = [i.to_dict() for i in list_incidents(status=status, severity=severity, before=before,
                                                 limit=limit)]
    return jsonify(incidents=rows,
                   next_before=rows[-1]["id"] if len(rows) == limit else None)


@bp.get("/<int:incident_id>")
@require_token
def show_incident_view(incident_id: int):
    incident = db.session.get(Incident, incident_id)
    if incident is None:
        return _error(404, "not_found", f"no incident with id {incident_id}")
    return jsonify(incident_detail(incident))


def _reason(required: bool):
    """The request's reason, or an error response."""
    if not request.get_data():
        body = {}
    else:
        body = request.get_json(silent=True)
        if not isinstance(body, dict):
            return None, _error(400, "bad_body", "the body must be a JSON object")
    reason = body.get("reason")
    if reason is not None and not isinstance(reason, str):
        return None, _error(400, "bad_reason", "reason must be a string")
    reason = (reason or "").strip()
    if required and not reason:
        return None, _error(400, "reason_required", "a reason is required")
    if len(reason) > MAX_REASON:
        return None, _error(400, "bad_reason", f"reason is limited to {MAX_REASON} characters")
    return reason or None, None


def _act(action, incident_id: int, *, reason_required: bool):
    reason, problem = _reason(reason_required)
    if problem is not None:
        return problem
    try:
        incident, changed = action(incident_id, actor=_actor(), reason=reason)
        db.session.commit()
    except IncidentNotFound as exc:
        db.session.rollback()
        return _error(404, "not_found", str(exc))
    except InvalidTransition as exc:
        db.session.rollback()
        return _error(409, "conflict", str(exc))
    return jsonify(incident=incident.to_dict(), changed=changed)


@bp.post("/<int:incident_id>/ack")
@require_token
def ack_incident_view(incident_id: int):
    return _act(acknowledge, incident_id, reason_required=False)


@bp.post("/<int:incident_id>/resolve")
@require_token
def resolve_incident_view(incident_id: int):
    return _act(resolve, incident_id, reason_required=True)
