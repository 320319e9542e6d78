"""`rbacbridge iptables` and the nodes part against real sshd + real iptables in network namespaces."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rbacbridge import planner
from rbacbridge.config import Config
from rbacbridge.nodes import run_iptables
from rbacbridge.planner import Context
from tests.fixtures_kube import kube_api  # noqa: F401
from tests.fixtures_nodes import host_ruleset_unchanged, make_node, netns, node  # noqa: F401
from tests.netns import Node

pytestmark = [netns, pytest.mark.netns]
REPO = Path(__file__).resolve().parents[1]
SHAPE = ["-d", "169.254.169.254/32", "-i", "{iface}", "-p", "tcp", "-m", "tcp", "--dport", "80", "-j", "DNAT",
         "--to-destination", "{dest}"]


def add_rule(node: Node, port: int = 8282, iface: str = "docker0", ip: str | None = None, chain: str = "PREROUTING") -> None:
    dest = f"{ip or node.address}:{port}"
    node.iptables("-t", "nat", "-A", chain, *[p.format(iface=iface, dest=dest) for p in SHAPE])


def kube2iam_rules(node: Node) -> list[str]:
    return [r for r in node.nat_rules() if "169.254.169.254" in r and "--comment" not in r]


def wanted(node: Node, port: int = 8282, iface: str = "docker0") -> str:
    return f"-A PREROUTING -d 169.254.169.254/32 -i {iface} -p tcp -m tcp --dport 80 -j DNAT --to-destination {node.address}:{port}"


def known_hosts_for(tmp_path: Path, *nodes: Node) -> Path:
    path = tmp_path / "known_hosts"
    path.write_text("".join(f"{n.known_host_name} {n.host_public_key}\n" for n in nodes))
    return path


def config_for(tmp_path: Path, *nodes: Node, **overrides) -> Config:
    values = dict(node_hosts=tuple(n.host for n in nodes), ssh_user="root", ssh_key=str(nodes[0].client_key),
                  known_hosts=str(known_hosts_for(tmp_path, *nodes)), ssh_config="none", host_interface="docker0",
                  ssh_connect_timeout=3.0, ssh_command_timeout=10.0)
    values.update(overrides)
    return Config(**values)


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO), COLUMNS="200")
    return subprocess.run([sys.executable, "-m", "rbacbridge", "iptables", *args], capture_output=True, text=True,
                          env=env, timeout=timeout, stdin=subprocess.DEVNULL)


def cli_opts(node: Node, known_hosts: Path | None = None) -> list[str]:
    return ["--node", node.host, "--ssh-user", "root", "--ssh-key", str(node.client_key),
            "--known-hosts", str(known_hosts or node.known_hosts), "--ssh-config", "none", "--host-interface", "docker0"]


# --- fix ---------------------------------------------------------------------------------------


def test_three_identical_duplicates_become_one_and_a_rerun_changes_nothing(node, tmp_path):
    for _ in range(3):
        add_rule(node)
    result = run_iptables(Context(config_for(tmp_path, node)), "fix")
    assert result.ok and result.applied
    assert kube2iam_rules(node) == [wanted(node)]
    assert (result.reports[0].kept, result.reports[0].deleted) == (1, 2)

    again = run_iptables(Context(config_for(tmp_path, node)), "fix")
    assert again.ok and not again.plan.changes and not again.applied
    assert kube2iam_rules(node) == [wanted(node)]


def test_stale_rules_before_the_current_one_are_deleted_and_the_current_kept(node):
    add_rule(node, iface="cbr0")  # old interface
    add_rule(node, port=8181)  # old port
    add_rule(node)
    add_rule(node, port=8181)
    result = cli("fix", "--yes", "--stale-port", "8181", *cli_opts(node))  # 8181: named as rbacbridge's old port
    assert result.returncode == 0, result.stderr
    assert kube2iam_rules(node) == [wanted(node)]
    assert "delete stale rule" in result.stdout and "port 8181 (want 8282)" in result.stdout
    assert "interface cbr0 (want docker0)" in result.stdout


def test_rules_of_other_tools_chains_and_tables_are_left_alone(node):
    foreign = ["-A PREROUTING -d 169.254.169.254/32 -i docker0 -p tcp -m comment --comment \"metadata proxy\" "
               "-m tcp --dport 80 -j DNAT --to-destination 10.9.9.9:80"]
    node.iptables("-t", "nat", "-A", "PREROUTING", "-d", "169.254.169.254/32", "-i", "docker0", "-p", "tcp",
                  "-m", "comment", "--comment", "metadata proxy", "-m", "tcp", "--dport", "80", "-j", "DNAT",
                  "--to-destination", "10.9.9.9:80")
    node.iptables("-t", "nat", "-N", "OLD-KUBE2IAM")
    add_rule(node, chain="OLD-KUBE2IAM")  # kube2iam-shaped, but another chain
    node.iptables("-t", "filter", "-A", "FORWARD", "-d", "169.254.169.254/32", "-i", "docker0", "-p", "tcp",
                  "-m", "tcp", "--dport", "80", "-j", "ACCEPT")
    add_rule(node)
    add_rule(node)
    other_chain = node.nat_rules("OLD-KUBE2IAM")
    filter_before = node.exec(["iptables", "-t", "filter", "-S"]).stdout

    for command in ("fix", "remove"):
        result = cli(command, "--yes", *cli_opts(node))
        assert result.returncode == 0, result.stderr
        assert "left-alone" in result.stdout
        assert [r for r in node.nat_rules() if "comment" in r] == foreign
        assert node.nat_rules("OLD-KUBE2IAM") == other_chain
        assert node.exec(["iptables", "-t", "filter", "-S"]).stdout == filter_before
    assert kube2iam_rules(node) == []


def test_missing_rule_is_reported_and_added_with_add_missing(node):
    add_rule(node, port=8181)  # another port nobody named stale: another tool's, left alone (issue 22)
    report = cli("fix", "--yes", "-o", "json", *cli_opts(node))
    assert report.returncode == 0, report.stderr
    data = json.loads(report.stdout)
    assert data["nodes"][0]["missing"] == "yes" and data["nodes"][0]["deleted"] == 0
    assert data["nodes"][0]["left_alone"] == 1
    assert any("missing" in note and "--add-missing" in note for note in data["plan"]["notes"])
    assert kube2iam_rules(node) == [wanted(node, 8181)]

    added = cli("fix", "--yes", "--add-missing", "-o", "json", *cli_opts(node))
    assert added.returncode == 0, added.stderr
    assert json.loads(added.stdout)["nodes"][0]["missing"] == "added"
    assert kube2iam_rules(node) == [wanted(node, 8181), wanted(node)]


def test_host_ip_port_and_interface_overrides_choose_the_rule_kept(node, tmp_path):
    add_rule(node, iface="cni0", ip="10.43.0.7", port=8181)
    add_rule(node, ip="10.43.0.7")  # the host IP given, an old port named stale: deleted
    add_rule(node)  # the SSH address is not the host IP given: another address, left alone
    cfg = config_for(tmp_path, node, host_ip="10.43.0.7", kube2iam_port=8181, host_interface="cni0", node_stale_ports=(8282,))
    assert run_iptables(Context(cfg), "fix").ok
    assert kube2iam_rules(node) == [wanted(node, port=8181, iface="cni0").replace(node.address, "10.43.0.7"), wanted(node)]


# --- sudo, host keys ---------------------------------------------------------------------------


def test_non_root_user_with_nopasswd_sudo_for_iptables_only(node, tmp_path):
    user = node.add_user(sudo_iptables=True)
    add_rule(node, port=8181)
    add_rule(node)
    add_rule(node)
    result = run_iptables(Context(config_for(tmp_path, node, ssh_user=user.name, node_stale_ports=(8181,))), "fix")
    assert result.ok, result.reports[0].error
    assert kube2iam_rules(node) == [wanted(node)]


def test_non_root_user_without_sudo_fails_clearly_and_changes_nothing(node, tmp_path):
    user = node.add_user(sudo_iptables=False)
    add_rule(node)
    add_rule(node)
    result = run_iptables(Context(config_for(tmp_path, node, ssh_user=user.name)), "fix")
    assert not result.ok
    assert "sudo" in result.reports[0].error and "NOPASSWD" in result.reports[0].error
    assert len(kube2iam_rules(node)) == 2


def test_unknown_host_is_refused_with_nothing_run_and_accept_new_records_it(node, tmp_path):
    add_rule(node)
    add_rule(node)
    empty = tmp_path / "empty_known_hosts"
    empty.write_text("")
    refused = cli("fix", "--yes", *cli_opts(node, known_hosts=empty))
    assert refused.returncode == 1
    assert "not in known_hosts" in refused.stdout + refused.stderr and "refused" in refused.stdout + refused.stderr
    assert len(kube2iam_rules(node)) == 2

    accepted = cli("fix", "--yes", "--accept-new-host-keys", *cli_opts(node, known_hosts=empty))
    assert accepted.returncode == 0, accepted.stderr
    assert node.host_public_key in empty.read_text()
    assert kube2iam_rules(node) == [wanted(node)]


def test_changed_host_key_is_refused_even_with_accept_new(node, tmp_path):
    add_rule(node)
    add_rule(node)
    other = make_other_key(tmp_path)
    wrong = tmp_path / "wrong_known_hosts"
    wrong.write_text(f"{node.known_host_name} {other}\n")
    for extra in ([], ["--accept-new-host-keys"]):
        result = cli("fix", "--yes", *extra, *cli_opts(node, known_hosts=wrong))
        assert result.returncode == 1
        assert "CHANGED" in result.stdout + result.stderr
    assert wrong.read_text() == f"{node.known_host_name} {other}\n"
    assert len(kube2iam_rules(node)) == 2


def make_other_key(tmp_path: Path) -> str:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "other")], check=True)
    return " ".join((tmp_path / "other.pub").read_text().split()[:2])


# --- many nodes, failures ----------------------------------------------------------------------


def test_one_of_three_nodes_down_the_others_are_fixed_and_the_table_names_it(make_node, tmp_path):
    first = make_node("n1")
    nodes = [first, make_node("n2", client_key=first.client_key), make_node("n3", client_key=first.client_key)]
    for n in nodes:
        add_rule(n, port=8181)
        add_rule(n)
        add_rule(n)
    nodes[1].stop_sshd()
    known = known_hosts_for(tmp_path, *nodes)
    args = ["fix", "--yes", "--ssh-user", "root", "--ssh-key", str(first.client_key), "--known-hosts", str(known),
            "--ssh-config", "none", "--host-interface", "docker0", "--stale-port", "8181"]
    for n in nodes:
        args += ["--node", n.host]
    result = cli(*args)
    assert result.returncode == 1
    assert f"1 of 3 node(s) failed: {nodes[1].host}" in result.stderr
    failed_rows = [line for line in result.stdout.splitlines() if nodes[1].host in line and "connect" in line]
    assert failed_rows, result.stdout
    assert kube2iam_rules(nodes[0]) == [wanted(nodes[0])]
    assert kube2iam_rules(nodes[2]) == [wanted(nodes[2])]
    assert len(kube2iam_rules(nodes[1])) == 3


def test_garbage_from_iptables_is_a_clear_error_and_nothing_is_deleted(make_node, tmp_path):
    fakebin = tmp_path / "fakebin"
    fakebin.mkdir()
    calls = tmp_path / "calls"
    script = fakebin / "iptables"
    script.write_text(f"#!/bin/sh\necho \"$@\" >> {calls}\n"
                      "case \" $* \" in *\" -S \"*) echo '<html><body>502 Bad Gateway</body></html>'; exit 0;; esac\n"
                      "exec /usr/sbin/iptables \"$@\"\n")
    script.chmod(0o755)
    os.chmod(tmp_path, 0o755)
    node = make_node("fake", path=f"{fakebin}:/usr/sbin:/usr/bin:/sbin:/bin")
    add_rule(node, port=8181)
    add_rule(node)
    before = node.nat_rules()
    result = cli("fix", "--yes", *cli_opts(node))
    assert result.returncode == 1
    assert "unexpected iptables output" in result.stdout and "nothing changed" in result.stdout
    assert node.nat_rules() == before
    assert all(" -D " not in line and " -A " not in line for line in calls.read_text().splitlines())


def test_proxyjump_through_a_jump_host(make_node, tmp_path):
    jump = make_node("bastion")
    target = make_node("inner", parent=jump, client_key=jump.client_key, ssh_port=2222)
    add_rule(target, port=8181)
    add_rule(target)
    add_rule(target)
    # no route from here to the inner node through any veth of ours: only the bastion reaches it
    route = subprocess.run(["ip", "route", "get", target.address], capture_output=True, text=True).stdout
    assert "rbn" not in route
    ssh_config = tmp_path / "ssh_config"
    ssh_config.write_text(
        f"Host inner-node\n  HostName {target.address}\n  Port 2222\n  User root\n  IdentityFile {jump.client_key}\n"
        f"  ProxyJump bastion\n\nHost bastion\n  HostName {jump.address}\n  User root\n  IdentityFile {jump.client_key}\n"
    )
    known = known_hosts_for(tmp_path, jump, target)
    result = cli("fix", "--yes", "--node", "inner-node", "--ssh-config", str(ssh_config), "--known-hosts", str(known),
                 "--host-interface", "docker0", "--stale-port", "8181")
    assert result.returncode == 0, result.stderr
    # the host IP is the address the node was reached at, seen from the node (SSH_CONNECTION)
    assert kube2iam_rules(target) == [wanted(target)]
    assert kube2iam_rules(jump) == []


def test_remove_leaves_zero_kube2iam_rules(node):
    add_rule(node)
    add_rule(node, port=8181)
    add_rule(node, iface="cali+")
    result = cli("remove", "--yes", *cli_opts(node))
    assert result.returncode == 0, result.stderr
    assert kube2iam_rules(node) == [wanted(node, 8181)]  # another port, not named stale: not rbacbridge's (issue 22)
    named = cli("remove", "--yes", "--stale-port", "8181", *cli_opts(node))
    assert named.returncode == 0, named.stderr
    assert kube2iam_rules(node) == []
    assert cli("remove", "--yes", *cli_opts(node)).returncode == 0  # nothing left: still fine


def test_status_and_dry_run_change_nothing(node):
    add_rule(node, port=8181)
    add_rule(node)
    before = node.nat_rules()
    status = cli("status", "-o", "json", *cli_opts(node))
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["nodes"][0]["kept"] == 1
    assert cli("fix", "--dry-run", *cli_opts(node)).returncode == 0
    assert node.nat_rules() == before


@pytest.mark.parametrize("bad", [["--node", "node1;reboot"], ["--host-interface", "eth0$(id)"], ["--host-ip", "1.2.3.4;x"]])
def test_shell_metacharacters_are_rejected_before_anything_happens(bad):
    result = cli("fix", "--yes", "--ssh-config", "none", *(["--node", "10.0.0.1"] if bad[0] != "--node" else []), *bad)
    assert result.returncode == 2
    assert result.stderr.startswith("error: invalid") and "Traceback" not in result.stderr


# --- the planner: setup and teardown through the nodes part ------------------------------------


def test_planner_setup_and_teardown_converge(node, tmp_path):
    add_rule(node, port=8181)
    add_rule(node)
    add_rule(node)
    ctx = Context(config_for(tmp_path, node, node_stale_ports=(8181,)), parts=("nodes",))
    plan = planner.plan_setup(ctx)
    assert [s.action for s in plan.steps].count("delete") == 2
    assert planner.run(ctx, plan).ok
    assert kube2iam_rules(node) == [wanted(node)]

    ctx = Context(config_for(tmp_path, node), parts=("nodes",))
    plan = planner.plan_teardown(ctx)
    assert planner.run(ctx, plan, teardown=True).ok
    assert kube2iam_rules(node) == []


def test_planner_setup_fixes_reachable_nodes_and_fails_for_the_down_one(make_node, tmp_path):
    up = make_node("up")
    down = make_node("down", client_key=up.client_key)
    for n in (up, down):
        add_rule(n)
        add_rule(n)
    down.stop_sshd()
    ctx = Context(config_for(tmp_path, up, down), parts=("nodes",))
    plan = planner.plan_setup(ctx)
    assert any(down.host in note and "node failed" in note for note in plan.notes)
    outcome = planner.run(ctx, plan)
    assert not outcome.ok and down.host in str(outcome.failure.error)
    assert kube2iam_rules(up) == [wanted(up)]
    assert len(kube2iam_rules(down)) == 2


def test_planner_runs_nodes_independently_a_node_lost_mid_run_does_not_stop_the_others(make_node, tmp_path):
    first = make_node("first")
    lost = make_node("lost", client_key=first.client_key)
    last = make_node("last", client_key=first.client_key)
    for n in (first, lost, last):
        for _ in range(3):
            add_rule(n)
    ctx = Context(config_for(tmp_path, first, lost, last), parts=("nodes",))
    plan = planner.plan_setup(ctx)
    assert [s.name for s in plan.changes].count(lost.host) == 2
    lost.stop_sshd()  # the node goes away between the plan and the run
    outcome = planner.run(ctx, plan)
    assert not outcome.ok and outcome.failure.failed.name == lost.host
    # run one after another, the nodes after the lost one would not have been touched
    assert kube2iam_rules(first) == [wanted(first)] and kube2iam_rules(last) == [wanted(last)]
    assert len(kube2iam_rules(lost)) == 3
    assert {s.name for s in outcome.done} == {first.host, last.host}


def test_interrupted_run_replans_and_converges(node, tmp_path):
    for _ in range(3):
        add_rule(node)
    ctx = Context(config_for(tmp_path, node), parts=("nodes",))
    deletes = [s for s in planner.plan_setup(ctx).steps if s.action == "delete"]
    deletes[0].run()  # the run stops after one step
    assert deletes[0].run() is True  # a second copy is still there: removed
    assert deletes[1].run() is False  # the kept rule is never deleted, whichever step runs
    assert kube2iam_rules(node) == [wanted(node)]


# --- the interception itself --------------------------------------------------------------------


# http.server's own bind looks up the host's FQDN (a DNS timeout inside a namespace): plain TCPServer bind.
_SERVER = """
import functools, http.server, socketserver, sys
class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    server_bind = socketserver.TCPServer.server_bind
handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=sys.argv[3])
Server((sys.argv[1], int(sys.argv[2])), handler).serve_forever()
"""


def serve(node: Node, port: int, body: str, tmp_path: Path) -> subprocess.Popen:
    root = tmp_path / f"www{port}"
    (root / "latest" / "meta-data" / "iam").mkdir(parents=True)
    (root / "latest" / "meta-data" / "iam" / "info").write_text(body)
    server = node.spawn([sys.executable, "-c", _SERVER, node.address, str(port), str(root)],
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if node.exec(["curl", "-s", "-m", "1", f"http://{node.address}:{port}/latest/meta-data/iam/info"], check=False).stdout == body:
            return server
        time.sleep(0.05)
    raise RuntimeError("HTTP server did not start")


def metadata_from(pod) -> str:
    return pod.exec(["curl", "-s", "-m", "3", "http://169.254.169.254/latest/meta-data/iam/info"]).stdout


def test_a_stale_first_rule_hijacks_the_pod_and_fix_restores_kube2iam(node, tmp_path):
    pod = node.add_pod("web")
    serve(node, 8282, "kube2iam (current)", tmp_path)
    other = serve(node, 8181, "stale rule target", tmp_path)
    add_rule(node)
    assert metadata_from(pod) == "kube2iam (current)"  # the kept rule intercepts the pod's call

    node.iptables("-t", "nat", "-I", "PREROUTING", "1", *[p.format(iface="docker0", dest=f"{node.address}:8181") for p in SHAPE])
    assert metadata_from(pod) == "stale rule target"  # first match wins: the failure fix exists for

    # 8181 named as rbacbridge's old port, but something still listens there: a conflict; the node is left as it is
    blocked = cli("fix", "--yes", "--stale-port", "8181", *cli_opts(node))
    assert blocked.returncode == 1 and "conflict" in blocked.stderr
    assert "listening on" in blocked.stdout and ":8181" in blocked.stdout
    assert len(kube2iam_rules(node)) == 2

    other.kill()
    other.wait()
    unnamed = cli("fix", "--yes", *cli_opts(node))  # a dead port nobody named: another tool's, left alone
    assert unnamed.returncode == 0, unnamed.stderr
    assert metadata_from(pod) == ""  # still hijacked (to a dead port)
    result = cli("fix", "--yes", "--stale-port", "8181", *cli_opts(node))  # named and dead now: stale
    assert result.returncode == 0, result.stderr
    assert metadata_from(pod) == "kube2iam (current)"


# --- whose rule is it (issue 10): other tools' rules survive status, fix, remove and teardown ----


def helm_kube2iam(namespace: str = "kube2iam", name: str = "kube2iam", app_port: int | None = None) -> dict:
    """A kube2iam DaemonSet as the Helm chart installs it (no --app-port: kube2iam's default 8181)."""
    args = ["--host-interface=cali+", "--node=$(NODE_NAME)", "--host-ip=$(HOST_IP)", "--iptables=true", "--auto-discover-base-arn"]
    if app_port is not None:
        args.append(f"--app-port={app_port}")
    return {
        "apiVersion": "apps/v1", "kind": "DaemonSet",
        "metadata": {"name": name, "namespace": namespace,
                     "labels": {"app.kubernetes.io/name": "kube2iam", "app.kubernetes.io/instance": "kube2iam",
                                "app.kubernetes.io/managed-by": "Helm", "helm.sh/chart": "kube2iam-2.6.0"},
                     "annotations": {"meta.helm.sh/release-name": "kube2iam", "meta.helm.sh/release-namespace": namespace}},
        "spec": {"selector": {"matchLabels": {"app.kubernetes.io/name": "kube2iam", "app.kubernetes.io/instance": "kube2iam"}},
                 "template": {"metadata": {"labels": {"app.kubernetes.io/name": "kube2iam", "app.kubernetes.io/instance": "kube2iam"}},
                              "spec": {"hostNetwork": True,
                                       "containers": [{"name": "kube2iam", "image": "jtblin/kube2iam:0.11.1", "args": args}]}}},
    }


FOREIGN_OTHER_HOST = ["-i", "eth1", "-p", "tcp", "-d", "169.254.169.254/32", "--dport", "80", "-j", "DNAT",
                      "--to-destination", "10.0.0.5:9999"]
FOREIGN_REDIRECT = ["-i", "docker0", "-p", "tcp", "-d", "169.254.169.254/32", "--dport", "80", "-j", "REDIRECT",
                    "--to-ports", "8282"]


def foreign_dport(node: Node) -> list[str]:
    return ["-i", "docker0", "-p", "tcp", "-d", "169.254.169.254/32", "--dport", "443", "-j", "DNAT",
            "--to-destination", f"{node.address}:8443"]


def listen(node: Node, port: int) -> subprocess.Popen:
    """A bare TCP listener inside the node's namespace (something running on that port)."""
    code = ("import socket, time\ns = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
            f"s.bind(('0.0.0.0', {port})); s.listen(); time.sleep(600)\n")
    proc = node.spawn([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if f":{port} " in node.exec(["ss", "-Htln"]).stdout:
            return proc
        time.sleep(0.02)
    raise RuntimeError("listener did not start")


def seed_foreign(node: Node) -> list[str]:
    """Every kind of rule that is not rbacbridge's, plus rbacbridge's own duplicates and a dead-port rule.
    Returns the foreign rules as `iptables -S` prints them."""
    node.iptables("-t", "nat", "-A", "PREROUTING", *FOREIGN_OTHER_HOST)  # not even this node
    add_rule(node, port=9000, iface="cali+")  # this node, a live listener (started by the caller)
    add_rule(node, port=8181, iface="cali+")  # this node, the Helm kube2iam's port (a DaemonSet in the cluster)
    node.iptables("-t", "nat", "-A", "PREROUTING", *FOREIGN_REDIRECT)
    node.iptables("-t", "nat", "-A", "PREROUTING", *foreign_dport(node))
    foreign = [r for r in node.nat_rules() if "169.254.169.254" in r]
    add_rule(node, port=7000)  # this node, a dead port no DaemonSet uses: stale
    add_rule(node)
    add_rule(node)
    return foreign


def cluster_opts(node: Node, kube_api) -> list[str]:
    return [*cli_opts(node), "--kubeconfig", kube_api.kubeconfig]


@pytest.fixture
def cluster_with_helm_kube2iam(kube_api):
    kube_api.store.put({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "kube2iam"}})
    kube_api.store.put(helm_kube2iam())
    return kube_api


def test_foreign_rules_survive_status_fix_and_remove(node, cluster_with_helm_kube2iam):
    kube_api = cluster_with_helm_kube2iam
    listen(node, 9000)
    foreign = seed_foreign(node)

    status = cli("status", "-o", "json", *cluster_opts(node, kube_api))
    assert status.returncode == 0, status.stderr
    report = json.loads(status.stdout)["nodes"][0]
    assert report["backend"] in ("nf_tables", "legacy") and report["kept"] == 1
    assert len(report["conflicts"]) == 2
    assert any("kube2iam DaemonSet kube2iam/kube2iam (--app-port 8181, Helm release kube2iam)" in c for c in report["conflicts"])
    assert any(":9000" in c and "listening" in c for c in report["conflicts"])
    assert [r for r in node.nat_rules() if "169.254.169.254" in r] == foreign + [wanted(node, 7000), wanted(node), wanted(node)]

    # fix: two running interceptors' rules are conflicts -> nothing on this node changes
    blocked = cli("fix", "--yes", *cluster_opts(node, kube_api))
    assert blocked.returncode == 1 and "left unchanged because of a conflict" in blocked.stderr
    assert "held back" in blocked.stderr  # a plan note (notes go to stderr)
    assert [r for r in node.nat_rules() if "169.254.169.254" in r] == foreign + [wanted(node, 7000), wanted(node), wanted(node)]

    # remove: rbacbridge's rules go; the dead port's only once named stale; interceptors' and other tools' rules stay
    removed = cli("remove", "--yes", "-o", "json", *cluster_opts(node, kube_api))
    assert removed.returncode == 0, removed.stderr
    assert json.loads(removed.stdout)["nodes"][0]["deleted"] == 2
    assert [r for r in node.nat_rules() if "169.254.169.254" in r] == foreign + [wanted(node, 7000)]
    named = cli("remove", "--yes", "-o", "json", "--stale-port", "7000", *cluster_opts(node, kube_api))
    assert named.returncode == 0, named.stderr
    assert json.loads(named.stdout)["nodes"][0]["deleted"] == 1
    assert [r for r in node.nat_rules() if "169.254.169.254" in r] == foreign


def test_with_no_cluster_the_listener_alone_decides(node):
    """Nodes given by --node only: a port is in use only if something listens there."""
    listener = listen(node, 9000)
    foreign = seed_foreign(node)
    blocked = cli("fix", "--yes", *cli_opts(node))
    assert blocked.returncode == 1 and "conflict" in blocked.stderr
    assert "process python" in blocked.stdout and ":9000" in blocked.stdout  # root sees the process name
    assert [r for r in node.nat_rules() if "169.254.169.254" in r] == foreign + [wanted(node, 7000), wanted(node), wanted(node)]

    listener.kill()
    listener.wait()
    result = cli("fix", "--yes", *cli_opts(node))  # 9000, 8181 and 7000 are dead ports now, but nobody named them
    assert result.returncode == 0, result.stderr
    assert [r for r in node.nat_rules() if "169.254.169.254" in r] == foreign + [wanted(node, 7000), wanted(node)]
    named = cli("fix", "--yes", "--stale-port", "9000", "--stale-port", "8181", "--stale-port", "7000", *cli_opts(node))
    assert named.returncode == 0, named.stderr
    survivors = [r for r in foreign if f"{node.address}:9000" not in r and f"{node.address}:8181" not in r]
    assert len(survivors) == 3
    assert [r for r in node.nat_rules() if "169.254.169.254" in r] == survivors + [wanted(node)]


def test_fix_deletes_a_named_stale_port_rule_and_duplicates_and_keeps_foreign_ones(node, cluster_with_helm_kube2iam):
    kube_api = cluster_with_helm_kube2iam
    node.iptables("-t", "nat", "-A", "PREROUTING", *FOREIGN_OTHER_HOST)
    node.iptables("-t", "nat", "-A", "PREROUTING", *FOREIGN_REDIRECT)
    node.iptables("-t", "nat", "-A", "PREROUTING", *foreign_dport(node))
    foreign = [r for r in node.nat_rules() if "169.254.169.254" in r]
    add_rule(node, port=7000)
    add_rule(node)
    add_rule(node)
    unnamed = cli("fix", "--yes", *cluster_opts(node, kube_api))
    assert unnamed.returncode == 0, unnamed.stderr
    assert [r for r in node.nat_rules() if "169.254.169.254" in r] == foreign + [wanted(node, 7000), wanted(node)]
    result = cli("fix", "--yes", "--stale-port", "7000", *cluster_opts(node, kube_api))
    assert result.returncode == 0, result.stderr
    assert "named stale" in result.stdout
    assert [r for r in node.nat_rules() if "169.254.169.254" in r] == foreign + [wanted(node)]


def test_force_deletes_the_conflicting_rules_and_the_plan_says_so(node, cluster_with_helm_kube2iam):
    kube_api = cluster_with_helm_kube2iam
    listen(node, 9000)
    foreign = seed_foreign(node)
    dry = cli("fix", "--dry-run", "--force", "-o", "json", *cluster_opts(node, kube_api))
    assert dry.returncode == 0, dry.stderr
    steps = json.loads(dry.stdout)["plan"]["steps"]
    forced = [s for s in steps if (s.get("details") or {}).get("force")]
    assert len(forced) == 2 and all("--force" in s["reason"] and s["action"] == "delete" for s in forced)
    result = cli("fix", "--yes", "--force", *cluster_opts(node, kube_api))
    assert result.returncode == 0, result.stderr
    survivors = [r for r in foreign if f"{node.address}:9000" not in r and f"{node.address}:8181" not in r]
    assert len(survivors) == 3
    # --force settles conflicts; it does not make a dead port nobody named rbacbridge's
    assert [r for r in node.nat_rules() if "169.254.169.254" in r] == survivors + [wanted(node, 7000), wanted(node)]


def test_teardown_leaves_interceptors_and_other_tools_rules(node, cluster_with_helm_kube2iam, tmp_path):
    kube_api = cluster_with_helm_kube2iam
    listen(node, 9000)
    foreign = seed_foreign(node)
    ctx = Context(config_for(tmp_path, node, kubeconfig=kube_api.kubeconfig), parts=("nodes",))
    plan = planner.plan_teardown(ctx)
    assert not plan.conflicts
    assert len([s for s in plan.steps if s.action == "delete"]) == 2
    assert planner.run(ctx, plan, teardown=True).ok
    assert [r for r in node.nat_rules() if "169.254.169.254" in r] == foreign + [wanted(node, 7000)]


def test_setup_stops_on_a_node_conflict_and_changes_nothing(node, cluster_with_helm_kube2iam):
    kube_api = cluster_with_helm_kube2iam
    foreign = seed_foreign(node)
    env = dict(os.environ, PYTHONPATH=str(REPO), COLUMNS="200")
    result = subprocess.run([sys.executable, "-m", "rbacbridge", "setup", "--only", "nodes", "--yes",
                             *cluster_opts(node, kube_api)], capture_output=True, text=True, env=env, timeout=60,
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 1 and "conflict(s), nothing changed" in result.stderr
    assert "Helm release kube2iam" in result.stdout
    assert [r for r in node.nat_rules() if "169.254.169.254" in r] == foreign + [wanted(node, 7000), wanted(node), wanted(node)]


def place_own_kube2iam_pod(store, node: Node, name: str = "kube2iam-node") -> dict:
    """The test API server's DaemonSet controller made rbacbridge's kube2iam pod without a node: put it on `node`
    (hostNetwork, nodeName, hostIP), as the kubelet would."""
    pod = store.get("Pod", name, "kube-system")
    pod["spec"].update(hostNetwork=True, nodeName=node.name)
    pod["status"]["hostIP"] = pod["status"]["podIP"] = node.address
    return store.put(pod)


def test_rbacbridges_own_old_port_is_stale_in_setup_but_a_conflict_for_fix_alone(node, kube_api, tmp_path):
    from tests.kube_helpers import ACCOUNT

    # rbacbridge's kube2iam, installed earlier on 8181, still running there
    ctx = Context(config_for(tmp_path, node, kubeconfig=kube_api.kubeconfig, account_id=ACCOUNT, kube2iam_port=8181,
                             rollout_timeout=5.0), parts=("kube",))
    assert planner.run(ctx, planner.plan_setup(ctx)).ok
    old_kube2iam = listen(node, 8181)
    add_rule(node, port=8181)

    # the listener on 8181 is not yet shown to be rbacbridge's pod on this node: not moving, a conflict
    ctx = Context(config_for(tmp_path, node, kubeconfig=kube_api.kubeconfig, account_id=ACCOUNT), parts=("kube", "nodes"))
    plan = planner.plan_setup(ctx)
    assert not [s for s in plan.steps if s.system == "nodes" and s.action == "delete"]
    assert [s for s in plan.conflicts if s.system == "nodes" and "not a pod of rbacbridge's kube2iam" in s.reason]

    place_own_kube2iam_pod(kube_api.store, node)  # the DaemonSet's pod (by owner UID) runs on this node
    ctx = Context(config_for(tmp_path, node, kubeconfig=kube_api.kubeconfig, account_id=ACCOUNT), parts=("kube", "nodes"))
    plan = planner.plan_setup(ctx)
    [stale] = [s for s in plan.steps if s.system == "nodes" and s.action == "delete"]
    assert "moves from port 8181 to 8282" in stale.reason and not plan.conflicts

    alone = run_iptables(Context(config_for(tmp_path, node, kubeconfig=kube_api.kubeconfig)), "fix")
    assert not alone.applied and alone.conflicted
    assert "rbacbridge DaemonSet kube-system/kube2iam (--app-port 8181)" in alone.reports[0].conflicts[0]
    assert kube2iam_rules(node) == [wanted(node, 8181)]

    # the setup itself: the DaemonSet now declares 8282, the old process is gone with the rollout; the nodes
    # part, planned again, still knows 8181 as rbacbridge's old port (remembered for the run) and deletes it
    old_kube2iam.kill()
    old_kube2iam.wait()
    assert planner.run(ctx, plan).ok
    assert "--app-port=8282" in kube_api.store.get("DaemonSet", "kube2iam", "kube-system")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert kube2iam_rules(node) == []


def test_each_delete_checks_again_that_a_dead_port_is_still_dead(node, tmp_path):
    add_rule(node, port=7000)  # dead when planned
    add_rule(node)
    started = []

    def confirm(plan) -> bool:  # between the plan and the run, something starts listening on 7000
        assert [s.action for s in plan.changes] == ["delete"]
        started.append(listen(node, 7000))
        return True

    result = run_iptables(Context(config_for(tmp_path, node, node_stale_ports=(7000,))), "fix", confirm=confirm)
    assert started and result.applied and result.ok
    assert result.reports[0].deleted == 0
    assert kube2iam_rules(node) == [wanted(node, 7000), wanted(node)]


def test_rules_in_the_other_backend_are_reported_and_never_touched(node):
    if subprocess.run(["iptables", "-V"], capture_output=True, text=True).stdout.find("nf_tables") < 0:
        pytest.skip("the node's iptables is not the nf_tables backend")
    legacy = ["iptables-legacy", "-t", "nat", "-A", "PREROUTING", *[p.format(iface="docker0", dest=f"{node.address}:7000") for p in SHAPE]]
    node.exec(legacy)
    add_rule(node)
    add_rule(node)
    status = cli("status", "-o", "json", *cli_opts(node))
    assert status.returncode == 0, status.stderr
    report = json.loads(status.stdout)["nodes"][0]
    assert report["backend"] == "nf_tables" and len(report["other_backend_rules"]) == 1
    fixed = cli("fix", "--yes", *cli_opts(node))
    assert fixed.returncode == 0, fixed.stderr
    assert "legacy iptables backend also holds 1 rule(s)" in fixed.stderr
    assert kube2iam_rules(node) == [wanted(node)]
    assert wanted(node, 7000) in node.exec(["iptables-legacy", "-t", "nat", "-S", "PREROUTING"]).stdout


def test_lab_pods_added_later_keep_the_gateway_address(node: Node):
    """Lab infrastructure: docker0's MAC is set once. A bridge whose address was never set takes its lowest
    port MAC, so a later pod could change it and an earlier pod's cached gateway MAC would go stale (its new
    connections hang until ARP re-resolves: the lab tenants test's intermittent verify timeouts)."""
    first = node.add_pod("p0", bridge_cidr="10.233.250.1/24")

    def docker0_mac() -> str:
        shown = subprocess.run(["ip", "-n", node.namespace, "-j", "link", "show", "docker0"], capture_output=True, text=True, check=True)
        return json.loads(shown.stdout)[0]["address"]

    def gateway_answers() -> bool:  # port 1 of docker0's address: refused (reachable) or timed out (dropped)
        probe = "import socket,sys\ns=socket.socket();s.settimeout(2)\ntry: s.connect(('10.233.250.1',1))\n" \
                "except ConnectionRefusedError: sys.exit(0)\nexcept OSError: sys.exit(1)\n"
        return subprocess.run(["ip", "netns", "exec", first.namespace, sys.executable, "-c", probe], timeout=10).returncode == 0

    assert gateway_answers()  # the first pod's neighbour entry for the gateway is now cached
    before = docker0_mac()
    for i in range(8):
        node.add_pod(f"p{i + 1}", bridge_cidr="10.233.250.1/24")
    assert docker0_mac() == before
    assert gateway_answers()
