"""Users (with roles) and their API tokens, stored hashed."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column, relationship

from service.clock import iso, utcnow
from service.db_types import BigId
from service.extensions import db


class User(db.Model):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    email: Mapped[str] = mapped_column(String(255), unique=True)
    name: Mapped[str] = mapped_column(String(255))
    role: Mapped[str] = mapped_column(String(16))
    active: Mapped[bool] = mapped_column(default=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    deactivated_at: Mapped[datetime | None]

    tokens: Mapped[list[ApiToken]] = relationship(back_populates="user")

    def to_dict(self) -> dict:
        return {"id": self.id, "email": self.email, "name": self.name, "role": self.role,
                "active": self.active, "created_at": iso(self.created_at),
                "deactivated_at": iso(self.deactivated_at)}


class ApiToken(db.Model):
    """A bearer token: only its SHA-256 and a short prefix (to recognise it) are kept."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    name: Mapped[str] = mapped_column(String(100))
    prefix: Mapped[str] = mapped_column(String(16), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime | None]
    last_used_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]

    user: Mapped[User] = relationship(back_populates="tokens")

    def state(self, now: datetime) -> str:
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= now:
            return "expired"
        return "active"

    def to_dict(self, now: datetime | None = None) -> dict:
        return {"id": self.id, "user_id": self.user_id, "name": self.name,
                "prefix": self.prefix, "created_at": iso(self.created_at),
                "expires_at": iso(self.expires_at), "last_used_at": iso(self.last_used_at),
                "revoked_at": iso(self.revoked_at), "state": self.state(now or utcnow())}
