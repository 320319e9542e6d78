"""SSH to nodes with paramiko: strict host keys, ~/.ssh/config, ProxyJump/ProxyCommand, timeouts, sudo -n.

Generic on purpose: the nodes part runs iptables with it, verify runs `aws` on the host node.

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

from __future__ import annotations

import getpass
import ipaddress
import logging
import os
import re
import select
import shlex
import socket
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from rbacbridge.errors import RbacbridgeError, UsageError
from rbacbridge.nodes.session import command_line

# paramiko's transport thread logs its own failures (with a traceback) at ERROR; with no handler
# configured Python would print them on stderr. rbacbridge reports each failure in one line itself.
logging.getLogger("paramiko").addHandler(logging.NullHandler())
logging.getLogger("paramiko").propagate = False

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


STRICT = "yes"
ACCEPT_NEW = "accept-new"
# StrictHostKeyChecking as OpenSSH spells it -> what rbacbridge does. `no` would accept a changed key
# silently: rbacbridge never does that, it records unknown keys (accept-new) and says so.
_STRICT_VALUES = {"yes": STRICT, "true": STRICT, "ask": STRICT, "accept-new": ACCEPT_NEW,
                  "no": ACCEPT_NEW, "off": ACCEPT_NEW, "false": ACCEPT_NEW}
_HOSTNAME = re.compile(r"^[A-Za-z0-9_]([A-Za-z0-9._-]{0,252})$")
_USER = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._@-]{0,127}$")
_PUBLIC_KEY = re.compile(r"^(ssh-|ecdsa-|sk-ssh-|sk-ecdsa-)[\w@.-]+ AAAA[0-9A-Za-z+/=]+")


@dataclass(frozen=True)
class Resolved:
    """A target after ~/.ssh/config: where to connect, as whom, with what, through which jumps."""

    hostname: str
    port: int
    user: str
    key_files: tuple[str, ...]  # loadable without a passphrase
    proxy_jump: tuple[str, ...] = ()
    proxy_command: str | None = None  # tokens already expanded
    known_hosts: tuple[str, ...] = ()  # user files: read all, new keys go to the first
    global_known_hosts: tuple[str, ...] = ()  # read only
    host_keys: str = STRICT  # STRICT or ACCEPT_NEW
    notes: tuple[str, ...] = ()
    agent_key_files: tuple[str, ...] = ()  # encrypted keys the local ssh-agent holds: authenticate through it


def parse_host_port(text: str) -> tuple[str, int | None]:
    """HOST, HOST:PORT, [IPv6]:PORT or [IPv6]."""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        return host, (int(rest[1:]) if rest.startswith(":") and rest[1:] else None)
    if text.count(":") == 1:
        host, _, port_text = text.partition(":")
        return host, int(port_text) if port_text else None
    return text, None


def _short(text: Any, limit: int = 80) -> str:
    text = str(text)
    return repr(text if len(text) <= limit else text[:limit] + "...")


# Files read for every node (ssh config, key files, known_hosts) are parsed once per version of the
# file, not once per node and again per connection: with N nodes and an N-line known_hosts, parsing
# it per connection costs O(N^2). A version is (device, inode, size, mtime, ctime); only a file left
# unchanged for _SETTLED seconds is reused, so a rewrite inside the file system's timestamp granularity
# (same size, same mtime) cannot hand out an old parse; accept-new's appends make a new version.
_parsed: dict[tuple, Any] = {}
_SETTLED = 2.0


def _cached(kind: str, path: str, parse):
    """parse(path), reused while the file is unchanged; errors are raised every time, never cached."""
    try:
        st = os.stat(path)
    except OSError:
        return parse(path)  # let the parser report the missing or unreadable file
    key = (kind, path, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    if key in _parsed:
        return _parsed[key]
    value = parse(path)
    if time.time() - max(st.st_mtime, st.st_ctime) > _SETTLED:
        _parsed[key] = value
    return value


def _ssh_config(target: SshTarget):
    path = target.ssh_config
    if path == "none":
        return None
    file = Path(os.path.expanduser(path or "~/.ssh/config"))
    if not file.is_file():
        if path:
            raise UsageError(f"ssh config {_short(path)} does not exist (give a file, or --ssh-config none)")
        return None
    try:
        return _cached("ssh_config", str(file), _parse_ssh_config)
    except Exception as exc:  # noqa: BLE001 - a malformed or unreadable config is the user's input
        raise UsageError(f"cannot read ssh config {file}: {_one_line(exc)}") from None


def _parse_ssh_config(path: str):
    import paramiko

    class RawProxyCommandConfig(paramiko.SSHConfig):
        # ProxyCommand tokens are expanded by `_expand` from validated parts, not by paramiko.
        TOKENS_BY_CONFIG_KEY = {**paramiko.SSHConfig.TOKENS_BY_CONFIG_KEY, "proxycommand": []}

    return RawProxyCommandConfig.from_path(path)


def _one_line(exc: BaseException) -> str:
    text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return " ".join(str(text).split())[:200]


def _check_hostname(value: str, where: str) -> str:
    try:
        ipaddress.ip_address(value)
        return value
    except ValueError:
        pass
    if not isinstance(value, str) or not _HOSTNAME.fullmatch(value):
        raise UsageError(f"invalid host name {_short(value)} ({where}): letters, digits, '.', '_' and '-' only")
    return value


def _check_user(value: str, where: str) -> str:
    if not isinstance(value, str) or not _USER.fullmatch(value):
        raise UsageError(f"invalid SSH user {_short(value)} ({where}): letters, digits, '.', '_', '@' and '-' only")
    return value


def _expand(template: str, what: str, tokens: dict[str, str | None]) -> str:
    """OpenSSH's %-tokens, from validated values only; an unknown token is refused."""
    out, i = [], 0
    while i < len(template):
        char = template[i]
        if char != "%":
            out.append(char)
            i += 1
            continue
        token = template[i:i + 2]
        if token == "%%":
            out.append("%")
        elif token in tokens and tokens[token] is not None:
            out.append(tokens[token])
        elif token in tokens:
            raise UsageError(f"{what}: token {token} cannot be used here (the local user name is not a plain name)")
        else:
            raise UsageError(f"{what}: unsupported token {_short(token)} (rbacbridge expands {' '.join(sorted(tokens))} and %%)")
        i += 2
    return "".join(out)


