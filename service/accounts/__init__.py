"""Users, roles and API tokens."""

from flask import Flask


def init_app(app: Flask) -> None:
    from service.accounts import models  # noqa: F401  (tables)
    from service.accounts.cli import tokens_cli, users_cli

    app.cli.add_command(users_cli)
    app.cli.add_command(tokens_cli)
