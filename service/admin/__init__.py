"""Admin JSON API and pages."""

from flask import Flask


def init_app(app: Flask) -> None:
    from service.admin import errors
    from service.admin.api import bp

    errors.install(app)
    app.register_blueprint(bp)
