"""Structured JSON logs carrying the request id and the event being handled.

Log records never carry bodies, signatures or headers: callers pass only ids, types and
counts as `extra`, and the formatter writes only the fields listed here.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
from datetime import UTC, datetime

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "request_id", default=None
)
event_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("event", default=None)

# Only these `extra` keys reach the output; anything else given by mistake is dropped.
_EXTRA_FIELDS = (
    "provider", "event_id", "event_pk", "event_type", "status", "outcome", "reason",
    "count", "duration_ms", "retries", "countdown", "task", "task_id", "path", "method",
    "code", "queue", "error", "host", "actor",
)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        request_id = request_id_var.get()
        if request_id:
            entry["request_id"] = request_id
        event = event_var.get()
        if event and "event" not in entry:
            entry["event"] = event
        for key in _EXTRA_FIELDS:
            value = record.__dict__.get(key)
            if value is not None:
                entry[key] = value
        if record.exc_info:
            entry["exc_type"] = record.exc_info[0].__name__ if record.exc_info[0] else None
        return json.dumps(entry, default=str)


def configure_logging(level: str = "INFO", *, json_output: bool = True) -> None:
    """Send the `service` loggers to stderr, as JSON lines unless asked otherwise."""
    logger = logging.getLogger("service")
    if getattr(logger, "_racine_configured", False):
        return
    handler = logging.StreamHandler(sys.stderr)
    if json_output:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(level.upper())
    logger.propagate = False
    logger._racine_configured = True


# Celery's own loggers that write one INFO line per task received, run and scheduled.
CELERY_TASK_LOGGERS = ("celery.worker.strategy", "celery.app.trace", "celery.beat")


class QuietTasks(logging.Filter):
    """Drops Celery's routine INFO lines (received, succeeded, sent by beat) about the
    tasks named in `tasks`: housekeeping that runs every few seconds, whose own log
    says when it moved something. Warnings and errors about them still pass."""

    def __init__(self) -> None:
        super().__init__()
        self.tasks: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno > logging.INFO or not self.tasks:
            return True
        args = record.args
        if isinstance(args, dict):  # worker: "Task %(name)s[%(id)s] ..."
            name = args.get("name")
        elif isinstance(args, tuple) and len(args) == 2:  # beat: "Sending due task %s (%s)"
            name = args[1]
        else:
            return True
        return name not in self.tasks


quiet_tasks = QuietTasks()


def quieten(tasks) -> None:
    """Keep Celery's routine lines about `tasks` off the screen (see QuietTasks)."""
    quiet_tasks.tasks.update(tasks)
    for name in CELERY_TASK_LOGGERS:
        logger = logging.getLogger(name)
        if quiet_tasks not in logger.filters:
            logger.addFilter(quiet_tasks)
