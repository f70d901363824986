"""One JSON shape for every error of the admin API.

    {"error": "<code>", "message": "<what went wrong>", "details": <object or null>,
     "request_id": "<id>"}
"""

from __future__ import annotations

from flask import Flask, current_app, g, jsonify, request
from werkzeug.exceptions import HTTPException

from service.extensions import db

PREFIX = "/api/admin/"


class ApiError(Exception):
    """An error answered to the client as it is."""

    def __init__(self, status: int, code: str, message: str, details: dict | list | None = None,
                 headers: dict | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details
        self.headers = headers or {}


def error_response(status: int, code: str, message: str, details=None, headers=None):
    response = jsonify(error=code, message=message, details=details,
                       request_id=g.get("request_id"))
    response.status_code = status
    for key, value in (headers or {}).items():
        response.headers[key] = value
    return response


def _http_code(exc: HTTPException) -> str:
    return (exc.name or "error").lower().replace(" ", "_")


def install_blueprint_handlers(blueprint) -> None:
    """Answer ApiError and unexpected errors of the blueprint's views in the shape.
    Called once, where the blueprint is defined (a blueprint is set up before use)."""

    @blueprint.errorhandler(ApiError)
    def _api_error(exc: ApiError):
        db.session.rollback()
        return error_response(exc.status, exc.code, exc.message, exc.details, exc.headers)

    @blueprint.errorhandler(Exception)
    def _unexpected(exc: Exception):
        db.session.rollback()
        current_app.logger.exception("admin API error", extra={"path": request.path})
        return error_response(500, "internal_error", "the request could not be completed")


def install(app: Flask) -> None:
    """Answer the router's own errors (404, 405) under /api/admin/ in the shape too."""

    def _http_error(exc: HTTPException):
        if not request.path.startswith(PREFIX):
            return exc
        headers = {"Allow": ", ".join(exc.valid_methods)} \
            if getattr(exc, "valid_methods", None) else None
        return error_response(exc.code or 500, _http_code(exc), exc.description or exc.name,
                              headers=headers)

    app.register_error_handler(HTTPException, _http_error)
