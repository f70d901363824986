"""Users, roles and API tokens: creation, deactivation, issue, revocation, authentication.

Tokens look like `rk_<8 hex>_<43 url-safe chars>`. Only the SHA-256 of the whole token
is stored (a random 256-bit secret needs no slow hash) and the `rk_<8 hex>` prefix, which
lists, logs and audit rows show to say which token acted. The token itself is shown
once, when it is issued.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import timedelta

from flask import current_app
from sqlalchemy import func, select, update

from service.accounts.exceptions import (
    InactiveUser,
    InvalidUser,
    TokenNotFound,
    UserExists,
    UserNotFound,
)
from service.accounts.models import ApiToken, User
from service.accounts.roles import Role
from service.audit import services as audit
from service.audit.actor import Actor
from service.audit.registry import critical, not_critical
from service.clock import iso, utcnow
from service.extensions import db

_EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s]{1,190}\.[^@\s]{1,60}$")
_TOKEN = re.compile(r"^(rk_[0-9a-f]{8})_[A-Za-z0-9_-]{43}$")


@dataclass(frozen=True)
class Principal:
    """Who a request acts as: a user through one of their tokens, or a bootstrap token."""

    role: str
    actor: Actor
    user_id: int | None = None


@dataclass(frozen=True)
class IssuedToken:
    token: ApiToken
    secret: str  # the whole token, shown once


@not_critical("reads users")
def find_user(ref: str | int) -> User:
    """A user by id or email."""
    text = str(ref).strip()
    if text.isdigit():
        user = db.session.get(User, int(text))
    else:
        user = db.session.scalar(select(User).where(func.lower(User.email) == text.lower()))
    if user is None:
        raise UserNotFound(f"no user {text!r}")
    return user


@not_critical("reads users")
def list_users(*, include_inactive: bool = True) -> list[User]:
    query = select(User).order_by(User.id)
    if not include_inactive:
        query = query.where(User.active.is_(True))
    return list(db.session.scalars(query))


@critical("user.create")
def create_user(*, email: str, name: str, role: str, actor: Actor) -> User:
    """Create an active user; the caller commits."""
    email = (email or "").strip().lower()
    name = (name or "").strip()
    if not _EMAIL.match(email):
        raise InvalidUser(f"{email!r} is not an email address")
    if not name or len(name) > 255:
        raise InvalidUser("a name of 1 to 255 characters is required")
    if role not in Role.ALL:
        raise InvalidUser(f"role must be one of {', '.join(Role.ALL)}")
    if db.session.scalar(select(User.id).where(User.email == email)):
        raise UserExists(f"a user with email {email} already exists")
    user = User(email=email, name=name, role=role, active=True)
    db.session.add(user)
    db.session.flush()
    audit.record(action="user.create", entity_type="user", entity_id=user.id, actor=actor,
                 before=None, after=_user_state(user))
    return user


@critical("user.deactivate")
def deactivate_user(*, user_ref: str | int, actor: Actor, reason: str | None = None
                    ) -> tuple[User, bool]:
    """Deactivate a user (their tokens stop working at once). (user, changed)."""
    user = find_user(user_ref)
    user = db.session.get(User, user.id, with_for_update=True, populate_existing=True)
    if not user.active:
        return user, False
    before = _user_state(user)
    user.active = False
    user.deactivated_at = utcnow()
    db.session.flush()
    audit.record(action="user.deactivate", entity_type="user", entity_id=user.id, actor=actor,
                 before=before, after=_user_state(user), reason=reason)
    return user, True


@critical("token.create")
def create_token(*, user_ref: str | int, actor: Actor, name: str = "api",
                 expires_in: timedelta | None = None) -> IssuedToken:
    """Issue a token for an active user; the caller commits and shows `secret` once."""
    user = find_user(user_ref)
    if not user.active:
        raise InactiveUser(f"user {user.email} is deactivated")
    if expires_in is not None and expires_in <= timedelta(0):
        raise InvalidUser("a token's lifetime must be positive")
    name = (name or "api").strip()[:100] or "api"
    prefix = f"rk_{secrets.token_hex(4)}"
    secret = f"{prefix}_{secrets.token_urlsafe(32)}"
    now = utcnow()
    token = ApiToken(user_id=user.id, name=name, prefix=prefix, token_hash=_digest(secret),
                     created_at=now, expires_at=now + expires_in if expires_in else None)
    db.session.add(token)
    db.session.flush()
    audit.record(action="token.create", entity_type="api_token", entity_id=token.id,
                 actor=actor, before=None, after=_token_state(token),
                 details={"user_id": user.id})
    return IssuedToken(token=token, secret=secret)


@not_critical("reads tokens")
def find_token(ref: str | int) -> ApiToken:
    """A token by id or by its prefix (`rk_1a2b3c4d`)."""
    text = str(ref).strip()
    if text.isdigit():
        token = db.session.get(ApiToken, int(text))
    else:
        token = db.session.scalar(select(ApiToken).where(ApiToken.prefix == text))
    if token is None:
        raise TokenNotFound(f"no API token {text!r}")
    return token


@not_critical("reads tokens")
def list_tokens(*, user_ref: str | int | None = None) -> list[ApiToken]:
    query = select(ApiToken).order_by(ApiToken.id)
    if user_ref is not None:
        query = query.where(ApiToken.user_id == find_user(user_ref).id)
    return list(db.session.scalars(query))


@critical("token.revoke")
def revoke_token(*, token_ref: str | int, actor: Actor, reason: str | None = None
                 ) -> tuple[ApiToken, bool]:
    """Revoke a token at once. (token, changed): revoking twice changes nothing."""
    token = find_token(token_ref)
    token = db.session.get(ApiToken, token.id, with_for_update=True, populate_existing=True)
    if token.revoked_at is not None:
        return token, False
    before = _token_state(token)
    token.revoked_at = utcnow()
    db.session.flush()
    audit.record(action="token.revoke", entity_type="api_token", entity_id=token.id,
                 actor=actor, before=before, after=_token_state(token), reason=reason,
                 details={"user_id": token.user_id})
    return token, True


@not_critical("reads a token; writes only its last-use time")
def authenticate(raw: str) -> Principal | None:
    """The principal a bearer token stands for, or None: unknown, revoked, expired, or
    its user deactivated. Commits the token's last-use time (at most once a minute)."""
    match = _TOKEN.match(raw or "")
    if match is None:
        return None
    now = utcnow()
    found = db.session.execute(
        select(ApiToken.id, ApiToken.prefix, ApiToken.expires_at, ApiToken.revoked_at,
               ApiToken.last_used_at, User.id.label("user_id"), User.email, User.role,
               User.active)
        .join(User, User.id == ApiToken.user_id)
        .where(ApiToken.token_hash == _digest(raw))
    ).first()
    if found is None or found.revoked_at is not None or not found.active or \
            (found.expires_at is not None and found.expires_at <= now):
        return None
    resolution = timedelta(seconds=current_app.config["TOKEN_LAST_USED_RESOLUTION_SECONDS"])
    if found.last_used_at is None or now - found.last_used_at >= resolution:
        db.session.execute(update(ApiToken).where(ApiToken.id == found.id)
                           .values(last_used_at=now))
        db.session.commit()
    actor = Actor.for_user(user_id=found.user_id, email=found.email, token_prefix=found.prefix)
    return Principal(role=found.role, actor=actor, user_id=found.user_id)


@not_critical("reads users")
def bootstrap_open() -> bool:
    """Whether ADMIN_API_TOKENS still count: only until an active admin user exists."""
    return not db.session.scalar(
        select(func.count()).select_from(User)
        .where(User.role == Role.ADMIN, User.active.is_(True)))


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _user_state(user: User) -> dict:
    return {"email": user.email, "name": user.name, "role": user.role, "active": user.active}


def _token_state(token: ApiToken) -> dict:
    return {"user_id": token.user_id, "name": token.name, "prefix": token.prefix,
            "expires_at": iso(token.expires_at), "revoked_at": iso(token.revoked_at)}
