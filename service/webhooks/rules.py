"""The "webhook loop" rule (P2, runbook `webhook_loop_detected`), registered by this
domain's `init_app` (`service.alerts.rules.register_rule`).

A provider that keeps redelivering an event we answered (a timeout on its side, the
endpoint registered twice) is only visible in the duplicate counts the intake keeps in
Redis (`dedup.note_duplicate`, 5-minute buckets): the deliveries are answered 200 and
raise nothing. The rule reads the buckets of the last WEBHOOK_LOOP_WINDOW_SECONDS and
fires while some event id was delivered again at least WEBHOOK_LOOP_MIN_REPEATS times;
a provider's ordinary retries, a redelivery or two, stay under it. One incident for
every looping event at once (a storm is one page, not one per event id), cleared when
the duplicates stop. The `webhook_loop` signal the runbook raises in execute mode (and
`duplicate_storm`) fold into that incident rather than opening one of their own.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

from service.alerts.rules import LOOP_RUNBOOK, BaseRule, Finding, RuleContext
from service.webhooks.dedup import DUPLICATES_BUCKET_SECONDS, repeated_duplicates

# Event ids named in an incident's figures.
SHOWN_EVENTS = 10


def _bucket(moment: datetime) -> float:
    return moment.replace(tzinfo=UTC).timestamp() / DUPLICATES_BUCKET_SECONDS


class WebhookLoopRule(BaseRule):
    name = "webhook_loop"
    severity = "P2"
    runbook = LOOP_RUNBOOK
    signal_kinds = ("webhook_loop", "duplicate_storm")

    @property
    def summary(self) -> str:
        return ("an event id delivered again at least WEBHOOK_LOOP_MIN_REPEATS times within "
                "WEBHOOK_LOOP_WINDOW_SECONDS (the intake's duplicate counts in Redis)")

    def evaluate(self, ctx: RuleContext) -> list[Finding]:
        min_repeats = ctx.config["WEBHOOK_LOOP_MIN_REPEATS"]
        window = ctx.config["WEBHOOK_LOOP_WINDOW_SECONDS"]
        if min_repeats < 1 or window <= 0:
            return []
        # The bucket the window starts in counts whole: the window is read at the
        # buckets' 5-minute resolution.
        first = int(_bucket(ctx.now - timedelta(seconds=window)))
        resolved = ctx.resolved_at(self.key())
        if resolved is not None:
            # Duplicates counted before a resolution do not reopen the incident: only
            # buckets that start after it count.
            first = max(first, math.ceil(_bucket(resolved)))
        last = int(_bucket(ctx.now))
        looping = repeated_duplicates(ctx.redis, first=first, last=last,
                                      min_repeats=min_repeats)
        if not looping:
            return []
        top, top_count = looping[0]
        provider, event_id = top.split(":", 1)
        others = f" and {len(looping) - 1} more event ids" if len(looping) > 1 else ""
        return [Finding(
            title=(f"Webhook loop: {provider} event {event_id} delivered {top_count} times "
                   f"again in {window / 60:g} min{others}")[:255],
            details={"looping_events": len(looping), "min_repeats": min_repeats,
                     "window_seconds": window,
                     "events": [{"provider": name.split(":", 1)[0],
                                 "event_id": name.split(":", 1)[1], "duplicates": count}
                                for name, count in looping[:SHOWN_EVENTS]]})]
