"""Moved to rbacbridge.nodes.ssh (the SSH transport); this import path stays for verify, the tests and bench."""

from rbacbridge.nodes.session import command_line
from rbacbridge.nodes.ssh import (ACCEPT_NEW, DEFAULT_COMMAND_TIMEOUT, DEFAULT_CONNECT_TIMEOUT, STRICT, HostKeyError,
                                  Resolved, SshError, SshSession, SshTarget, check_key_file, check_settings, connect,
                                  is_ipv4, parse_host_port, preflight, resolve)
from rbacbridge.nodes.ssh.known_hosts import client_for as _client_for  # noqa: F401 - read by tests
from rbacbridge.nodes.ssh.known_hosts import known_host_name as _known_host_name  # noqa: F401 - read by tests

__all__ = ["ACCEPT_NEW", "DEFAULT_COMMAND_TIMEOUT", "DEFAULT_CONNECT_TIMEOUT", "STRICT", "HostKeyError", "Resolved",
           "SshError", "SshSession", "SshTarget", "check_key_file", "check_settings", "command_line", "connect", "is_ipv4",
           "parse_host_port", "preflight", "resolve"]
