"""`--via kubernetes`: the nodes part through pod exec (kube2iam's pod, or a short-lived pod per node),
against real iptables in network namespaces that the test API server's exec reaches. The exec runs
with a PATH without `ss`, like upstream's alpine image, so the pod path's `ss` stand-in answers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.fixtures_kube import kube_api  # noqa: F401
from tests.fixtures_kube_nodes import KUBE2IAM_NS, kube_nodes  # noqa: F401
from tests.fixtures_nodes import host_ruleset_unchanged, make_node, netns  # noqa: F401
from tests.netns import Node
from tests.test_nodes_netns import add_rule, kube2iam_rules, wanted

pytestmark = [netns, pytest.mark.netns]
REPO = Path(__file__).resolve().parents[1]
FOREIGN_COMMENT = ["-d", "169.254.169.254/32", "-i", "docker0", "-p", "tcp", "-m", "comment", "--comment", "metadata proxy",
                   "-m", "tcp", "--dport", "80", "-j", "DNAT", "--to-destination", "10.9.9.9:80"]


COMMENTED = ('-A PREROUTING -d 169.254.169.254/32 -i docker0 -p tcp -m comment --comment "metadata proxy" '
             "-m tcp --dport 80 -j DNAT --to-destination 10.9.9.9:80")


def rbb(*args: str, timeout: float = 90) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO), COLUMNS="200")
    return subprocess.run([sys.executable, "-m", "rbacbridge", *args], capture_output=True, text=True, env=env,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def via_kube(cluster, *extra: str) -> list[str]:
    return ["--via", "kubernetes", "--kubeconfig", cluster.api.kubeconfig, "--host-interface", "docker0", *extra]


def via_ssh(cluster, tmp_path: Path) -> list[str]:
    known = tmp_path / "known_hosts"
    known.write_text("".join(f"{n.known_host_name} {n.host_public_key}\n" for n in cluster.nodes))
    hosts = [arg for n in cluster.nodes for arg in ("--node", n.host)]
    # the same cluster (kube2iam DaemonSets, InternalIPs) as the Kubernetes path sees; nodes by SSH address
    return ["--via", "ssh", *hosts, "--ssh-user", "root", "--ssh-key", str(cluster.nodes[0].client_key),
            "--known-hosts", str(known), "--ssh-config", "none", "--kubeconfig", cluster.api.kubeconfig,
            "--host-interface", "docker0"]


def plant(node: Node) -> None:
    """Stale (old interface, dead port), 3 identical copies of the rule, and two other tools' rules."""
    node.exec(["iptables", "-t", "nat", "-F", "PREROUTING"])
    add_rule(node, iface="cbr0")
    add_rule(node, port=8181)  # nothing listens there (named stale by fix and remove)
    for _ in range(3):
        add_rule(node)
    add_rule(node, ip="10.9.9.9")  # kube2iam-shaped, another address
    node.iptables("-t", "nat", "-A", "PREROUTING", *FOREIGN_COMMENT)


def comparable(data: dict, cluster) -> dict:
    """The JSON of one run, with each node's address made neutral (SSH names the node by address)."""
    by_address = {n.address: n.name for n in cluster.nodes}
    nodes = []
    for report in data["nodes"]:
        report = dict(report)
        report["node"] = by_address.get(report["node"], report["node"])
        report.pop("address")
        nodes.append(report)
    steps = [{k: v for k, v in s.items()} for s in data["plan"]["steps"]]
    for step in steps:
        step["name"] = by_address.get(step["name"], step["name"])
        text = json.dumps(step)
        for address, name in by_address.items():
            text = text.replace(f'"node": "{address}"', f'"node": "{name}"').replace(f"on {address}:", f"on {name}:")
        step.update(json.loads(text))
    return {"ok": data["ok"], "applied": data["applied"], "nodes": sorted(nodes, key=lambda r: r["node"]),
            "steps": sorted(steps, key=lambda s: (s["name"], s["message"]))}


