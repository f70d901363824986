"""Errors of the runbooks domain."""


class RunbooksError(Exception):
    """Base class of the runbooks domain's errors."""


class RunNotFound(RunbooksError):
    """No runbook run has that id."""
