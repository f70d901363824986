"""`flask users ...` and `flask tokens ...`: who may use the admin API.

Every change is audited with the operating-system user running the command as actor.
"""

from __future__ import annotations

import sys

import click
from flask.cli import AppGroup

from service.accounts import services
from service.accounts.exceptions import AccountsError
from service.accounts.roles import Role
from service.audit.actor import Actor
from service.cli_utils import Lifetime, echo_json, echo_table
from service.clock import utcnow
from service.extensions import db

users_cli = AppGroup("users", help="Users of the admin API and their roles.")
tokens_cli = AppGroup("tokens", help="API tokens: issue (shown once), list, revoke.")


def _fail(exc: AccountsError, code: int = 1):
    db.session.rollback()
    click.echo(f"Error: {exc}", err=True)
    sys.exit(code)


@users_cli.command("create")
@click.option("--email", required=True)
@click.option("--name", required=True)
@click.option("--role", type=click.Choice(Role.ALL), default=Role.VIEWER, show_default=True,
              help="viewer reads; operator acts; admin also manages users and tokens.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def create_user(email, name, role, as_json):
    """Create a user. Exit 1 when the email is taken or invalid."""
    try:
        user = services.create_user(email=email, name=name, role=role, actor=Actor.cli())
        db.session.commit()
    except AccountsError as exc:
        _fail(exc)
    if as_json:
        echo_json(user.to_dict())
    else:
        click.echo(f"created user {user.id} {user.email} ({user.role})")


@users_cli.command("list")
@click.option("--active-only", is_flag=True, help="Leave deactivated users out.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def list_users(active_only, as_json):
    """List users."""
    rows = [u.to_dict() for u in services.list_users(include_inactive=not active_only)]
    if as_json:
        echo_json(rows)
    else:
        echo_table(rows, ["id", "email", "name", "role", "active", "created_at"])


@users_cli.command("deactivate")
@click.argument("user")
@click.option("--reason", help="Why, for the audit trail.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def deactivate_user(user, reason, as_json):
    """Deactivate USER (id or email); their tokens stop working. Exit 1 if unknown."""
    try:
        found, changed = services.deactivate_user(user_ref=user, actor=Actor.cli(), reason=reason)
        db.session.commit()
    except AccountsError as exc:
        _fail(exc)
    if as_json:
        echo_json({**found.to_dict(), "changed": changed})
    else:
        click.echo(f"user {found.email} {'deactivated' if changed else 'was already inactive'}")


@tokens_cli.command("create")
@click.option("--user", "user", required=True, help="The user (id or email).")
@click.option("--expires", type=Lifetime(), help="Lifetime such as 30d or 12h (default: none).")
@click.option("--name", default="api", show_default=True, help="A label to recognise it by.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def create_token(user, expires, name, as_json):
    """Issue a token for USER and print it once: it is stored only hashed."""
    try:
        issued = services.create_token(user_ref=user, actor=Actor.cli(), name=name,
                                       expires_in=expires)
        db.session.commit()
    except AccountsError as exc:
        _fail(exc)
    if as_json:
        echo_json({**issued.token.to_dict(), "token": issued.secret})
        return
    click.echo(issued.secret)
    expiry = issued.token.to_dict()["expires_at"] or "never"
    click.echo(f"token {issued.token.prefix} for {user} (expires: {expiry}); "
               "it is shown only this once", err=True)


@tokens_cli.command("list")
@click.option("--user", "user", help="Only this user's tokens (id or email).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def list_tokens(user, as_json):
    """List tokens (prefix, owner, expiry, last use, state); never the tokens themselves."""
    try:
        tokens = services.list_tokens(user_ref=user)
    except AccountsError as exc:
        _fail(exc)
    now = utcnow()
    rows = [t.to_dict(now) for t in tokens]
    if as_json:
        echo_json(rows)
    else:
        echo_table(rows, ["id", "prefix", "user_id", "name", "state", "expires_at",
                          "last_used_at"])


@tokens_cli.command("revoke")
@click.argument("token")
@click.option("--reason", help="Why, for the audit trail.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def revoke_token(token, reason, as_json):
    """Revoke TOKEN (id or prefix such as rk_1a2b3c4d). Exit 1 if unknown."""
    try:
        found, changed = services.revoke_token(token_ref=token, actor=Actor.cli(), reason=reason)
        db.session.commit()
    except AccountsError as exc:
        _fail(exc)
    if as_json:
        echo_json({**found.to_dict(), "changed": changed})
    else:
        click.echo(f"token {found.prefix} {'revoked' if changed else 'was already revoked'}")
