"""`rbacbridge audit` reading real nodes (sshd + iptables in network namespaces): each rule finding
appears exactly when planted, and the audit leaves every rule as it found it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from rbacbridge.audit import run_audit
from rbacbridge.config import Config
from rbacbridge.planner import Context
from tests.fixtures_audit import BASE_ARGS, HELM_LABELS, T0, daemonset, iso
from tests.fixtures_kube import kube_api  # noqa: F401
from tests.fixtures_nodes import host_ruleset_unchanged, make_node, netns, node  # noqa: F401

pytestmark = [netns, pytest.mark.netns]
REPO = Path(__file__).resolve().parents[1]
IPTABLES_KINDS = {"iptables-duplicate", "iptables-stale", "iptables-conflict", "iptables-foreign", "iptables-missing", "iptables-order"}


def rule(node, port: int = 8181, iface: str = "cni0") -> list[str]:
    return ["-d", "169.254.169.254/32", "-i", iface, "-p", "tcp", "-m", "tcp", "--dport", "80", "-j", "DNAT",
            "--to-destination", f"{node.address}:{port}"]


FOREIGN = ["-d", "169.254.169.254/32", "-p", "tcp", "-m", "comment", "--comment", "other-tool", "-j", "DNAT",
           "--to-destination", "10.9.9.9:9999"]


def seed_cluster(store, node) -> None:
    """kube2iam (Helm, port 8181, cni0) with a ready pod on node n1, whose InternalIP is the netns node."""
    store.add_node("n1", node.address, labels={"kubernetes.io/os": "linux"})
    ds = store.put(daemonset("kube-system", "kube2iam", "jtblin/kube2iam:0.13.1", BASE_ARGS, HELM_LABELS))
    store.put({"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": "kube2iam-n1", "namespace": "kube-system", "labels": {"app": "kube2iam"},
                            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "DaemonSet", "name": "kube2iam",
                                                 "uid": ds["metadata"]["uid"], "controller": True}]},
               "spec": {"nodeName": "n1", "hostNetwork": True, "containers": [{"name": "kube2iam", "image": "x"}]},
               "status": {"phase": "Running", "startTime": iso(T0),
                          "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": iso(T0)}]}})
    store.auto_ready = False


def ssh_config(kube_api, node, tmp_path) -> Config:
    known = tmp_path / "known_hosts"
    known.write_text(f"{node.known_host_name} {node.host_public_key}\n")
    return Config(kubeconfig=kube_api.kubeconfig, ssh_user="root", ssh_key=str(node.client_key), known_hosts=str(known),
                  ssh_config="none", ssh_connect_timeout=3.0, ssh_command_timeout=10.0)


CASES = [
    ("one good rule", [rule], set()),
    ("missing", [], {"iptables-missing"}),
    ("duplicate", [rule, rule, rule], {"iptables-duplicate"}),
    ("stale after", [rule, lambda n: rule(n, port=8282)], {"iptables-stale"}),
    ("stale first", [lambda n: rule(n, port=8282), rule], {"iptables-stale", "iptables-order"}),
    ("old interface", [lambda n: rule(n, iface="docker0")], {"iptables-stale", "iptables-missing"}),
    ("foreign after", [rule, lambda n: FOREIGN], {"iptables-foreign"}),
    ("foreign first", [lambda n: FOREIGN, rule], {"iptables-foreign", "iptables-order"}),
]


def test_each_rule_finding_appears_exactly_when_planted_and_nothing_changes(kube_api, node, tmp_path):
    seed_cluster(kube_api.store, node)
    config = ssh_config(kube_api, node, tmp_path)
    for label, plants, expected in CASES:
        node.iptables("-t", "nat", "-F", "PREROUTING")
        for plant in plants:
            node.iptables("-t", "nat", "-A", "PREROUTING", *plant(node))
        before = node.nat_rules()
        result = run_audit(Context(config=config, parts=("kube", "nodes")))
        assert result.complete, (label, result.errors)
        assert result.ids() & IPTABLES_KINDS == expected, label
        assert all(f.objects == ["Node n1"] for f in result.findings if f.kind in IPTABLES_KINDS)
        assert node.nat_rules() == before, label  # read only
        assert result.counts["nodes_over_ssh"] == 1
    assert {r.method for r in kube_api.store.requests} == {"GET"}
    nodes_lists = [r for r in kube_api.store.requests if r.path == "/api/v1/nodes"]
    assert len(nodes_lists) == len(CASES)  # the nodes part reuses the audit's one node list


def test_a_rule_to_a_port_something_listens_on_is_a_conflict_not_stale(kube_api, node, tmp_path):
    from tests.test_nodes_netns import listen

    seed_cluster(kube_api.store, node)
    config = ssh_config(kube_api, node, tmp_path)
    node.iptables("-t", "nat", "-F", "PREROUTING")
    node.iptables("-t", "nat", "-A", "PREROUTING", *rule(node))
    node.iptables("-t", "nat", "-A", "PREROUTING", *rule(node, port=9000))
    listener = listen(node, 9000)
    try:
        result = run_audit(Context(config=config, parts=("kube", "nodes")))
    finally:
        listener.kill()
        listener.wait()
    assert result.ids() & IPTABLES_KINDS == {"iptables-conflict"}
    conflict = next(f for f in result.findings if f.kind == "iptables-conflict")
    assert ":9000" in conflict.evidence and "listen" in conflict.message
    node.iptables("-t", "nat", "-F", "PREROUTING")


def test_cli_stale_rule_fails_a_foreign_rule_alone_does_not_and_an_unreachable_node_is_incomplete(kube_api, node, tmp_path):
    seed_cluster(kube_api.store, node)
    config = ssh_config(kube_api, node, tmp_path)
    base = [sys.executable, "-m", "rbacbridge", "audit", "--only", "kube,nodes", "--kubeconfig", kube_api.kubeconfig,
            "--ssh-user", "root", "--ssh-key", config.ssh_key, "--known-hosts", config.known_hosts, "--ssh-config", "none",
            "-o", "json"]
    env = dict(os.environ, PYTHONPATH=str(REPO))

    def audit(*extra: str) -> tuple[int, dict]:
        run = subprocess.run(base + list(extra), capture_output=True, text=True, env=env, timeout=120, stdin=subprocess.DEVNULL)
        assert run.returncode in (0, 1, 3), run.stderr
        return run.returncode, json.loads(run.stdout)

    node.iptables("-t", "nat", "-A", "PREROUTING", *rule(node, port=8282))
    node.iptables("-t", "nat", "-A", "PREROUTING", *rule(node))
    before = node.nat_rules()
    code, report = audit()
    assert code == 1
    stale = next(f for f in report["findings"] if f["id"] == "iptables-stale")
    assert f"{node.address}:8282" in stale["evidence"] and stale["fix"].startswith("`rbacbridge iptables fix`")
    assert "--stale-port 8282" in stale["evidence"]  # `iptables fix` deletes a rule to another port only once named
    assert node.nat_rules() == before

    node.iptables("-t", "nat", "-F", "PREROUTING")
    node.iptables("-t", "nat", "-A", "PREROUTING", *rule(node))
    node.iptables("-t", "nat", "-A", "PREROUTING", *FOREIGN)
    code, report = audit()
    assert code == 0 and [f["id"] for f in report["findings"] if f["part"] == "nodes"] == ["iptables-foreign"]

    node.stop_sshd()
    code, report = audit()
    assert code == 3 and report["complete"] is False and report["errors"][0].startswith("nodes: ")


def test_explicit_node_addresses_use_the_address_ssh_reached(kube_api, node, tmp_path):
    seed_cluster(kube_api.store, node)
    config = ssh_config(kube_api, node, tmp_path)
    from dataclasses import replace

    config = replace(config, node_hosts=(node.host,))
    node.iptables("-t", "nat", "-A", "PREROUTING", *rule(node))
    node.iptables("-t", "nat", "-A", "PREROUTING", *rule(node))
    result = run_audit(Context(config=config, parts=("kube", "nodes")), explicit_parts=True)
    assert result.complete, result.errors
    (dup,) = [f for f in result.findings if f.kind in IPTABLES_KINDS]
    assert dup.kind == "iptables-duplicate" and dup.objects == [f"Node {node.host}"]
    assert f"{node.address}:8181" in dup.evidence
