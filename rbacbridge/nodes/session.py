"""The one interface between the nodes' planning and the transports that reach a node.

A `Session` runs an argv on one node and hands back (exit code, stdout, stderr). Two transports provide
one: rbacbridge.nodes.ssh (`SshSession`: paramiko, strict host keys, `sudo -n`) and rbacbridge.nodes.pods
(`PodSession`: exec in a hostNetwork pod through the Kubernetes API, as root). Planning and the scripts
sent to a node use only this interface; rbacbridge.nodes.transport picks the transport. The transports
import this module, never each other and never the planning.
"""

from __future__ import annotations

import shlex
from typing import Protocol

from rbacbridge.errors import RbacbridgeError, UsageError


class NodeError(RbacbridgeError):
    pass


class Session(Protocol):
    """One open way to run commands on one node (one per node per run, reused by every step)."""

    @property
    def name(self) -> str:  # how reports name the node
        ...

    @property
    def user(self) -> str:  # who runs the commands: anyone but root gets `sudo -n` where asked
        ...

    def run(self, argv: list[str], sudo: bool = False, timeout: float | None = None) -> tuple[int, str, str]:
        ...

    def peer_address(self) -> str | None:  # the node's address as the transport reached it, if known
        ...

    def close(self) -> None:
        ...


def command_line(argv: list[str], sudo: bool = False) -> str:
    """The one line a transport sends: every part checked (no NUL, no newline) and quoted."""
    if not argv or not all(isinstance(a, str) for a in argv):
        raise UsageError("a command is a non-empty list of strings")
    for part in argv:
        if "\x00" in part or "\n" in part or "\r" in part:
            raise UsageError(f"refusing to send a command argument with a control character: {part!r}")
    return shlex.join((["sudo", "-n", "--"] if sudo else []) + list(argv))
