"""Who did something: the actor every audit row names."""

from __future__ import annotations

import getpass
import os
from dataclasses import dataclass

from service.config import sudo_user


@dataclass(frozen=True)
class Actor:
    """The party behind an action.

    `label` is what the audit row's `actor` column holds: `user:<email>` for a person
    (with the `token_prefix` of the API token used, if any), `cli:<os user>` for an
    operator at a shell, `system:<name>` for a provider or a job (`system:stripe`,
    `system:erp`), `bootstrap` for a bootstrap token from ADMIN_API_TOKENS.
    """

    label: str
    user_id: int | None = None
    token_prefix: str | None = None

    @classmethod
    def for_user(cls, *, user_id: int, email: str, token_prefix: str | None = None) -> Actor:
        return cls(label=f"user:{email}", user_id=user_id, token_prefix=token_prefix)

    @classmethod
    def cli(cls) -> Actor:
        """The operating-system user running a CLI command (`sudo` keeps the real one)."""
        return cls(label=f"cli:{os_user()}")

    @classmethod
    def system(cls, name: str) -> Actor:
        if not name or ":" in name:
            raise ValueError(f"a system actor is a plain name such as 'stripe', got {name!r}")
        return cls(label=f"system:{name}")

    @classmethod
    def bootstrap(cls) -> Actor:
        return cls(label="bootstrap")

    @property
    def kind(self) -> str:
        return self.label.split(":", 1)[0]


def os_user() -> str:
    """The operating-system user: the one who ran sudo, if sudo was used."""
    operator = sudo_user()
    if operator:
        return operator
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid{os.getuid()}"