def _in_agent(path: str) -> bool:
    """Does the local ssh-agent (SSH_AUTH_SOCK) hold the key whose public half is PATH.pub?"""
    import base64

    import paramiko

    try:
        with open(path + ".pub", encoding="ascii") as handle:
            blob = base64.b64decode(handle.read().split()[1])
    except (OSError, IndexError, ValueError):
        return False
    if not os.environ.get("SSH_AUTH_SOCK"):
        return False
    agent = paramiko.Agent()
    try:
        return any(key.asbytes() == blob for key in agent.get_keys())
    finally:
        agent.close()


def check_key_file(path: str) -> bool:
    """The private key must load without a passphrase (rbacbridge never prompts), or be encrypted and
    held by the local ssh-agent (then True: use the agent, as OpenSSH does); else UsageError.
    Checked once per version of the file (every node names the same key)."""
    return _cached("key", path, _check_key_file)


def _check_key_file(path: str) -> bool:
    import paramiko

    shown = _short(path, 120)
    try:
        with open(path, "rb") as handle:
            head = handle.read(4096)
    except FileNotFoundError:
        raise UsageError(f"SSH key {shown} does not exist") from None
    except OSError as exc:
        raise UsageError(f"cannot read SSH key {shown}: {_one_line(exc)}") from None
    text = head.decode("ascii", "replace").strip()
    if _PUBLIC_KEY.match(text):
        hint = f" (the private key is usually {path[:-4]!r})" if path.endswith(".pub") else ""
        raise UsageError(f"SSH key {shown} is a public key; give the private key{hint}")
    if text.startswith("PuTTY-User-Key-File"):
        raise UsageError(f"SSH key {shown} is a PuTTY key; convert it: puttygen KEY -O private-openssh -o KEY.pem")
    try:
        paramiko.PKey.from_path(path)
    except (TypeError, paramiko.PasswordRequiredException):
        if _in_agent(path):
            return True
        raise UsageError(f"SSH key {shown} is encrypted and rbacbridge does not ask for passphrases: "
                         "load it into ssh-agent (ssh-add, with its .pub beside it) or give an unencrypted key") from None
    except OSError as exc:
        raise UsageError(f"cannot read SSH key {shown}: {_one_line(exc)}") from None
    except Exception as exc:  # noqa: BLE001 - anything else: not a key paramiko can use
        reason = "unsupported key type" if type(exc).__name__ == "UnknownKeyType" else "not a private key in a format paramiko reads"
        raise UsageError(f"SSH key {shown}: {reason} (OpenSSH or PEM ed25519, ecdsa or rsa)") from None
    return False


