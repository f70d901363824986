"""Admin JSON API under /api/admin/ (token auth). Views parse, call a service, shape."""

from __future__ import annotations

from flask import Blueprint, jsonify

from service.admin.auth import require_token
from service.queues.health import queue_health

bp = Blueprint("admin_api", __name__, url_prefix="/api/admin")


@bp.get("/queue/health")
@require_token
def queue_health_view():
    return jsonify(queue_health())
