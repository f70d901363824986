"""Users with tokens, and an admin API client, for tests."""

from __future__ import annotations

from dataclasses import dataclass

from service.accounts import services as accounts
from service.audit.actor import Actor
from service.extensions import db


@dataclass
class Caller:
    """A test client acting with one user's token."""

    client: object
    token: str
    user_id: int
    email: str

    def headers(self, extra: dict | None = None) -> dict:
        return {"Authorization": f"Bearer {self.token}", "User-Agent": "racine-tests/1.0",
                **(extra or {})}

    def get(self, path, **kw):
        return self.client.get(path, headers=self.headers(kw.pop("headers", None)), **kw)

    def post(self, path, json=None, **kw):
        return self.client.post(path, json=json, headers=self.headers(kw.pop("headers", None)),
                                **kw)

    def put(self, path, json=None, **kw):
        return self.client.put(path, json=json, headers=self.headers(kw.pop("headers", None)),
                               **kw)

    def delete(self, path, **kw):
        return self.client.delete(path, headers=self.headers(kw.pop("headers", None)), **kw)


def make_user(role: str, *, email: str | None = None) -> tuple[int, str, str]:
    """A user of `role` with a token: (user id, email, token). Needs an app context."""
    email = email or f"{role}@racine.test"
    user = accounts.create_user(email=email, name=role.title(), role=role,
                                actor=Actor.system("tests"))
    issued = accounts.create_token(user_ref=user.id, actor=Actor.system("tests"), name="tests")
    db.session.commit()
    return user.id, email, issued.secret


def caller(app, role: str, *, email: str | None = None) -> Caller:
    with app.app_context():
        user_id, email, token = make_user(role, email=email)
        db.session.remove()
    return Caller(app.test_client(), token, user_id, email)
