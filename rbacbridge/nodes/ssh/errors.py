"""The SSH transport's errors, and how it quotes what it shows in one."""

from __future__ import annotations

from typing import Any

from rbacbridge.errors import RbacbridgeError


class SshError(RbacbridgeError):
    """Could not connect, authenticate, verify the host, or run a command in time."""


class HostKeyError(SshError):
    """The node's host key is unknown or changed: refused, nothing was run."""


def short(text: Any, limit: int = 80) -> str:
    """A value from the user's input, quoted and cut for a message."""
    text = str(text)
    return repr(text if len(text) <= limit else text[:limit] + "...")


def one_line(exc: BaseException) -> str:
    """An exception's message on one line."""
    text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return " ".join(str(text).split())[:200]
