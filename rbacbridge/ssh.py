"""SSH to nodes with paramiko: strict host keys, ~/.ssh/config, ProxyJump, timeouts, sudo -n.

Generic on purpose: the nodes part runs iptables with it, verify runs `aws` on the host node.

- Host keys are checked against known_hosts (RejectPolicy). `accept_new=True` is OpenSSH's
  `StrictHostKeyChecking accept-new`: an unknown host's key is recorded; a *changed* key is
  always refused (paramiko raises BadHostKeyException before any policy is asked).
- `~/.ssh/config` (or `ssh_config=`) gives HostName, User, Port, IdentityFile, ProxyJump for a
  host alias; explicit values on the SshTarget win, as on OpenSSH's command line.
- ProxyJump: connect to the jump host (itself resolved the same way, recursively), open a
  `direct-tcpip` channel to the node and run the node's SSH session over it.
- Commands are argv lists: every part is checked (no NUL or newline), the line is
  `shlex.join`ed, and prefixed with `sudo -n --` when asked and the user is not root.
"""

from __future__ import annotations

import getpass
import ipaddress
import os
import select
import shlex
import socket
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from rbacbridge.errors import RbacbridgeError, UsageError

DEFAULT_CONNECT_TIMEOUT = 10.0
DEFAULT_COMMAND_TIMEOUT = 60.0
_known_hosts_lock = threading.Lock()


class SshError(RbacbridgeError):
    """Could not connect, authenticate, verify the host, or run a command in time."""


class HostKeyError(SshError):
    """The node's host key is unknown or changed: refused, nothing was run."""


@dataclass(frozen=True)
class SshTarget:
    host: str  # an address or a ~/.ssh/config alias
    port: int | None = None
    user: str | None = None
    key_file: str | None = None
    known_hosts: str | None = None  # else ~/.ssh/known_hosts
    accept_new: bool = False
    ssh_config: str | None = None  # else ~/.ssh/config when it exists; "none" to ignore
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    command_timeout: float = DEFAULT_COMMAND_TIMEOUT
    label: str | None = None  # how reports name the node (e.g. the Kubernetes node name)

    @property
    def name(self) -> str:
        return self.label or (self.host if not self.port else f"{self.host}:{self.port}")


@dataclass(frozen=True)
class Resolved:
    """A target after ~/.ssh/config: where to connect, as whom, with what, through which jumps."""

    hostname: str
    port: int
    user: str
    key_files: tuple[str, ...]
    proxy_jump: tuple[str, ...] = ()


def parse_host_port(text: str) -> tuple[str, int | None]:
    """HOST, HOST:PORT, [IPv6]:PORT or [IPv6]."""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        return host, (int(rest[1:]) if rest.startswith(":") and rest[1:] else None)
    if text.count(":") == 1:
        host, _, port_text = text.partition(":")
        return host, int(port_text) if port_text else None
    return text, None


def _ssh_config(target: SshTarget):
    import paramiko

    path = target.ssh_config
    if path == "none":
        return None
    file = Path(os.path.expanduser(path or "~/.ssh/config"))
    if not file.is_file():
        if path:
            raise UsageError(f"cannot read ssh config {path}")
        return None
    try:
        return paramiko.SSHConfig.from_path(str(file))
    except Exception as exc:  # noqa: BLE001 - a malformed config is the user's input
        raise UsageError(f"cannot parse ssh config {file}: {exc}") from None


def resolve(target: SshTarget) -> Resolved:
    config = _ssh_config(target)
    entry: dict[str, Any] = config.lookup(target.host) if config is not None else {}
    hostname = entry.get("hostname", target.host)
    port = target.port or int(entry.get("port", 22))
    user = target.user or entry.get("user") or getpass.getuser()
    if target.key_file:
        keys: tuple[str, ...] = (os.path.expanduser(target.key_file),)
    else:
        keys = tuple(os.path.expanduser(k) for k in entry.get("identityfile", []) if os.path.exists(os.path.expanduser(k)))
    jump_text = entry.get("proxyjump", "")
    jumps = tuple(j.strip() for j in jump_text.split(",") if j.strip() and jump_text.lower() != "none")
    return Resolved(hostname=hostname, port=port, user=user, key_files=keys, proxy_jump=jumps)


