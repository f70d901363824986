"""Errors of the accounts domain."""


class AccountsError(Exception):
    """Base class for accounts errors."""


class InvalidUser(AccountsError):
    """A user's email, name or role is not acceptable."""


class UserExists(AccountsError):
    """A user with this email already exists."""


class UserNotFound(AccountsError):
    """No such user."""


class TokenNotFound(AccountsError):
    """No such API token."""


class InactiveUser(AccountsError):
    """The user is deactivated: no new token for them."""
