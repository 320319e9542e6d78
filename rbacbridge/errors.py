"""Errors the CLI turns into one line and an exit code."""


class RbacbridgeError(Exception):
    """Something went wrong while talking to an outside system: exit 1."""

    exit_code = 1


class UsageError(RbacbridgeError):
    """Bad input (flags, config, credentials, account): exit 2, before anything changes."""

    exit_code = 2