def resolve(target: SshTarget) -> Resolved:
    """Apply ~/.ssh/config and check every part; raises UsageError (nothing contacted)."""
    config = _ssh_config(target)
    where = f"node {target.name}"
    entry: dict[str, Any] = config.lookup(target.host) if config is not None else {}
    hostname = _check_hostname(entry.get("hostname", target.host), where)
    try:
        port = target.port or int(entry.get("port", 22))
    except ValueError:
        raise UsageError(f"invalid Port {_short(entry.get('port'))} for {target.host} in the ssh config") from None
    if not 0 < port < 65536:
        raise UsageError(f"invalid SSH port {port} for {target.name}")
    user = _check_user(target.user or entry.get("user") or getpass.getuser(), where)
    home = os.path.expanduser("~")
    local_user = getpass.getuser()
    tokens = {"%h": hostname, "%p": str(port), "%r": user, "%n": _check_hostname(target.host, where),
              "%u": local_user if _USER.fullmatch(local_user) else None, "%d": home}
    if target.key_file:
        keys: tuple[str, ...] = (os.path.expanduser(target.key_file),)
    else:
        # OpenSSH skips IdentityFile entries that do not exist; an existing one must be a usable key.
        keys = tuple(os.path.expanduser(k) for k in entry.get("identityfile", []) if os.path.exists(os.path.expanduser(k)))
    in_agent = tuple(key for key in keys if check_key_file(key))
    keys = tuple(key for key in keys if key not in in_agent)
    jump_text = entry.get("proxyjump", "") or ""
    jumps = tuple(j.strip() for j in jump_text.split(",") if j.strip() and jump_text.lower() != "none")
    proxy_command = entry.get("proxycommand")  # None for `ProxyCommand none`
    if proxy_command is not None:
        if jumps:
            raise UsageError(f"the ssh config gives both ProxyJump and ProxyCommand for {target.host}: keep one")
        proxy_command = _expand(proxy_command, f"ProxyCommand for {target.host}", {k: v for k, v in tokens.items() if k in ("%h", "%p", "%r", "%n")})
    files = {"%d": home, "%u": tokens["%u"], "%h": hostname, "%p": str(port), "%r": user, "%n": target.host}
    if target.known_hosts:
        known = (os.path.expanduser(target.known_hosts),)
    else:
        text = entry.get("userknownhostsfile", "~/.ssh/known_hosts ~/.ssh/known_hosts2")
        known = tuple(os.path.expanduser(_expand(f, "UserKnownHostsFile", files)) for f in text.split() if f.lower() != "none")
        if not known:
            raise UsageError(f"UserKnownHostsFile none for {target.host}: rbacbridge needs a known_hosts file to verify host keys")
    global_text = entry.get("globalknownhostsfile", "/etc/ssh/ssh_known_hosts /etc/ssh/ssh_known_hosts2")
    global_known = tuple(os.path.expanduser(_expand(f, "GlobalKnownHostsFile", files)) for f in global_text.split() if f.lower() != "none")
    notes: list[str] = []
    host_keys = STRICT
    if target.accept_new:
        host_keys = ACCEPT_NEW
    elif "stricthostkeychecking" in entry:
        value = str(entry["stricthostkeychecking"]).lower()
        if value not in _STRICT_VALUES:
            raise UsageError(f"invalid StrictHostKeyChecking {_short(value)} for {target.host} in the ssh config")
        host_keys = _STRICT_VALUES[value]
        if value in ("no", "off", "false"):
            notes.append(f"{target.name}: the ssh config says StrictHostKeyChecking {value}; rbacbridge treats it as "
                         "accept-new (unknown host keys are recorded, a changed key is still refused)")
    for path in known + global_known:
        if os.path.exists(path) and not os.path.isfile(path):
            raise UsageError(f"known_hosts {_short(path)} is not a file")
    if host_keys == STRICT and not any(os.path.isfile(p) for p in known + global_known):
        looked = ", ".join(known)
        raise UsageError(f"no known_hosts file for {target.name} (looked for {looked}): add the node's host key, "
                         "or use --accept-new-host-keys")
    return Resolved(hostname=hostname, port=port, user=user, key_files=keys, agent_key_files=in_agent, proxy_jump=jumps,
                    proxy_command=proxy_command, known_hosts=known, global_known_hosts=global_known,
                    host_keys=host_keys, notes=tuple(notes))


