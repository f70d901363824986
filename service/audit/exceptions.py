"""Errors of the audit domain."""


class AuditError(Exception):
    """Base class for audit errors."""


class UnknownAction(AuditError):
    """An action was recorded that the registry of critical actions does not list."""


class ArchiveError(AuditError):
    """An archive could not be written, read back or verified; nothing was dropped."""


class PartitionError(AuditError):
    """A partition operation is not possible on this database or for this month."""
