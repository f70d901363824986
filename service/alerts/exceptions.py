"""Errors of the escalation policy."""


class AlertsError(Exception):
    """Base class for the alerts domain's errors."""


class IncidentNotFound(AlertsError):
    """No incident has the given id."""


class InvalidTransition(AlertsError):
    """The incident's status does not allow the action (acknowledging a resolved one)."""


class ChannelError(AlertsError):
    """A channel could not deliver a message; the text is safe to store (no secrets)."""


class ChannelNotConfigured(AlertsError):
    """The channel has no URL in the settings."""