def _jump_target(spec: str, base: SshTarget) -> SshTarget:
    """ProxyJump entry `[user@]host[:port]` -> a target resolved through the same ssh config."""
    user, _, hostport = spec.rpartition("@")
    host, port = parse_host_port(hostport)
    # The node's key is not assumed for the bastion unless the ssh config gives none.
    return replace(base, host=host, port=port, user=user or None, label=None)


class _AcceptNewPolicy:
    """OpenSSH accept-new: record an unknown host's key. (Changed keys never reach a policy.)"""

    def __init__(self, known_hosts: Path):
        self.known_hosts = known_hosts

    def missing_host_key(self, client, hostname, key) -> None:
        import paramiko

        with _known_hosts_lock:
            self.known_hosts.parent.mkdir(parents=True, exist_ok=True)
            entry = paramiko.hostkeys.HostKeyEntry([hostname], key)
            with open(self.known_hosts, "a", encoding="utf-8") as handle:
                handle.write(entry.to_line())
            os.chmod(self.known_hosts, 0o600)
        client.get_host_keys().add(hostname, key.get_name(), key)


def _known_host_name(hostname: str, port: int) -> str:
    return hostname if port == 22 else f"[{hostname}]:{port}"


class SshSession:
    """One authenticated connection to a node (and, through ProxyJump, its jump hosts)."""

    def __init__(self, target: SshTarget, resolved: Resolved, client, jumps: list["SshSession"]):
        self.target = target
        self.resolved = resolved
        self._client = client
        self._jumps = jumps

    @property
    def user(self) -> str:
        return self.resolved.user

    @property
    def name(self) -> str:
        return self.target.name

    def peer_address(self) -> str | None:
        """The address the SSH connection reached, as the node sees it (SSH_CONNECTION's server IP)."""
        if not self._jumps:
            try:
                return str(self._client.get_transport().getpeername()[0])
            except Exception:  # noqa: BLE001 - fall back to asking the node
                pass
        rc, out, _ = self.run(["printenv", "SSH_CONNECTION"], timeout=self.target.command_timeout)
        parts = out.split()
        return parts[2] if rc == 0 and len(parts) == 4 else None

    def run(self, argv: list[str], sudo: bool = False, timeout: float | None = None) -> tuple[int, str, str]:
        """Run argv on the node; returns (exit code, stdout, stderr). Raises SshError on timeout."""
        line = command_line(argv, sudo=sudo and self.user != "root")
        transport = self._client.get_transport()
        if transport is None or not transport.is_active():
            raise SshError(f"{self.name}: connection closed")
        limit = self.target.command_timeout if timeout is None else timeout
        try:
            channel = transport.open_session(timeout=limit)
            channel.exec_command(line)
        except Exception as exc:  # noqa: BLE001
            raise SshError(f"{self.name}: cannot start command: {exc}") from None
        out, err = bytearray(), bytearray()
        deadline = time.monotonic() + limit
        try:
            while True:
                while channel.recv_ready():
                    out += channel.recv(65536)
                while channel.recv_stderr_ready():
                    err += channel.recv_stderr(65536)
                if channel.eof_received and channel.exit_status_ready() and not (
                    channel.recv_ready() or channel.recv_stderr_ready()
                ):
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise SshError(f"{self.name}: command timed out after {limit:g}s: {shlex.join(argv)}")
                if channel.eof_received:
                    time.sleep(min(remaining, 0.002))  # output done; the exit status is on its way
                else:
                    select.select([channel], [], [], min(remaining, 0.2))
            code = channel.recv_exit_status()
        finally:
            channel.close()
        return code, out.decode("utf-8", "replace"), err.decode("utf-8", "replace")

    def close(self) -> None:
        try:
            self._client.close()
        finally:
            for jump in reversed(self._jumps):
                jump.close()

    def __enter__(self) -> "SshSession":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def command_line(argv: list[str], sudo: bool = False) -> str:
    if not argv or not all(isinstance(a, str) for a in argv):
        raise UsageError("a command is a non-empty list of strings")
    for part in argv:
        if "\x00" in part or "\n" in part or "\r" in part:
            raise UsageError(f"refusing to send a command argument with a control character: {part!r}")
    return shlex.join((["sudo", "-n", "--"] if sudo else []) + list(argv))


