"""SSH like OpenSSH, against real sshd nodes in network namespaces: key problems are bad input found
before any node is contacted; ProxyCommand, UserKnownHostsFile and StrictHostKeyChecking from the
ssh config are honoured (and `StrictHostKeyChecking no` never turns host key checking off)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.fixtures_nodes import host_ruleset_unchanged, make_node, netns, node  # noqa: F401
from tests.netns import Node
from tests.test_nodes_netns import add_rule, kube2iam_rules, make_other_key, wanted

pytestmark = [netns, pytest.mark.netns]
REPO = Path(__file__).resolve().parents[1]

# A byte relay, run inside the jump host's namespace: the ProxyCommand `ip netns exec NS python3 relay.py %h %p`.
RELAY = """
import os, select, socket, sys
with open(sys.argv[4], "a") as log:
    log.write(" ".join(sys.argv[1:4]) + "\\n")
sock = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
sock.settimeout(None)
while True:
    ready, _, _ = select.select([0, sock], [], [])
    if 0 in ready:
        data = os.read(0, 65536)
        if not data:
            sock.shutdown(socket.SHUT_WR)
            break
        sock.sendall(data)
    if sock in ready:
        data = sock.recv(65536)
        if not data:
            break
        os.write(1, data)
"""


def run(*args: str, home: Path, timeout: float = 60, **extra_env: str) -> subprocess.CompletedProcess:
    # HOME is the test's own: ~/.ssh/config and ~/.ssh/known_hosts are what the test writes, or absent.
    env = dict(os.environ, PYTHONPATH=str(REPO), COLUMNS="200", HOME=str(home), **extra_env)
    return subprocess.run([sys.executable, "-m", "rbacbridge", *args], capture_output=True, text=True, env=env,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def connections(node: Node) -> list[str]:
    return [l for l in (node.workdir / "sshd.log").read_text(errors="replace").splitlines() if "Connection from" in l]


def one_error_line(result: subprocess.CompletedProcess, *needles: str) -> str:
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert result.stdout == "", result.stdout
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


# --- key problems: exit 2, one line, before any node is contacted ------------------------------


def test_key_and_file_problems_are_one_line_exit_2_and_no_node_is_contacted(make_node, tmp_path):
    node = make_node("quiet", sshd_log_level="VERBOSE")
    add_rule(node, port=8181)
    add_rule(node)
    before = node.nat_rules()
    keys = tmp_path / "keys"
    keys.mkdir()
    (keys / "garbage").write_text("this is not a key\n")
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "s3cret", "-f", str(keys / "encrypted")], check=True)
    (keys / "adir").mkdir()
    ssh_config = tmp_path / "ssh_config"
    ssh_config.write_text(f"Host quiet-node\n  HostName {node.address}\n  User root\n  IdentityFile {keys / 'garbage'}\n")
    base = ["--node", node.host, "--ssh-user", "root", "--ssh-config", "none", "--host-interface", "docker0"]
    key, known = str(node.client_key), str(node.known_hosts)
    cases = {
        "garbage key": (["--ssh-key", str(keys / "garbage"), "--known-hosts", known], "not a private key"),
        "public key as private": (["--ssh-key", key + ".pub", "--known-hosts", known], "is a public key"),
        "encrypted key": (["--ssh-key", str(keys / "encrypted"), "--known-hosts", known], "encrypted"),
        "unreadable key": (["--ssh-key", str(keys / "adir"), "--known-hosts", known], "cannot read SSH key"),
        "missing key": (["--ssh-key", str(keys / "nope"), "--known-hosts", known], "does not exist"),
        "missing known_hosts": (["--ssh-key", key, "--known-hosts", str(tmp_path / "nope")], "known_hosts"),
        "no known_hosts at all": (["--ssh-key", key], "no known_hosts file"),  # HOME is tmp_path: no ~/.ssh
        "missing ssh config": (["--ssh-key", key, "--known-hosts", known, "--ssh-config", str(tmp_path / "nope")], "ssh config"),
        "garbage IdentityFile in the ssh config": (
            ["--known-hosts", known, "--ssh-config", str(ssh_config), "--node", "quiet-node"], "not a private key"),
    }
    if any(Path(p).exists() for p in ("/etc/ssh/ssh_known_hosts", "/etc/ssh/ssh_known_hosts2")):
        del cases["no known_hosts at all"]  # this machine has a global known_hosts file (read, as OpenSSH does)
    for name, (extra, needle) in cases.items():
        args = base + extra
        if "--ssh-config" in extra:
            args = [a for a in args if a != "none"]
            args.remove("--ssh-config")
        if "--node" in extra:
            i = args.index("--node")
            del args[i:i + 2]  # the alias replaces the address
        for command in (["iptables", "fix", "--yes"], ["setup", "--only", "nodes", "--yes"], ["plan", "--only", "nodes"]):
            result = run(*command, *args, home=tmp_path)
            one_error_line(result, needle)
        assert connections(node) == [], name
    assert node.nat_rules() == before

    # the control: the same node with a good key is contacted, and the log shows it
    good = run("iptables", "fix", "--yes", "--stale-port", "8181", *base, "--ssh-key", key, "--known-hosts", known, home=tmp_path)
    assert good.returncode == 0, good.stderr
    assert len(connections(node)) == 1
    assert kube2iam_rules(node) == [wanted(node)]


# --- ProxyCommand -------------------------------------------------------------------------------


def _behind_a_bastion(make_node) -> tuple[Node, Node]:
    jump = make_node("bastion")
    inner = make_node("inner", parent=jump, client_key=jump.client_key, ssh_port=2222)
    route = subprocess.run(["ip", "route", "get", inner.address], capture_output=True, text=True).stdout
    assert "rbn" not in route  # only the bastion reaches the inner node
    for _ in range(3):
        add_rule(inner)
    return jump, inner


def test_proxycommand_ssh_dash_w_through_a_bastion_with_strict_host_keys(make_node, tmp_path):
    jump, inner = _behind_a_bastion(make_node)
    known = tmp_path / "inner_known_hosts"
    known.write_text(f"{inner.known_host_name} {inner.host_public_key}\n")
    proxy = (f"ssh -F none -i {jump.client_key} -o BatchMode=yes -o StrictHostKeyChecking=yes "
             f"-o UserKnownHostsFile={jump.known_hosts} -W %h:%p root@{jump.address}")
    config = tmp_path / "ssh_config"
    config.write_text(f"Host inner-node\n  HostName {inner.address}\n  Port 2222\n  User root\n  IdentityFile {jump.client_key}\n"
                      f"  UserKnownHostsFile {known}\n  ProxyCommand {proxy}\n")
    args = ["fix", "--yes", "--node", "inner-node", "--ssh-config", str(config), "--host-interface", "docker0"]

    # the host key of the node behind the proxy is verified: a wrong one refuses, nothing changes
    good_line = known.read_text()
    known.write_text(f"{inner.known_host_name} {make_other_key(tmp_path)}\n")
    refused = run("iptables", *args, home=tmp_path)
    assert refused.returncode == 1 and "CHANGED" in refused.stdout + refused.stderr
    assert len(kube2iam_rules(inner)) == 3

    known.write_text(good_line)
    result = run("iptables", *args, home=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert kube2iam_rules(inner) == [wanted(inner)]
    assert kube2iam_rules(jump) == []
    _no_proxy_left(proxy)


def test_proxycommand_relay_command_with_tokens_and_a_failing_proxy_is_reported(make_node, tmp_path):
    jump, inner = _behind_a_bastion(make_node)
    relay = tmp_path / "relay.py"
    relay.write_text(RELAY)
    known = tmp_path / "known_hosts"
    known.write_text(f"{inner.known_host_name} {inner.host_public_key}\n")
    config = tmp_path / "ssh_config"
    # %h %p from HostName/Port, %r from --ssh-user (a command-line value wins over the config, as in ssh)
    config.write_text(f"Host inner-node\n  HostName {inner.address}\n  Port 2222\n  User nobody\n  IdentityFile {jump.client_key}\n"
                      f"  ProxyCommand ip netns exec {jump.namespace} {sys.executable} {relay} %h %p %r {tmp_path / 'relay.log'}\n"
                      f"Host broken-proxy\n  HostName {inner.address}\n  Port 2222\n  User root\n  IdentityFile {jump.client_key}\n"
                      f"  ProxyCommand sh -c \"echo 'proxy: no route to %h' >&2; exit 7\"\n")
    common = ["--ssh-config", str(config), "--known-hosts", str(known), "--host-interface", "docker0"]
    result = run("iptables", "fix", "--yes", "--node", "inner-node", "--ssh-user", "root", *common, home=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert kube2iam_rules(inner) == [wanted(inner)]
    assert (tmp_path / "relay.log").read_text().splitlines() == [f"{inner.address} 2222 root"]

    started = time.monotonic()
    broken = run("iptables", "status", "--node", "broken-proxy", *common, home=tmp_path)
    assert broken.returncode == 1
    assert f"proxy: no route to {inner.address}" in broken.stdout + broken.stderr
    assert time.monotonic() - started < 8  # not the 10 s connect timeout: the proxy's exit is seen at once


def _no_proxy_left(command_start: str) -> None:
    left = subprocess.run(["pgrep", "-f", command_start.split(" -W")[0]], capture_output=True, text=True).stdout.split()
    assert left == [], f"ProxyCommand processes left running: {left}"


def test_proxycommand_tokens_come_from_validated_parts(make_node, tmp_path):
    marker = tmp_path / "pwned"
    config = tmp_path / "ssh_config"
    config.write_text(f"Host evil\n  HostName 10.0.0.1;touch${{IFS}}{marker}\n  ProxyCommand echo %h\n"
                      f"Host dash\n  HostName -oProxyCommand=touch\n  ProxyCommand ssh -W %h:%p bastion\n"
                      f"Host token\n  HostName 10.0.0.1\n  ProxyCommand relay %C\n")
    for alias, needle in (("evil", "invalid host name"), ("dash", "invalid host name"), ("token", "unsupported token")):
        result = run("iptables", "status", "--node", alias, "--ssh-config", str(config), "--accept-new-host-keys",
                     "--ssh-user", "root", "--host-interface", "docker0", home=tmp_path)
        one_error_line(result, needle)
    assert not marker.exists()


# --- UserKnownHostsFile, StrictHostKeyChecking ----------------------------------------------------


def _config(tmp_path: Path, node: Node, extra: str) -> Path:
    config = tmp_path / "ssh_config"
    config.write_text(f"Host the-node\n  HostName {node.address}\n  User root\n  IdentityFile {node.client_key}\n{extra}")
    return config


def test_user_known_hosts_file_from_the_ssh_config_is_the_one_checked(node, tmp_path):
    add_rule(node)
    add_rule(node)
    wrong = tmp_path / "wrong"
    wrong.write_text(f"{node.known_host_name} {make_other_key(tmp_path)}\n")
    args = ["fix", "--yes", "--node", "the-node", "--host-interface", "docker0"]

    config = _config(tmp_path, node, f"  UserKnownHostsFile {wrong}\n")
    refused = run("iptables", *args, "--ssh-config", str(config), home=tmp_path)
    assert refused.returncode == 1 and "CHANGED" in refused.stdout + refused.stderr
    assert len(kube2iam_rules(node)) == 2

    # ~ and %d expand as in OpenSSH (HOME is tmp_path here); a second file is read too
    (tmp_path / "kh").mkdir()
    (tmp_path / "kh" / "second").write_text(f"{node.known_host_name} {node.host_public_key}\n")
    config = _config(tmp_path, node, f"  UserKnownHostsFile ~/kh/first %d/kh/second\n")
    result = run("iptables", *args, "--ssh-config", str(config), home=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert kube2iam_rules(node) == [wanted(node)]
    assert not (tmp_path / "kh" / "first").exists()  # strict: nothing recorded

    # --known-hosts on the command line wins over the config
    flag = run("iptables", *args, "--ssh-config", str(config), "--known-hosts", str(wrong), home=tmp_path)
    assert flag.returncode == 1 and "CHANGED" in flag.stdout + flag.stderr


@pytest.mark.parametrize("value", ["accept-new", "no"])
def test_strict_host_key_checking_accept_new_and_no_record_unknown_keys_and_refuse_changed_ones(node, tmp_path, value):
    add_rule(node)
    add_rule(node)
    recorded = tmp_path / "recorded_known_hosts"
    config = _config(tmp_path, node, f"  UserKnownHostsFile {recorded}\n  StrictHostKeyChecking {value}\n")
    args = ["fix", "--yes", "--node", "the-node", "--ssh-config", str(config), "--host-interface", "docker0"]
    result = run("iptables", *args, home=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert node.host_public_key in recorded.read_text()
    assert kube2iam_rules(node) == [wanted(node)]
    if value == "no":
        assert "treats it as accept-new" in result.stdout + result.stderr

    # a changed key is refused either way: `no` does not turn verification off
    recorded.write_text(f"{node.known_host_name} {make_other_key(tmp_path)}\n")
    add_rule(node)
    refused = run("iptables", *args, home=tmp_path)
    assert refused.returncode == 1 and "CHANGED" in refused.stdout + refused.stderr
    assert len(kube2iam_rules(node)) == 2


def test_strict_host_key_checking_yes_refuses_an_unknown_host(node, tmp_path):
    add_rule(node)
    add_rule(node)
    empty = tmp_path / "empty"
    empty.write_text("")
    config = _config(tmp_path, node, f"  UserKnownHostsFile {empty}\n  StrictHostKeyChecking yes\n")
    result = run("iptables", "fix", "--yes", "--node", "the-node", "--ssh-config", str(config), "--host-interface", "docker0",
                 home=tmp_path)
    assert result.returncode == 1 and "not in known_hosts" in result.stdout + result.stderr
    assert empty.read_text() == "" and len(kube2iam_rules(node)) == 2


def test_an_encrypted_key_held_by_ssh_agent_is_used_through_the_agent(make_node, tmp_path):
    key = tmp_path / "locked"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "s3cret", "-C", "", "-f", str(key)], check=True)
    node = make_node("agent", client_key=key)
    add_rule(node)
    add_rule(node)
    args = ["fix", "--yes", "--node", node.host, "--ssh-user", "root", "--ssh-key", str(node.client_key),
            "--known-hosts", str(node.known_hosts), "--ssh-config", "none", "--host-interface", "docker0"]
    # without an agent: bad input, as before
    one_error_line(run("iptables", *args, home=tmp_path), "encrypted")

    socket_path = tmp_path / "agent.sock"
    agent = subprocess.Popen(["ssh-agent", "-D", "-a", str(socket_path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 5
        while not socket_path.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        askpass = tmp_path / "askpass"
        askpass.write_text("#!/bin/sh\necho s3cret\n")
        askpass.chmod(0o700)
        env = dict(os.environ, SSH_AUTH_SOCK=str(socket_path), SSH_ASKPASS=str(askpass), SSH_ASKPASS_REQUIRE="force",
                   DISPLAY=":0")
        subprocess.run(["ssh-add", "-q", str(key)], check=True, env=env, stdin=subprocess.DEVNULL, capture_output=True)
        result = run("iptables", *args, home=tmp_path, SSH_AUTH_SOCK=str(socket_path))
        assert result.returncode == 0, result.stdout + result.stderr
        assert kube2iam_rules(node) == [wanted(node)]
    finally:
        agent.terminate()
        agent.wait(timeout=5)
