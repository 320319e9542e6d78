"""Host keys: a paramiko client that knows a node's keys from every known_hosts file (parsed once per
version), RejectPolicy or OpenSSH's accept-new (an unknown key is recorded; a changed key is always
refused: paramiko raises BadHostKeyException before any policy is asked)."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

from rbacbridge.errors import UsageError
from rbacbridge.nodes.ssh.errors import one_line
from rbacbridge.nodes.ssh.files import cached
from rbacbridge.nodes.ssh.target import ACCEPT_NEW, Resolved

_known_hosts_lock = threading.Lock()


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


def known_host_name(hostname: str, port: int) -> str:
    return hostname if port == 22 else f"[{hostname}]:{port}"


def client_for(resolved: Resolved):
    """A paramiko client that knows this host's keys exactly as if every known_hosts file had been
    loaded into it (system files first and exclusively when they know the host, as paramiko checks
    them; user files in the order they were always loaded), from files parsed once per run."""
    import paramiko

    client = paramiko.SSHClient()
    name = known_host_name(resolved.hostname, resolved.port)
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
            keys = cached("known_hosts", path, paramiko.HostKeys)
        except Exception as exc:  # noqa: BLE001
            raise UsageError(f"cannot read known_hosts {path}: {one_line(exc)}") from None
        entries = keys.lookup(name)
        if entries is None:
            continue
        for keytype in entries.keys():
            if keytype not in found:
                found[keytype] = entries[keytype]
    return list(found.items())
