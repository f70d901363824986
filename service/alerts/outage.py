"""Paging when the database itself is unreachable.

The evaluation reads and records everything in the database, so when PostgreSQL is down
it cannot run, and that is exactly when a P0 matters most (the intake answers 503, the
workers stop). The beat task then pages directly: a P0 notice through the configured
channels to the P0 contacts, sent from the worker with no database involved, at most once
per P0 repeat interval (a Redis key), with what Redis still knows (the intake's 503s).
Nothing can be recorded meanwhile; once the database is back the rules open the incident
as usual (the intake's 503 run and the stalled events are still there to be seen).
"""

from __future__ import annotations

import logging
import time

import redis
from flask import current_app
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from service.alerts.channels import SEVERITY_CHANNELS, ContactBook
from service.alerts.exceptions import ChannelError
from service.alerts.rules import PAYMENT_RUNBOOK
from service.alerts.services import intake_unavailability

log = logging.getLogger(__name__)

OUTAGE_KEY = "racine:alerts:database_unreachable"


def is_database_unreachable(exc: BaseException) -> bool:
    if isinstance(exc, OperationalError | PoolTimeout):
        return True
    return isinstance(exc, DBAPIError) and bool(exc.connection_invalidated)


def page_database_unreachable(*, error: str) -> dict:
    """Send the outage page unless one went out within the P0 repeat interval.

    Returns what was done: {"paged": bool, "sent": [...], "failed": [...]}.
    """
    config = current_app.config
    client: redis.Redis = current_app.extensions["redis"]
    repeat = int(config["ALERT_REPEAT_SECONDS"].get("P0", 900)) or 900
    run = None
    try:
        if not client.set(OUTAGE_KEY, repr(time.time()), nx=True, ex=repeat):
            return {"paged": False, "sent": [], "failed": []}
        run = intake_unavailability(client)
    except redis.RedisError:
        log.error("Redis unreachable too: paging without de-duplication")
    title = "[P0] Database unreachable: payments cannot be stored or processed"
    lines = [
        "Severity: P0 (critical), respond within "
        f"{int(config['ALERT_RESPONSE_SECONDS'].get('P0', 300)) // 60} min",
        f"Seen: the alert evaluation could not reach the database ({error}).",
    ]
    if run is not None:
        lines.append(f"Figures: intake answered 503 to {run.count} deliveries since "
                     f"{run.first.strftime('%Y-%m-%d %H:%M:%S')} UTC, last at "
                     f"{run.last.strftime('%H:%M:%S')} UTC")
    lines += [f"Runbook: {PAYMENT_RUNBOOK}",
              f"  diagnose: flask runbook run {PAYMENT_RUNBOOK}",
              f"  apply the fix: flask runbook run {PAYMENT_RUNBOOK} --execute",
              "Acknowledge: no incident can be recorded while the database is down; this page "
              f"repeats every {repeat // 60} min until it is back, then the incident opens and "
              "is acknowledged as usual (flask incidents ack ID)."]
    body = "\n".join(lines)
    short = (f"{title}. {error}. Runbook: flask runbook run {PAYMENT_RUNBOOK}. Repeats every "
             f"{repeat // 60} min until the database is back.")
    channels = current_app.extensions["alert_channels"]
    contacts: ContactBook = current_app.extensions["alert_contacts"]
    first = contacts.at_level("P0", 0)
    sent, failed = [], []
    for name in SEVERITY_CHANNELS["P0"]:
        channel = channels.get(name)
        if channel is None:
            continue
        for target in first.targets(name):
            try:
                channel.send(title=title, body=short if name == "sms" else body, target=target)
                sent.append(name)
            except ChannelError as exc:
                failed.append(name)
                log.error("outage page not delivered", extra={"channel": name, "error": str(exc)})
    log.critical("database unreachable: P0 paged without an incident record",
                 extra={"error": error, "sent": len(sent), "failed": len(failed)})
    return {"paged": True, "sent": sent, "failed": failed}