def test_status_fix_remove_give_the_same_end_state_and_report_as_over_ssh(kube_nodes, tmp_path):
    cluster = kube_nodes(2)
    with_kube2iam, without = cluster.nodes
    cluster.add_kube2iam(with_kube2iam)
    for command in ("status", "fix", "remove"):
        outcomes = {}
        for path, opts in (("ssh", via_ssh(cluster, tmp_path)), ("kubernetes", via_kube(cluster))):
            for node in cluster.nodes:
                plant(node)
            extra = ["--yes", "--stale-port", "8181"] if command != "status" else []  # 8181: named as rbacbridge's old port
            result = rbb("iptables", command, "-o", "json", *extra, *opts)
            assert result.returncode == 0, (path, command, result.stderr)
            outcomes[path] = (comparable(json.loads(result.stdout), cluster),
                              {n.name: n.nat_rules() for n in cluster.nodes})
            if path == "kubernetes":
                assert f"{with_kube2iam.name}: exec in kube2iam pod {KUBE2IAM_NS}/kube2iam-{with_kube2iam.name}" in result.stderr
                assert f"{without.name}: starting pod {KUBE2IAM_NS}/rbacbridge-node-exec-" in result.stderr
                assert cluster.our_pods() == []  # the short-lived pod is gone
        assert outcomes["kubernetes"] == outcomes["ssh"], command
        report, rules = outcomes["kubernetes"]
        if command == "fix":
            for node in cluster.nodes:
                assert node.nat_rules() == [wanted(node), wanted(node).replace(f"{node.address}:", "10.9.9.9:"), COMMENTED]
            assert [r["deleted"] for r in report["nodes"]] == [4, 4]  # 2 stale + 2 duplicates
        if command == "remove":
            for node in cluster.nodes:
                assert node.nat_rules() == [wanted(node).replace(f"{node.address}:", "10.9.9.9:"), COMMENTED]
    assert cluster.execs and {pod for _, pod, _ in cluster.execs} >= {f"kube2iam-{with_kube2iam.name}"}
    assert all(node == (with_kube2iam.name if pod.startswith("kube2iam-") else without.name)
               for _, pod, node in cluster.execs)


