"""Metrics of the webhooks domain, registered by its `init_app`."""

from service.metrics import SharedCounter

DELIVERIES = SharedCounter("racine_webhooks_deliveries", "Webhook deliveries by provider and outcome.",
                           ("provider", "outcome"))
EVENTS = SharedCounter("racine_webhooks_events", "Event processing attempts by outcome.",
                       ("outcome",))

ALL = (DELIVERIES, EVENTS)
