"""Authentication and roles for the admin JSON API.

`Authorization: Bearer <token>` with a user's API token (see `accounts.services`); the
user's role decides: viewers read, operators act, admins also manage users and tokens.
ADMIN_API_TOKENS is only a bootstrap: its tokens act as an admin until the first active
admin user exists, so that one can be created over the API; after that they are refused.
"""

from __future__ import annotations

import hmac
import logging

from flask import current_app, g, request

from service.accounts import services as accounts
from service.accounts.roles import Role
from service.accounts.services import Principal
from service.admin.errors import ApiError
from service.audit.actor import Actor

log = logging.getLogger(__name__)

_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="racine-admin"'}


def principal_for(header: str) -> Principal | None:
    scheme, _, token = (header or "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    found = accounts.authenticate(token)
    if found is not None:
        return found
    bootstrap = current_app.config["ADMIN_API_TOKENS"]
    if any(hmac.compare_digest(token.encode(), known.encode()) for known in bootstrap):
        if accounts.bootstrap_open():
            return Principal(role=Role.ADMIN, actor=Actor.bootstrap())
        log.warning("bootstrap token refused: an active admin user exists",
                    extra={"path": request.path})
    return None


def authorize(role: str) -> Principal:
    """The request's principal, if it holds `role` or a higher one; else 401 or 403."""
    principal = principal_for(request.headers.get("Authorization", ""))
    if principal is None:
        raise ApiError(401, "unauthorized", "a valid admin API token is required",
                       headers=_CHALLENGE)
    if not Role.allows(principal.role, role):
        raise ApiError(403, "forbidden", f"this needs the {role} role; the token's user is "
                       f"{principal.role}")
    g.principal = principal
    return principal
