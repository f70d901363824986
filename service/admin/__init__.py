"""Admin JSON API and pages."""

from flask import Flask


def init_app(app: Flask) -> None:
    from service.admin.api import bp

    app.register_blueprint(bp)