def check_settings(target: SshTarget) -> None:
    """What can be checked before the nodes are known (they may come from the cluster later):
    the ssh config parses, the key given loads, the known_hosts given exists."""
    _ssh_config(target)
    if target.key_file:
        check_key_file(os.path.expanduser(target.key_file))
    if target.known_hosts and not target.accept_new and not os.path.isfile(os.path.expanduser(target.known_hosts)):
        raise UsageError(f"known_hosts file {_short(target.known_hosts)} does not exist (or use --accept-new-host-keys)")


def preflight(target: SshTarget, _depth: int = 0) -> list[str]:
    """Check a target and its jump hosts without touching the network; returns notes to show.

    Raises UsageError (exit 2) for anything the user must fix: ssh config, keys, known_hosts.
    """
    if _depth > 8:
        raise UsageError(f"{target.name}: ProxyJump chain too long (a loop in the ssh config?)")
    resolved = resolve(target)
    notes = list(resolved.notes)
    for spec in resolved.proxy_jump:
        notes += preflight(_jump_target(spec, target), _depth + 1)
    return notes


def _jump_target(spec: str, base: SshTarget) -> SshTarget:
    """ProxyJump entry `[user@]host[:port]` -> a target resolved through the same ssh config."""
    user, _, hostport = spec.rpartition("@")
    try:
        host, port = parse_host_port(hostport)
    except ValueError:
        raise UsageError(f"invalid ProxyJump {_short(spec)} in the ssh config") from None
    _check_hostname(host, "ProxyJump")
    if user:
        _check_user(user, "ProxyJump")
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
                jump_target = _jump_target(spec, target)
                if jumps:
                    # a chain: each jump is reached through the previous one
                    jumps.append(_connect_via(jump_target, jumps[-1], _depth + 1))
                else:
                    jumps.append(connect(jump_target, _depth + 1))
            sock = _direct_tcpip(jumps[-1], resolved.hostname, resolved.port, target.connect_timeout)
        elif resolved.proxy_command:
            sock = _ProxyCommand(resolved.proxy_command, target)
        client = _client_for(resolved)
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
    client = _client_for(resolved)
    _authenticate(client, target, resolved, sock)
    return SshSession(target, resolved, client, [])


def _direct_tcpip(jump: SshSession, host: str, port: int, timeout: float):
    transport = jump._client.get_transport()
    try:
        return transport.open_channel("direct-tcpip", (host, port), ("127.0.0.1", 0), timeout=timeout)
    except Exception as exc:  # noqa: BLE001
        raise SshError(f"cannot reach {host}:{port} through jump host {jump.name}: {exc}") from None


