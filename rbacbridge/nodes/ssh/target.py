"""An `SshTarget` and its resolution through ~/.ssh/config into a checked `Resolved`: host name, port,
user, keys, ProxyJump/ProxyCommand (tokens expanded from validated parts only), known_hosts files and the
host-key policy. Nothing here touches the network: `preflight` raises UsageError (exit 2) before any
node is contacted."""

from __future__ import annotations

import getpass
import ipaddress
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from rbacbridge.errors import UsageError
from rbacbridge.nodes.ssh.errors import one_line, short
from rbacbridge.nodes.ssh.files import cached
from rbacbridge.nodes.ssh.keys import check_key_file

DEFAULT_CONNECT_TIMEOUT = 10.0
DEFAULT_COMMAND_TIMEOUT = 60.0


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


def _ssh_config(target: SshTarget):
    path = target.ssh_config
    if path == "none":
        return None
    file = Path(os.path.expanduser(path or "~/.ssh/config"))
    if not file.is_file():
        if path:
            raise UsageError(f"ssh config {short(path)} does not exist (give a file, or --ssh-config none)")
        return None
    try:
        return cached("ssh_config", str(file), _parse_ssh_config)
    except Exception as exc:  # noqa: BLE001 - a malformed or unreadable config is the user's input
        raise UsageError(f"cannot read ssh config {file}: {one_line(exc)}") from None


def _parse_ssh_config(path: str):
    import paramiko

    class RawProxyCommandConfig(paramiko.SSHConfig):
        # ProxyCommand tokens are expanded by `_expand` from validated parts, not by paramiko.
        TOKENS_BY_CONFIG_KEY = {**paramiko.SSHConfig.TOKENS_BY_CONFIG_KEY, "proxycommand": []}

    return RawProxyCommandConfig.from_path(path)


def _check_hostname(value: str, where: str) -> str:
    try:
        ipaddress.ip_address(value)
        return value
    except ValueError:
        pass
    if not isinstance(value, str) or not _HOSTNAME.fullmatch(value):
        raise UsageError(f"invalid host name {short(value)} ({where}): letters, digits, '.', '_' and '-' only")
    return value


def _check_user(value: str, where: str) -> str:
    if not isinstance(value, str) or not _USER.fullmatch(value):
        raise UsageError(f"invalid SSH user {short(value)} ({where}): letters, digits, '.', '_', '@' and '-' only")
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
            raise UsageError(f"{what}: unsupported token {short(token)} (rbacbridge expands {' '.join(sorted(tokens))} and %%)")
        i += 2
    return "".join(out)


def resolve(target: SshTarget) -> Resolved:
    """Apply ~/.ssh/config and check every part; raises UsageError (nothing contacted)."""
    config = _ssh_config(target)
    where = f"node {target.name}"
    entry: dict[str, Any] = config.lookup(target.host) if config is not None else {}
    hostname = _check_hostname(entry.get("hostname", target.host), where)
    try:
        port = target.port or int(entry.get("port", 22))
    except ValueError:
        raise UsageError(f"invalid Port {short(entry.get('port'))} for {target.host} in the ssh config") from None
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
            raise UsageError(f"invalid StrictHostKeyChecking {short(value)} for {target.host} in the ssh config")
        host_keys = _STRICT_VALUES[value]
        if value in ("no", "off", "false"):
            notes.append(f"{target.name}: the ssh config says StrictHostKeyChecking {value}; rbacbridge treats it as "
                         "accept-new (unknown host keys are recorded, a changed key is still refused)")
    for path in known + global_known:
        if os.path.exists(path) and not os.path.isfile(path):
            raise UsageError(f"known_hosts {short(path)} is not a file")
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
        raise UsageError(f"known_hosts file {short(target.known_hosts)} does not exist (or use --accept-new-host-keys)")


def preflight(target: SshTarget, _depth: int = 0) -> list[str]:
    """Check a target and its jump hosts without touching the network; returns notes to show.

    Raises UsageError (exit 2) for anything the user must fix: ssh config, keys, known_hosts.
    """
    if _depth > 8:
        raise UsageError(f"{target.name}: ProxyJump chain too long (a loop in the ssh config?)")
    resolved = resolve(target)
    notes = list(resolved.notes)
    for spec in resolved.proxy_jump:
        notes += preflight(jump_target(spec, target), _depth + 1)
    return notes


def jump_target(spec: str, base: SshTarget) -> SshTarget:
    """ProxyJump entry `[user@]host[:port]` -> a target resolved through the same ssh config."""
    user, _, hostport = spec.rpartition("@")
    try:
        host, port = parse_host_port(hostport)
    except ValueError:
        raise UsageError(f"invalid ProxyJump {short(spec)} in the ssh config") from None
    _check_hostname(host, "ProxyJump")
    if user:
        _check_user(user, "ProxyJump")
    # The node's key is not assumed for the bastion unless the ssh config gives none.
    return replace(base, host=host, port=port, user=user or None, label=None)


def is_ipv4(text: str | None) -> bool:
    try:
        return text is not None and ipaddress.ip_address(text).version == 4
    except ValueError:
        return False
