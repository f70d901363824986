"""Celery entry point: `celery -A service.worker worker`."""

from service import create_app

celery = create_app().extensions["celery"]
