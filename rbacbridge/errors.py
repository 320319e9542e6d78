"""Errors the CLI turns into one line and an exit code, and the exit codes themselves."""

# Exit codes, the same for every command (the README's exit-code table lists them).
EXIT_OK = 0
EXIT_FAILED = 1  # a step failed, a verify cell mismatched, an audit finding reached --fail-on
EXIT_USAGE = 2  # bad input, or a change refused (no --yes without a terminal); nothing changed
EXIT_INCOMPLETE = 3  # could not finish checking (cluster or AWS unreachable): no verdict
EXIT_CHANGES_PENDING = 4  # `plan --exit-code`: the plan has changes
EXIT_INTERRUPTED = 130  # Ctrl-C


class RbacbridgeError(Exception):
    """Something went wrong while talking to an outside system: exit 1."""

    exit_code = EXIT_FAILED


class UsageError(RbacbridgeError):
    """Bad input (flags, config, credentials, account): exit 2, before anything changes."""

    exit_code = EXIT_USAGE


class IncompleteError(RbacbridgeError):
    """A check could not be carried out (no verdict either way): exit 3."""

    exit_code = EXIT_INCOMPLETE


SHOWN_LIMIT = 60  # characters of a user's value quoted back in an error
LINE_LIMIT = 300  # characters of one error line

import re as _re  # noqa: E402 - stdlib, cheap

# What no error line may carry, whatever echoed it: the user-info of a URL (`https://user:password@host`)
# and AWS access key ids. rbacbridge.cli passes every error line (and a --debug trace) through redact().
_USER_INFO = _re.compile(r"(?i)\b([a-z][a-z0-9+.-]{0,20}://)[^\s/?#@'\"]*@")
_ACCESS_KEY_ID = _re.compile(r"\b(AKIA|ASIA|ABIA|ACCA)[A-Z0-9]{16}\b")


def redact(text: str) -> str:
    """`text` without URL user-info (`scheme://…@host`) or an AWS access key id (`AKIA…`)."""
    text = _USER_INFO.sub(lambda m: m.group(1) + "…@", text)
    return _ACCESS_KEY_ID.sub(lambda m: m.group(1) + "…", text)


def shown(value: object, limit: int = SHOWN_LIMIT) -> str:
    """A value as an error line quotes it: repr, one line, at most `limit` characters (then …), without
    URL user-info or an access key id (redact)."""
    text = value if isinstance(value, str) else str(value)
    text = redact(str.__str__(text) if isinstance(text, str) else text)  # a str subclass prints as plain text
    if len(text) > limit:
        return repr(text[:limit]) + "…"
    return repr(text)


def one_line(text: str, limit: int = LINE_LIMIT) -> str:
    """Collapse to one line of at most `limit` characters."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


INTERRUPTED_MESSAGE = ("interrupted: nothing more is changed; run the same command again to finish "
                       "(it plans again from live state)")


class Interrupted(RbacbridgeError):
    """Ctrl-C: exit 130; a re-run plans again from live state."""

    exit_code = EXIT_INTERRUPTED
