"""Further Flask apps next to the session's, for settings a test changes (dead broker, ...)."""

from __future__ import annotations


def use_celery_of(flask_app) -> None:
    """Make `flask_app`'s Celery app the process default again (each create_app takes it)."""
    celery = flask_app.extensions["celery"]
    celery.set_current()
    celery.set_default()
