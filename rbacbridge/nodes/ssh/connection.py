"""One authenticated SSH connection to a node (`SshSession`, a rbacbridge.nodes.session.Session): TCP
without Nagle, ProxyJump chains over direct-tcpip channels or a ProxyCommand, strict host keys, and
commands run with a deadline (`sudo -n --` where asked and the user is not root)."""

from __future__ import annotations

import select
import shlex
import socket
import time
from typing import Any

from rbacbridge.errors import UsageError
from rbacbridge.nodes.session import command_line
from rbacbridge.nodes.ssh.errors import HostKeyError, SshError, one_line
from rbacbridge.nodes.ssh.known_hosts import client_for, known_host_name
from rbacbridge.nodes.ssh.proxy_command import start_proxy_command
from rbacbridge.nodes.ssh.target import Resolved, SshTarget, jump_target, preflight, resolve


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

    def is_open(self) -> bool:
        """Can the connection still run commands? (The nodes' factory reuses it, else connects again.)"""
        transport = self._client.get_transport()
        return transport is not None and transport.is_active()

    def peer_address(self) -> str | None:
        """The address the SSH connection reached, as the node sees it (SSH_CONNECTION's server IP)."""
        transport = self._client.get_transport()
        if not self._jumps and isinstance(getattr(transport, "sock", None), socket.socket):  # not via a ProxyCommand
            try:
                return str(transport.getpeername()[0])
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


def connect(target: SshTarget, _depth: int = 0) -> SshSession:
    """Open and authenticate one connection; raises UsageError (before any contact), HostKeyError or SshError."""
    if _depth == 0:
        preflight(target)  # the whole chain is checked before the first packet is sent
    elif _depth > 8:
        raise UsageError(f"{target.name}: ProxyJump chain too long (a loop in the ssh config?)")
    resolved = resolve(target)
    jumps: list[SshSession] = []
    sock = None
    try:
        if resolved.proxy_jump:
            for spec in resolved.proxy_jump:
                hop = jump_target(spec, target)
                if jumps:
                    # a chain: each jump is reached through the previous one
                    jumps.append(_connect_via(hop, jumps[-1], _depth + 1))
                else:
                    jumps.append(connect(hop, _depth + 1))
            sock = _direct_tcpip(jumps[-1], resolved.hostname, resolved.port, target.connect_timeout)
        elif resolved.proxy_command:
            sock = start_proxy_command(resolved.proxy_command, target)
        client = client_for(resolved)
        _authenticate(client, target, resolved, sock)
    except BaseException:
        if hasattr(sock, "stderr_tail"):
            sock.close()
        for jump in reversed(jumps):
            jump.close()
        raise
    return SshSession(target, resolved, client, jumps)


def _connect_via(target: SshTarget, via: SshSession, depth: int) -> SshSession:
    resolved = resolve(target)
    sock = _direct_tcpip(via, resolved.hostname, resolved.port, target.connect_timeout)
    client = client_for(resolved)
    _authenticate(client, target, resolved, sock)
    return SshSession(target, resolved, client, [])


def _direct_tcpip(jump: SshSession, host: str, port: int, timeout: float):
    transport = jump._client.get_transport()
    try:
        return transport.open_channel("direct-tcpip", (host, port), ("127.0.0.1", 0), timeout=timeout)
    except Exception as exc:  # noqa: BLE001
        raise SshError(f"cannot reach {host}:{port} through jump host {jump.name}: {exc}") from None


