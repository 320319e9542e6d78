"""The SSH transport: paramiko, strict host keys, ~/.ssh/config, ProxyJump/ProxyCommand, timeouts, sudo -n.

Generic on purpose: the nodes part runs iptables with it, verify runs `aws` on the host node. It imports
rbacbridge.nodes.session (the Session interface, command_line), never the pods transport or the planning.

    errors         SshError, HostKeyError; how values are quoted in messages
    files          files read for every node, parsed once per version of the file
    keys           the private key: loadable without a passphrase, or held by ssh-agent
    target         SshTarget -> Resolved through ~/.ssh/config; preflight (no network)
    known_hosts    host keys from every known_hosts file; RejectPolicy or accept-new
    proxy_command  ProxyCommand run as OpenSSH runs it
    connection     SshSession (a Session) and connect

- Host keys are checked against known_hosts (RejectPolicy). `accept_new=True` is OpenSSH's
  `StrictHostKeyChecking accept-new`: an unknown host's key is recorded; a *changed* key is
  always refused (paramiko raises BadHostKeyException before any policy is asked).
- `~/.ssh/config` (or `ssh_config=`) gives HostName, User, Port, IdentityFile, ProxyJump,
  ProxyCommand, UserKnownHostsFile, GlobalKnownHostsFile and StrictHostKeyChecking for a host
  alias; explicit values on the SshTarget win, as on OpenSSH's command line.
  `StrictHostKeyChecking no`/`off` is read as accept-new (a changed key is still refused), never as
  "accept anything"; `ask` is read as yes (nobody can be asked).
- ProxyJump: connect to the jump host (itself resolved the same way, recursively), open a
  `direct-tcpip` channel to the node and run the node's SSH session over it.
- ProxyCommand: run like OpenSSH does (`/bin/sh -c "exec COMMAND"`), its stdin/stdout carrying the
  SSH session; the tokens %h %p %r %n %% are expanded by us from validated parts (a host name or
  address, a port number, a user name), never from raw text, so no token can smuggle shell syntax.
- `preflight(target)` checks everything that needs no network (ssh config, keys, known_hosts,
  jump hosts) and raises UsageError (exit 2) before any node is contacted; `connect` calls it.
- Commands are argv lists: every part is checked (no NUL or newline), the line is
  `shlex.join`ed, and prefixed with `sudo -n --` when asked and the user is not root.
"""

import logging

from rbacbridge.nodes.ssh.connection import SshSession, connect
from rbacbridge.nodes.ssh.errors import HostKeyError, SshError
from rbacbridge.nodes.ssh.keys import check_key_file
from rbacbridge.nodes.ssh.target import (ACCEPT_NEW, DEFAULT_COMMAND_TIMEOUT, DEFAULT_CONNECT_TIMEOUT, STRICT, Resolved,
                                         SshTarget, check_settings, is_ipv4, parse_host_port, preflight, resolve)

# paramiko's transport thread logs its own failures (with a traceback) at ERROR; with no handler
# configured Python would print them on stderr. rbacbridge reports each failure in one line itself.
logging.getLogger("paramiko").addHandler(logging.NullHandler())
logging.getLogger("paramiko").propagate = False

__all__ = ["ACCEPT_NEW", "DEFAULT_COMMAND_TIMEOUT", "DEFAULT_CONNECT_TIMEOUT", "STRICT", "HostKeyError", "Resolved",
           "SshError", "SshSession", "SshTarget", "check_key_file", "check_settings", "connect", "is_ipv4",
           "parse_host_port", "preflight", "resolve"]
