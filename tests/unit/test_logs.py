"""Celery's routine lines about housekeeping tasks are kept off the screen; the rest pass."""

from __future__ import annotations

import logging

from service.logs import QuietTasks


def record(level: int, msg: str, args) -> logging.LogRecord:
    return logging.LogRecord("celery.app.trace", level, __file__, 1, msg, args, None)


def quiet(*tasks: str) -> QuietTasks:
    flt = QuietTasks()
    flt.tasks.update(tasks)
    return flt


def test_a_quiet_tasks_received_and_succeeded_lines_are_dropped():
    flt = quiet("webhooks.relay_pending")

    received = record(logging.INFO, "Task %(name)s[%(id)s] received",
                      ({"name": "webhooks.relay_pending", "id": "1"},))
    succeeded = record(logging.INFO, "Task %(name)s[%(id)s] succeeded",
                       ({"name": "webhooks.relay_pending", "id": "1"},))

    assert (flt.filter(received), flt.filter(succeeded)) == (False, False)


def test_beats_sending_line_for_a_quiet_task_is_dropped():
    flt = quiet("queues.relay_outbox")

    sent = record(logging.INFO, "Scheduler: Sending due task %s (%s)",
                  ("outbox-relay", "queues.relay_outbox"))

    assert flt.filter(sent) is False


def test_other_tasks_and_warnings_about_quiet_ones_still_pass():
    flt = quiet("webhooks.relay_pending")

    other = record(logging.INFO, "Task %(name)s[%(id)s] succeeded",
                   ({"name": "webhooks.process_event", "id": "2"},))
    failed = record(logging.ERROR, "Task %(name)s[%(id)s] raised",
                    ({"name": "webhooks.relay_pending", "id": "3"},))

    assert (flt.filter(other), flt.filter(failed)) == (True, True)