def _tcp_connect(hostname: str, port: int, timeout: float) -> socket.socket:
    """The TCP connection paramiko would open (every address of the name in turn), but with Nagle off
    from the first packet and delayed ACKs off (see _NodeSocket)."""
    import errno

    from paramiko.ssh_exception import NoValidConnectionsError

    infos = socket.getaddrinfo(hostname, port, socket.AF_UNSPEC, socket.SOCK_STREAM)
    addresses = [(info[0], info[4]) for info in infos if info[1] == socket.SOCK_STREAM] or [(i[0], i[4]) for i in infos]
    errors: dict[Any, OSError] = {}
    for family, address in addresses:
        sock = _NodeSocket(family, socket.SOCK_STREAM)
        try:
            sock.settimeout(timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.connect(address)
            return sock
        except OSError as exc:
            sock.close()
            if exc.errno not in (errno.ECONNREFUSED, errno.EHOSTUNREACH):
                raise
            errors[address] = exc
    raise NoValidConnectionsError(errors)


class _NodeSocket(socket.socket):
    """SSH is request/answer in small packets. Without TCP_NODELAY (set before the handshake, not
    after it) the client's Nagle waits for the node's delayed ACK (~40 ms) during authentication; and
    sshd does not set TCP_NODELAY for sessions without a terminal, so its answer to the first channel
    open waits for *our* delayed ACK of the messages it sent after authentication (another ~40 ms).
    TCP_QUICKACK before each read acknowledges at once. Neither changes what is sent or checked."""

    if hasattr(socket, "TCP_QUICKACK"):
        def recv(self, bufsize: int, *flags: int) -> bytes:
            try:
                self.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
            except OSError:
                pass
            return super().recv(bufsize, *flags)


def _authenticate(client, target: SshTarget, resolved: Resolved, sock) -> None:
    import paramiko

    where = f"{resolved.user}@{resolved.hostname}:{resolved.port}"
    keys = list(resolved.key_files)
    configured = bool(keys or resolved.agent_key_files)
    try:
        if sock is None:
            sock = _tcp_connect(resolved.hostname, resolved.port, target.connect_timeout)
        client.connect(
            resolved.hostname,
            port=resolved.port,
            username=resolved.user,
            key_filename=keys or None,
            # With a configured key, use only it (through the agent when it is encrypted there); without
            # one, do what ssh does (agent, ~/.ssh/id_*).
            allow_agent=bool(resolved.agent_key_files) or not configured,
            look_for_keys=not configured,
            timeout=target.connect_timeout,
            banner_timeout=target.connect_timeout,
            auth_timeout=target.connect_timeout,
            channel_timeout=target.connect_timeout,
            sock=sock,
        )
    except paramiko.BadHostKeyException as exc:
        client.close()
        raise HostKeyError(
            f"{target.name}: host key for {known_host_name(resolved.hostname, resolved.port)} has CHANGED "
            f"(got {exc.key.get_name()} {exc.key.get_fingerprint().hex()}); refused, nothing run"
        ) from None
    except paramiko.AuthenticationException as exc:
        client.close()
        raise SshError(f"{target.name}: authentication failed for {where}: {exc}") from None
    except paramiko.ProxyCommandFailure as exc:
        reason = _proxy_reason(sock, exc)
        client.close()
        raise SshError(f"{target.name}: ProxyCommand failed: {reason}") from None
    except paramiko.SSHException as exc:
        reason = _proxy_reason(sock, exc)
        client.close()
        text = str(exc)
        if "not found in known_hosts" in text:
            raise HostKeyError(
                f"{target.name}: host {known_host_name(resolved.hostname, resolved.port)} is not in known_hosts; "
                "refused, nothing run (add its key, or use --accept-new-host-keys)"
            ) from None
        if sock is not None and hasattr(sock, "stderr_tail"):
            raise SshError(f"{target.name}: SSH to {where} through ProxyCommand failed: {reason}") from None
        raise SshError(f"{target.name}: SSH to {where} failed: {text}") from None
    except (socket.timeout, TimeoutError):
        client.close()
        raise SshError(f"{target.name}: connection to {where} timed out after {target.connect_timeout:g}s") from None
    except OSError as exc:
        client.close()
        raise SshError(f"{target.name}: cannot connect to {where}: {exc.strerror or exc}") from None


def _proxy_reason(sock, exc: BaseException) -> str:
    """The proxy's own last stderr line says more than paramiko's 'Error reading SSH protocol banner'."""
    tail = sock.stderr_tail() if hasattr(sock, "stderr_tail") else ""
    code = None
    if hasattr(sock, "process"):
        time.sleep(0.05)  # a proxy that failed exits right after its last words
        code = sock.process.poll()
    parts = [tail or one_line(exc)]
    if code is not None:
        parts.append(f"(the command exited {code})")
    return " ".join(parts)