def _proxy_command_class():
    import paramiko

    class ProxyCommand(paramiko.ProxyCommand):
        """paramiko's ProxyCommand, started as OpenSSH does (`sh -c "exec CMD"`), its stderr kept in a
        file (never a pipe nobody reads) for the error message, and reaped on close."""

        def __init__(self, command: str, target: SshTarget):
            import subprocess
            import tempfile

            self.cmd = ["/bin/sh", "-c", "exec " + command]
            self.stderr_file = tempfile.TemporaryFile()
            try:
                self.process = subprocess.Popen(self.cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                                stderr=self.stderr_file, bufsize=0, start_new_session=True)
            except OSError as exc:
                self.stderr_file.close()
                raise SshError(f"{target.name}: cannot start ProxyCommand: {_one_line(exc)}") from None
            self.timeout = None
            self.command = command

        def recv(self, size: int) -> bytes:
            # Like a socket: whatever is there (b"" at end of file). paramiko's own loops on EOF until
            # its timeout, so a proxy that died would cost the whole connect timeout.
            try:
                ready, _, _ = select.select([self.process.stdout], [], [], self.timeout)
                if not ready:
                    raise socket.timeout()
                return os.read(self.process.stdout.fileno(), size)
            except socket.timeout:
                raise
            except (OSError, ValueError) as exc:
                raise paramiko.ProxyCommandFailure(self.command, getattr(exc, "strerror", None) or str(exc)) from None

        def stderr_tail(self) -> str:
            try:
                self.stderr_file.seek(0)
                lines = [l.strip() for l in self.stderr_file.read().decode("utf-8", "replace").splitlines() if l.strip()]
            except (OSError, ValueError):
                return ""
            return lines[-1][:200] if lines else ""

        def close(self) -> None:
            import subprocess

            if self.process.poll() is None:
                try:
                    self.process.terminate()
                    self.process.wait(timeout=5)
                except (ProcessLookupError, subprocess.TimeoutExpired):
                    self.process.kill()
                    self.process.wait()
            for stream in (self.process.stdin, self.process.stdout):
                try:
                    stream.close()
                except OSError:
                    pass
            # stderr_file stays readable for the error message; it goes with the object

    return ProxyCommand


def _ProxyCommand(command: str, target: SshTarget):  # noqa: N802 - a class made lazily (paramiko is imported late)
    return _proxy_command_class()(command, target)


def _client_for(resolved: Resolved):
    """A paramiko client that knows this host's keys exactly as if every known_hosts file had been
    loaded into it (system files first and exclusively when they know the host, as paramiko checks
    them; user files in the order they were always loaded), from files parsed once per run."""
    import paramiko

    client = paramiko.SSHClient()
    name = _known_host_name(resolved.hostname, resolved.port)
    known = _host_keys_for(name, [p for p in resolved.global_known_hosts if os.path.isfile(p)])
    if not known:
        known = _host_keys_for(name, [p for p in reversed(resolved.known_hosts) if os.path.isfile(p)])
    for keytype, key in known:
        client.get_host_keys().add(name, keytype, key)
    accept_new = resolved.host_keys == ACCEPT_NEW
    client.set_missing_host_key_policy(_AcceptNewPolicy(Path(resolved.known_hosts[0])) if accept_new else paramiko.RejectPolicy())
    return client


def _host_keys_for(name: str, paths: list[str]) -> list[tuple[str, Any]]:
    """(key type, key) for `name`, in the order paramiko's merged HostKeys would answer: for each type
    the first entry of the first file that has it (`SubDict.get`), types in order of first appearance
    (`keys()[0]` decides the host-key algorithm paramiko asks for)."""
    import paramiko

    found: dict[str, Any] = {}
    for path in paths:
        try:
            keys = _cached("known_hosts", path, paramiko.HostKeys)
        except Exception as exc:  # noqa: BLE001
            raise UsageError(f"cannot read known_hosts {path}: {_one_line(exc)}") from None
        entries = keys.lookup(name)
        if entries is None:
            continue
        for keytype in entries.keys():
            if keytype not in found:
                found[keytype] = entries[keytype]
    return list(found.items())


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
            f"{target.name}: host key for {_known_host_name(resolved.hostname, resolved.port)} has CHANGED "
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
                f"{target.name}: host {_known_host_name(resolved.hostname, resolved.port)} is not in known_hosts; "
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
    parts = [tail or _one_line(exc)]
    if code is not None:
        parts.append(f"(the command exited {code})")
    return " ".join(parts)


def is_ipv4(text: str | None) -> bool:
    try:
        return text is not None and ipaddress.ip_address(text).version == 4
    except ValueError:
        return False
