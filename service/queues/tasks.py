"""Beat tasks of the queues domain."""

from celery import shared_task

from service.queues import outbox, samples


@shared_task(name="queues.relay_outbox", ignore_result=True)
def relay_outbox() -> dict:
    """Publish outbox jobs left pending (broker down, queue full), oldest first."""
    return outbox.relay_outbox().as_dict()


@shared_task(name="queues.record_samples", ignore_result=True)
def record_samples() -> dict:
    """One sample per queue for this minute; samples past their retention go."""
    return samples.record_samples().as_dict()
