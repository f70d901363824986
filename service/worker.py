"""Celery entry point: `celery -A service.worker worker`."""

from service import create_app_or_exit

celery = create_app_or_exit().extensions["celery"]
