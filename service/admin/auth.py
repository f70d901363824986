"""Token authentication for the admin JSON API."""

from __future__ import annotations

import functools
import hmac

from flask import current_app, jsonify, request


def require_token(view):
    """Accept `Authorization: Bearer <token>` matching one of ADMIN_API_TOKENS."""

    @functools.wraps(view)
    def wrapped(*args, **kwargs):
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        tokens = current_app.config["ADMIN_API_TOKENS"]
        if scheme.lower() != "bearer" or not token or not any(
            hmac.compare_digest(token.strip().encode(), known.encode()) for known in tokens
        ):
            response = jsonify(error="unauthorized", reason="a valid admin API token is required")
            response.status_code = 401
            response.headers["WWW-Authenticate"] = 'Bearer realm="racine-admin"'
            return response
        return view(*args, **kwargs)

    return wrapped