def connect(target: SshTarget, _depth: int = 0) -> SshSession:
    """Open and authenticate one connection; raises HostKeyError or SshError (one line)."""
    import paramiko

    if _depth > 8:
        raise UsageError(f"{target.name}: ProxyJump chain too long (a loop in the ssh config?)")
    resolved = resolve(target)
    jumps: list[SshSession] = []
    sock = None
    try:
        if resolved.proxy_jump:
            for spec in resolved.proxy_jump:
                jump_target = _jump_target(spec, target)
                if jumps:
                    # a chain: each jump is reached through the previous one
                    jumps.append(_connect_via(jump_target, jumps[-1], _depth + 1))
                else:
                    jumps.append(connect(jump_target, _depth + 1))
            sock = _direct_tcpip(jumps[-1], resolved.hostname, resolved.port, target.connect_timeout)
        client = _client_for(target)
        _authenticate(client, target, resolved, sock)
    except BaseException:
        for jump in reversed(jumps):
            jump.close()
        raise
    return SshSession(target, resolved, client, jumps)


def _connect_via(target: SshTarget, via: SshSession, depth: int) -> SshSession:
    resolved = resolve(target)
    sock = _direct_tcpip(via, resolved.hostname, resolved.port, target.connect_timeout)
    client = _client_for(target)
    _authenticate(client, target, resolved, sock)
    return SshSession(target, resolved, client, [])


def _direct_tcpip(jump: SshSession, host: str, port: int, timeout: float):
    transport = jump._client.get_transport()
    try:
        return transport.open_channel("direct-tcpip", (host, port), ("127.0.0.1", 0), timeout=timeout)
    except Exception as exc:  # noqa: BLE001
        raise SshError(f"cannot reach {host}:{port} through jump host {jump.name}: {exc}") from None


def _client_for(target: SshTarget):
    import paramiko

    client = paramiko.SSHClient()
    known = Path(os.path.expanduser(target.known_hosts or "~/.ssh/known_hosts"))
    if known.is_file():
        try:
            client.load_host_keys(str(known))
        except Exception as exc:  # noqa: BLE001
            raise UsageError(f"cannot read known_hosts {known}: {exc}") from None
    elif target.known_hosts and not target.accept_new:
        raise UsageError(f"known_hosts file {target.known_hosts} does not exist")
    client.set_missing_host_key_policy(_AcceptNewPolicy(known) if target.accept_new else paramiko.RejectPolicy())
    return client


def _authenticate(client, target: SshTarget, resolved: Resolved, sock) -> None:
    import paramiko

    where = f"{resolved.user}@{resolved.hostname}:{resolved.port}"
    keys = list(resolved.key_files)
    for key in keys:
        if not os.path.isfile(key):
            raise UsageError(f"SSH key {key} does not exist")
    try:
        client.connect(
            resolved.hostname,
            port=resolved.port,
            username=resolved.user,
            key_filename=keys or None,
            # With a configured key, use only it; without one, do what ssh does (agent, ~/.ssh/id_*).
            allow_agent=not keys,
            look_for_keys=not keys,
            timeout=target.connect_timeout,
            banner_timeout=target.connect_timeout,
            auth_timeout=target.connect_timeout,
            channel_timeout=target.connect_timeout,
            sock=sock,
        )
    except paramiko.BadHostKeyException as exc:
        client.close()
        raise HostKeyError(
            f"{target.name}: host key for {_known_host_name(resolved.hostname, resolved.port)} has CHANGED "
            f"(got {exc.key.get_name()} {exc.key.get_fingerprint().hex()}); refused, nothing run"
        ) from None
    except paramiko.AuthenticationException as exc:
        client.close()
        raise SshError(f"{target.name}: authentication failed for {where}: {exc}") from None
    except paramiko.SSHException as exc:
        client.close()
        text = str(exc)
        if "not found in known_hosts" in text:
            raise HostKeyError(
                f"{target.name}: host {_known_host_name(resolved.hostname, resolved.port)} is not in known_hosts; "
                "refused, nothing run (add its key, or use --accept-new-host-keys)"
            ) from None
        raise SshError(f"{target.name}: SSH to {where} failed: {text}") from None
    except (socket.timeout, TimeoutError):
        client.close()
        raise SshError(f"{target.name}: connection to {where} timed out after {target.connect_timeout:g}s") from None
    except OSError as exc:
        client.close()
        raise SshError(f"{target.name}: cannot connect to {where}: {exc.strerror or exc}") from None
    raw = client.get_transport().sock
    if isinstance(raw, socket.socket):
        # Small request/answer packets: without this, Nagle + delayed ACK add ~40 ms to every command.
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def is_ipv4(text: str | None) -> bool:
    try:
        return text is not None and ipaddress.ip_address(text).version == 4
    except ValueError:
        return False
