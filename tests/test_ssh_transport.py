"""rbacbridge.nodes.ssh's own transport: its TCP socket (no Nagle, quick ACKs) and known_hosts parsed once
per version of the file must decide host keys exactly as paramiko loading every file would."""

from __future__ import annotations

import base64
import os
import socket
import time

import paramiko
import pytest

from rbacbridge.nodes import ssh
from rbacbridge.nodes.ssh.known_hosts import client_for, known_host_name
from rbacbridge.nodes.ssh import files as ssh_files  # where the parse cache reads _SETTLED
from tests.fixtures_nodes import host_ruleset_unchanged, make_node, netns, node  # noqa: F401


def _key(kind: str):
    if kind == "ecdsa":
        return paramiko.ECDSAKey.generate()
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    text = ed25519.Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    return paramiko.PKey.from_type_string(text.split()[0], base64.b64decode(text.split()[1]))


def _line(names: str, key) -> str:
    return f"{names} {key.get_name()} {key.get_base64()}\n"


def _reference(name: str, system: list[str], user: list[str]):
    """What paramiko's SSHClient.connect compares with: system files first, else the user files loaded
    in the order rbacbridge always loaded them (reversed)."""
    client = paramiko.SSHClient()
    for path in system:
        client.load_system_host_keys(path)
    for path in reversed(user):
        client.load_host_keys(path)
    found = client._system_host_keys.get(name)
    if found is None:
        found = client._host_keys.get(name)
    return found


def _decided(found) -> tuple:
    if found is None:
        return None
    types = list(found.keys())
    return types[0], {t: found[t].get_base64() for t in types}


def test_host_keys_are_what_paramiko_would_check_against(tmp_path):
    a1, a2, b1, b2, c1, d1 = (_key("ed25519") for _ in range(6))
    e1 = _key("ecdsa")
    hashed = paramiko.HostKeys.hash_host("10.0.0.3")
    system = tmp_path / "ssh_known_hosts"
    system.write_text(_line("10.0.0.4", d1))
    first = tmp_path / "known_hosts"
    second = tmp_path / "known_hosts2"
    # host 1: ecdsa first in one file, ed25519 in both (which wins depends on load order);
    # host 2 on a non-22 port; host 3 hashed; host 4 only in the system file and also (ignored) in a user file
    first.write_text(_line("10.0.0.1", a1) + _line("[10.0.0.2]:2222", b1) + _line(hashed, c1) + _line("10.0.0.4", a2))
    second.write_text(_line("10.0.0.1", e1) + _line("10.0.0.1", a2) + _line("[10.0.0.2]:2222", b2))
    user = [str(first), str(second)]
    for hostname, port in (("10.0.0.1", 22), ("10.0.0.2", 2222), ("10.0.0.3", 22), ("10.0.0.4", 22), ("10.0.0.9", 22)):
        resolved = ssh.Resolved(hostname=hostname, port=port, user="root", key_files=(), known_hosts=tuple(user),
                                global_known_hosts=(str(system), str(tmp_path / "missing")))
        client = client_for(resolved)
        name = known_host_name(hostname, port)
        assert _decided(client.get_host_keys().lookup(name)) == _decided(_reference(name, [str(system)], user)), name
        assert isinstance(client._policy, paramiko.RejectPolicy)
    assert _decided(_reference("10.0.0.9", [str(system)], user)) is None


def test_a_rewritten_known_hosts_is_read_again_even_with_the_same_size_and_mtime(tmp_path, monkeypatch):
    monkeypatch.setattr(ssh_files, "_SETTLED", -1.0)  # reuse parses of files written just now (ctime cannot be set back)
    old, new = _key("ed25519"), _key("ed25519")
    path = tmp_path / "known_hosts"
    path.write_text(_line("10.0.0.1", old))
    past = time.time() - 3600
    os.utime(path, (past, past))  # settled: its parse is reused
    resolved = ssh.Resolved(hostname="10.0.0.1", port=22, user="root", key_files=(), known_hosts=(str(path),))
    assert client_for(resolved).get_host_keys().lookup("10.0.0.1")["ssh-ed25519"] == old
    assert client_for(resolved).get_host_keys().lookup("10.0.0.1")["ssh-ed25519"] == old
    path.write_text(_line("10.0.0.1", new))  # same length, then the same mtime again (ctime moves)
    os.utime(path, (past, past))
    assert len(path.read_text()) == len(_line("10.0.0.1", old))
    assert client_for(resolved).get_host_keys().lookup("10.0.0.1")["ssh-ed25519"] == new
    path.write_text("")  # the host is no longer known: refused (RejectPolicy), not remembered
    assert client_for(resolved).get_host_keys().lookup("10.0.0.1") is None


@netns
@pytest.mark.netns
def test_own_socket_has_no_nagle_and_a_closed_port_is_one_clear_error(node):
    with ssh.connect(node.ssh_target()) as session:
        sock = session._client.get_transport().sock
        assert isinstance(sock, socket.socket) and sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
        assert session.peer_address() == node.address
        assert session.run(["sh", "-c", "echo hi; echo err >&2; exit 3"]) == (3, "hi\n", "err\n")
    with pytest.raises(ssh.SshError) as caught:
        ssh.connect(node.ssh_target(port=2222))
    text = str(caught.value)
    assert "cannot connect to root@" in text and ":2222" in text and "\n" not in text