def test_a_node_without_kube2iam_gets_a_short_lived_pod_that_is_gone_afterwards(kube_nodes):
    cluster = kube_nodes(1)
    node = cluster.nodes[0]
    add_rule(node)
    add_rule(node)
    result = rbb("iptables", "fix", "--yes", "-o", "json", *via_kube(cluster))
    assert result.returncode == 0, result.stderr
    assert kube2iam_rules(node) == [wanted(node)]
    made = [r for r in cluster.api.store.requests if r.method == "POST" and r.path.endswith("/pods")]
    gone = [r for r in cluster.api.store.requests if r.method == "DELETE" and "/pods/rbacbridge-node-exec-" in r.path]
    assert len(made) == 1 and len(gone) == 1
    assert cluster.our_pods() == [] and cluster.api.store.objects_of("Pod") == []
    (name, pod), = cluster.pods_seen.items()
    spec = pod["spec"]
    assert spec["nodeName"] == node.name and spec["hostNetwork"] is True and spec["tolerations"] == [{"operator": "Exists"}]
    security = spec["containers"][0]["securityContext"]
    assert security == {"privileged": False, "allowPrivilegeEscalation": False,
                        "capabilities": {"drop": ["ALL"], "add": ["NET_ADMIN"]}}
    assert spec["containers"][0]["image"] == "jtblin/kube2iam:0.13.0"
    assert pod["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "rbacbridge"
    assert f"{node.name}: reached through Kubernetes, exec in short-lived pod {KUBE2IAM_NS}/{name}" in json.loads(result.stdout)["plan"]["notes"]


def test_a_killed_run_leaves_a_labelled_pod_that_the_next_run_removes(kube_nodes):
    cluster = kube_nodes(1)
    node = cluster.nodes[0]
    add_rule(node)
    add_rule(node)
    cluster.api.store.put({"apiVersion": "v1", "kind": "Pod", "metadata": {
        "name": "rbacbridge-node-exec-0badcafe-0000", "namespace": KUBE2IAM_NS,
        "labels": {"app.kubernetes.io/managed-by": "someone-else", "app.kubernetes.io/component": "node-exec"}},
        "spec": {"containers": [{"name": "c", "image": "x"}]}})
    started = threading.Event()
    release = threading.Event()

    def hold(namespace, pod):
        started.set()
        release.wait(30)

    cluster.on_exec = hold
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-m", "rbacbridge", "iptables", "fix", "--yes", *via_kube(cluster)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, env=env)
    try:
        assert started.wait(60)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        release.set()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    cluster.on_exec = None
    left = cluster.our_pods()
    assert len(left) == 1 and left[0]["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "rbacbridge"
    assert len(kube2iam_rules(node)) == 2  # killed before it changed anything

    result = rbb("iptables", "fix", "--yes", *via_kube(cluster))
    assert result.returncode == 0, result.stderr
    assert f"removed 1 pod(s) an interrupted rbacbridge run left: {KUBE2IAM_NS}/{left[0]['metadata']['name']}" in result.stderr
    assert cluster.our_pods() == []
    assert [p["metadata"]["name"] for p in cluster.api.store.objects_of("Pod")] == ["rbacbridge-node-exec-0badcafe-0000"]
    assert kube2iam_rules(node) == [wanted(node)]


@pytest.mark.parametrize("level", ["restricted", "baseline"])
def test_a_podsecurity_namespace_is_a_one_line_error_and_nothing_is_created(kube_nodes, level):
    cluster = kube_nodes(1)
    add_rule(cluster.nodes[0])
    add_rule(cluster.nodes[0])
    ns = cluster.api.store.get("Namespace", KUBE2IAM_NS)
    ns["metadata"]["labels"] = {"pod-security.kubernetes.io/enforce": level}
    cluster.api.store.put(ns)
    result = rbb("iptables", "fix", "--yes", *via_kube(cluster))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: namespace kube-system enforces PodSecurity " + level), result.stderr
    assert "nothing created" in lines[0]
    assert not [r for r in cluster.api.store.requests if r.method in ("POST", "PUT", "PATCH", "DELETE")]
    assert cluster.execs == [] and len(kube2iam_rules(cluster.nodes[0])) == 2


def test_audit_without_ssh_options_reads_through_kube2iam_pods_and_creates_nothing(kube_nodes):
    cluster = kube_nodes(2)
    with_kube2iam, without = cluster.nodes
    cluster.add_kube2iam(with_kube2iam)
    for _ in range(3):
        add_rule(with_kube2iam)
    # --via auto: no SSH option given, so through Kubernetes
    result = rbb("audit", "--only", "kube,nodes", "-o", "json", "--kubeconfig", cluster.api.kubeconfig)
    data = json.loads(result.stdout)
    assert any(f["id"] == "iptables-duplicate" for f in data["findings"]), data["findings"]
    assert any(without.name in e and "creates no pod" in e for e in data["errors"]), data["errors"]
    assert not [r for r in cluster.api.store.requests if r.method in ("POST", "PUT", "PATCH", "DELETE")]
    assert len(kube2iam_rules(with_kube2iam)) == 3


def test_plan_and_dry_run_leave_no_pod_behind(kube_nodes):
    cluster = kube_nodes(1)
    node = cluster.nodes[0]
    add_rule(node)
    add_rule(node)
    planned = rbb("plan", "--only", "nodes", "-o", "json", *via_kube(cluster))
    assert planned.returncode == 0, planned.stderr
    assert [s["action"] for s in json.loads(planned.stdout)["steps"]] == ["unchanged", "delete"]
    dry = rbb("iptables", "fix", "--dry-run", *via_kube(cluster))
    assert dry.returncode == 0, dry.stderr
    assert len([r for r in cluster.api.store.requests if r.method == "POST"]) == 2  # one pod each run...
    assert cluster.our_pods() == []  # ...deleted when the command ended
    assert len(kube2iam_rules(node)) == 2
