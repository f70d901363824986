"""The no-op Celery task the benchmark compares `webhooks.process_event` against.

Loaded into the workers through WEBHOOK_HANDLER_MODULES by `python -m loadtests.bench`.
"""

from celery import shared_task


@shared_task(name="bench.noop", acks_late=True, ignore_result=True)
def noop(event_pk: int) -> None:
    return None
