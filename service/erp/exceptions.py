"""Errors of the ERP domain: what went wrong talking to the ERP, and with a sync."""


class ErpError(Exception):
    """Base class for errors of the ERP domain; the message is safe to store and show."""


class ErpNotConfigured(ErpError):
    """ERP_API_URL is not set: there is no ERP to sync with."""


class ErpUnavailable(ErpError):
    """The ERP could not be reached or failed (connection, timeout, 5xx, 429): transient."""


class ErpTimeout(ErpUnavailable):
    """The ERP did not connect or answer within its timeouts."""


class ErpServerError(ErpUnavailable):
    """The ERP answered with a server error (5xx) or asked us to slow down (429)."""


class ErpCredentialsRejected(ErpError):
    """The ERP refused the token (401 or 403): retrying will not help; fix ERP_API_TOKEN."""


class ErpBadResponse(ErpError):
    """The ERP answered something that is not the stock API's JSON (or another 4xx)."""


class SyncPaused(ErpError):
    """The ERP sync is paused; resume it first."""


class InvalidReason(ErpError):
    """A pause without a reason."""


class SyncFailed(ErpError):
    """A sync run failed for good (its retries, if any, used up); the run row says why."""
