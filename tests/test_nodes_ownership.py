"""Issue 22, node items (attacks 2, 3 and 4): a node rule is rbacbridge's only on evidence, listeners first;
the pod used on a node is rbacbridge's own kube2iam pod or one it created. Real iptables in network namespaces
(tests/netns.py), the test API server (tests/kube_apiserver.py); assertions read `iptables -t nat -S` inside
the namespaces and the pods left in the API server."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
import yaml

from tests.fixtures_kube import kube_api  # noqa: F401
from tests.fixtures_kube_nodes import KUBE2IAM_NS, kube_nodes  # noqa: F401
from tests.fixtures_nodes import host_ruleset_unchanged, make_node, netns  # noqa: F401
from tests.netns import Node
from tests.test_nodes_netns import add_rule, helm_kube2iam, listen, wanted
from tests.test_kube_second_kube2iam import kiam_agent
from tests.test_nodes_via_kube import rbb

pytestmark = [netns, pytest.mark.netns]


def metadata_rules(node: Node) -> list[str]:
    return [r for r in node.nat_rules() if "169.254.169.254" in r]


def running_pod(store, namespace: str, name: str, node: Node, owner: dict | None, labels: dict | None = None,
                image: str = "x", owner_uid: str | None = None) -> dict:
    """A running hostNetwork pod on `node`, its controller `owner` (by UID, or `owner_uid` to forge one)."""
    meta: dict = {"name": name, "namespace": namespace, "labels": labels or {}}
    if owner is not None:
        meta["ownerReferences"] = [{"apiVersion": "apps/v1", "kind": "DaemonSet", "name": owner["metadata"]["name"],
                                    "uid": owner_uid or owner["metadata"]["uid"], "controller": True}]
    return store.put({
        "apiVersion": "v1", "kind": "Pod", "metadata": meta,
        "spec": {"nodeName": node.name, "hostNetwork": True, "containers": [{"name": "main", "image": image}]},
        "status": {"phase": "Running", "hostIP": node.address, "podIP": node.address,
                   "conditions": [{"type": "Ready", "status": "True"}],
                   "containerStatuses": [{"name": "main", "ready": True, "restartCount": 0, "image": image, "imageID": "",
                                          "state": {"running": {"startedAt": "2026-01-01T00:00:00Z"}}}]},
    })


def pods(store) -> list[tuple[str, str, str]]:
    return sorted((p["metadata"]["namespace"], p["metadata"]["name"], p["metadata"]["uid"]) for p in store.objects_of("Pod"))


def write_config(tmp_path: Path, cluster, *, via: str = "ssh", **sections) -> str:
    """rbacbridge.yaml reaching `cluster`'s nodes over SSH (root, strict host keys) or through Kubernetes."""
    config: dict = {"kubernetes": {"kubeconfig": cluster.api.kubeconfig}, "kube2iam": {"host_interface": "docker0"}}
    if via == "ssh":
        known = tmp_path / "known_hosts"
        known.write_text("".join(f"{n.known_host_name} {n.host_public_key}\n" for n in cluster.nodes))
        config["nodes"] = {"via": "ssh", "hosts": [n.host for n in cluster.nodes], "ssh_user": "root",
                           "ssh_key": str(cluster.nodes[0].client_key), "known_hosts": str(known), "ssh_config": "none"}
    else:
        config["nodes"] = {"via": "kubernetes"}
    for section, values in sections.items():
        config.setdefault(section, {}).update(values)
    path = tmp_path / f"rbacbridge-{uuid.uuid4().hex[:6]}.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


# --- attack 2: a running Helm kube2iam on the configured port ----------------------------------------------


@pytest.mark.parametrize("via", ["ssh", "kubernetes"])
def test_attack2_a_running_helm_kube2iam_on_the_configured_port_keeps_its_rule_on_every_node(kube_nodes, tmp_path, via):
    cluster = kube_nodes(2)
    store = cluster.api.store
    store.put({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "kube2iam"}})
    helm = store.put(helm_kube2iam())  # no --app-port: kube2iam's default 8181, --host-interface=cali+
    for node in cluster.nodes:
        running_pod(store, "kube2iam", f"kube2iam-{node.name}", node, helm, {"app.kubernetes.io/name": "kube2iam"},
                    image="jtblin/kube2iam:0.11.1")
        listen(node, 8181)  # Helm's kube2iam serves there...
        add_rule(node, port=8181, iface="cali+")  # ...and appended its rule when it started
    helm_rules = {n.name: metadata_rules(n) for n in cluster.nodes}
    helm_pods = pods(store)
    config = write_config(tmp_path, cluster, via=via, kube2iam={"port": 8181, "host_interface": "cali+"})

    removed = rbb("iptables", "remove", "--yes", "-o", "json", "-c", config)
    assert removed.returncode == 0, removed.stderr
    assert {n.name: metadata_rules(n) for n in cluster.nodes} == helm_rules  # main: deleted on every node
    report = json.loads(removed.stdout)
    assert [(r["deleted"], r["left_alone"]) for r in report["nodes"]] == [(0, 1), (0, 1)]
    assert all("Helm release kube2iam" in s["reason"] for s in report["plan"]["steps"])

    down = rbb("teardown", "--only", "nodes", "--yes", "-c", config)
    assert down.returncode == 0, down.stderr
    assert {n.name: metadata_rules(n) for n in cluster.nodes} == helm_rules

    up = rbb("setup", "--only", "nodes", "--yes", "-o", "json", "-c", config)
    assert up.returncode == 1 and "conflict(s), nothing changed" in up.stderr, up.stderr
    conflicts = [s for s in json.loads(up.stdout)["plan"]["steps"] if s["action"] == "conflict"]
    assert len(conflicts) == 2 and all("kube2iam.port" in s["reason"] and "Helm release kube2iam" in s["reason"] for s in conflicts)
    assert {n.name: metadata_rules(n) for n in cluster.nodes} == helm_rules

    # where Helm's rule is missing, --add-missing must not send the pods to Helm's kube2iam either
    first = cluster.nodes[0]
    first.iptables("-t", "nat", "-F", "PREROUTING")
    added = rbb("iptables", "fix", "--add-missing", "--yes", "-c", config)
    assert added.returncode == 1 and "conflict" in added.stderr, added.stderr
    assert metadata_rules(first) == [] and metadata_rules(cluster.nodes[1]) == helm_rules[cluster.nodes[1].name]

    assert pods(store) == helm_pods  # Helm's pods untouched; every short-lived pod (--via kubernetes) gone
    if via == "ssh":
        assert store.mutating_requests() == []


# --- attack 3: no dead-port heuristic; stale only when named ---------------------------------------------


def kiam_and_proxy(node: Node) -> list[str]:
    add_rule(node, port=8183, iface="cali+")  # a kiam agent's rule (its agent restarting: nothing listens)
    add_rule(node, port=8775, iface="weave")  # a metadata proxy's (not running at this moment)
    return metadata_rules(node)


def test_attack3_other_interceptors_rules_survive_teardown_and_fix_until_named_stale(kube_nodes, tmp_path):
    cluster = kube_nodes(2)
    theirs = {n.name: kiam_and_proxy(n) for n in cluster.nodes}
    for node in cluster.nodes:
        add_rule(node)
        add_rule(node)
    config = write_config(tmp_path, cluster)

    down = rbb("teardown", "--only", "nodes", "--yes", "-o", "json", "-c", config)
    assert down.returncode == 0, down.stderr
    assert {n.name: metadata_rules(n) for n in cluster.nodes} == theirs  # main: only [] was left
    steps = json.loads(down.stdout)["plan"]["steps"]
    assert not [s for s in steps if s["action"] == "delete" and (":8183" in s["message"] or ":8775" in s["message"])]
    assert all("--stale-port" in s["reason"] for s in steps if s["action"] == "left-alone")

    for node in cluster.nodes:
        add_rule(node)
        add_rule(node)
    fixed = rbb("iptables", "fix", "--yes", "-o", "json", "-c", config)
    assert fixed.returncode == 0, fixed.stderr
    assert {n.name: metadata_rules(n) for n in cluster.nodes} == {n.name: theirs[n.name] + [wanted(n)] for n in cluster.nodes}
    assert [(r["deleted"], r["left_alone"]) for r in json.loads(fixed.stdout)["nodes"]] == [(1, 2), (1, 2)]

    # named stale (the flag): the plan says so, then exactly that rule goes
    dry = rbb("iptables", "fix", "--dry-run", "--stale-port", "8183", "-o", "json", "-c", config)
    assert dry.returncode == 0, dry.stderr
    deletes = [s for s in json.loads(dry.stdout)["plan"]["steps"] if s["action"] == "delete"]
    assert len(deletes) == 2 and all(":8183" in s["message"] and "named stale" in s["reason"] for s in deletes)
    named = rbb("iptables", "fix", "--yes", "--stale-port", "8183", "-c", config)
    assert named.returncode == 0, named.stderr
    for node in cluster.nodes:
        assert metadata_rules(node) == [theirs[node.name][1], wanted(node)]

    # named stale in the config (nodes.stale_ports): teardown deletes it with rbacbridge's own
    config = write_config(tmp_path, cluster, nodes={"stale_ports": [8775]})
    down = rbb("teardown", "--only", "nodes", "--yes", "-c", config)
    assert down.returncode == 0, down.stderr
    assert all(metadata_rules(n) == [] for n in cluster.nodes)


def test_attack3_a_kiam_agent_is_an_interceptor_its_port_is_in_use_even_when_named_stale(kube_nodes, tmp_path):
    cluster = kube_nodes(1)
    node = cluster.nodes[0]
    cluster.api.store.put(kiam_agent())  # its pods are restarting: nothing listens on 8183 right now
    add_rule(node, port=8183, iface="cali+")
    add_rule(node)
    before = metadata_rules(node)
    config = write_config(tmp_path, cluster, nodes={"stale_ports": [8183]})

    fixed = rbb("iptables", "fix", "--yes", "-c", config)
    assert fixed.returncode == 1 and "conflict" in fixed.stderr, fixed.stderr  # main: deleted as a dead port
    assert "kiam agent DaemonSet kiam/kiam-agent (--port 8183" in fixed.stdout
    assert metadata_rules(node) == before
    removed = rbb("iptables", "remove", "--yes", "-c", config)
    assert removed.returncode == 0, removed.stderr
    assert metadata_rules(node) == before[:1]  # rbacbridge's own went; the kiam agent's stays


# --- which listener on the configured port is rbacbridge's -------------------------------------------------


def test_our_listener_is_our_own_daemonsets_pod_by_owner_uid_and_over_ssh_alone_it_is_never_proven(kube_nodes, tmp_path):
    cluster = kube_nodes(2)
    ours, other = cluster.nodes
    store = cluster.api.store
    cluster.add_kube2iam(ours)  # rbacbridge's DaemonSet kube-system/kube2iam and its pod on `ours` (owner UID)
    # on `other`: a pod that looks like it (namespace, labels, owner name) but whose owner UID is not the DaemonSet's
    running_pod(store, KUBE2IAM_NS, f"kube2iam-{other.name}", other, cluster.daemonset,
                {"app.kubernetes.io/name": "kube2iam", "app.kubernetes.io/managed-by": "rbacbridge"},
                owner_uid=str(uuid.uuid4()))
    before_pods = pods(store)
    for node in cluster.nodes:
        listen(node, 8282)
        add_rule(node)
        add_rule(node)

    # over SSH without the cluster: whatever listens on 8282 is not proven rbacbridge's
    ssh_only = write_config(tmp_path, cluster)
    ssh_only_cfg = yaml.safe_load(Path(ssh_only).read_text())
    del ssh_only_cfg["kubernetes"]
    Path(ssh_only).write_text(yaml.safe_dump(ssh_only_cfg))
    fixed = rbb("iptables", "fix", "--yes", "-c", ssh_only)
    assert fixed.returncode == 0, fixed.stderr
    assert all(metadata_rules(n) == [wanted(n)] for n in cluster.nodes)  # duplicates go: a copy stays
    removed = rbb("iptables", "remove", "--yes", "-o", "json", "-c", ssh_only)
    assert removed.returncode == 0, removed.stderr
    assert all(metadata_rules(n) == [wanted(n)] for n in cluster.nodes)
    assert all("cannot tell whether it is its own kube2iam" in s["reason"] for s in json.loads(removed.stdout)["plan"]["steps"])

    # with the cluster: rbacbridge's pod (owner UID) runs on `ours` -> its rule goes; `other`'s pod is forged -> stays
    with_cluster = write_config(tmp_path, cluster)
    removed = rbb("iptables", "remove", "--yes", "-o", "json", "-c", with_cluster)
    assert removed.returncode == 0, removed.stderr
    assert metadata_rules(ours) == [] and metadata_rules(other) == [wanted(other)]
    [left] = [s for s in json.loads(removed.stdout)["plan"]["steps"] if s["action"] == "left-alone"]
    assert "no running pod of rbacbridge's kube2iam DaemonSet kube-system/kube2iam on this node" in left["reason"]
    assert pods(store) == before_pods and store.mutating_requests() == []


# --- attack 4: the pod used --via kubernetes is never a lookalike ----------------------------------------


def fake_iptables(tmp_path: Path, node: Node) -> str:
    """A tenant's `iptables` in its lookalike image: always shows rbacbridge's rule as kept, changes nothing."""
    fakebin = tmp_path / f"fakebin-{node.name}"
    fakebin.mkdir()
    script = fakebin / "iptables"
    script.write_text("#!/bin/sh\n"
                      "case \" $* \" in *\" -V \"*) echo 'iptables v1.8.9 (nf_tables)'; exit 0;; esac\n"
                      "case \" $* \" in *\" -S \"*) printf '%s\\n' '-P PREROUTING ACCEPT' "
                      f"'{wanted(node)}'; exit 0;; esac\n"
                      "exit 0\n")
    script.chmod(0o755)
    tmp_path.chmod(0o755)
    from tests.fixtures_kube_nodes import image_path

    return f"{fakebin}:{image_path()}"


def lookalike(store) -> dict:
    """A tenant's DaemonSet aaa-tenant/metrics (first by name), image .../kube2iam-exporter, hostNetwork."""
    store.put({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "aaa-tenant"}})
    labels = {"app": "metrics", "app.kubernetes.io/name": "kube2iam", "app.kubernetes.io/managed-by": "rbacbridge"}
    return store.put({"apiVersion": "apps/v1", "kind": "DaemonSet",
                      "metadata": {"name": "metrics", "namespace": "aaa-tenant", "labels": labels},
                      "spec": {"selector": {"matchLabels": {"app": "metrics"}},
                               "template": {"metadata": {"labels": labels},
                                            "spec": {"hostNetwork": True, "containers": [{
                                                "name": "kube2iam", "image": "example.com/acme/kube2iam-exporter:1",
                                                "args": ["--app-port=9797"]}]}}}})


def test_attack4_a_tenants_lookalike_pod_is_never_used_the_nodes_true_state_is(kube_nodes, tmp_path):
    cluster = kube_nodes(2)
    with_ours, without = cluster.nodes
    store = cluster.api.store
    cluster.add_kube2iam(with_ours)  # rbacbridge's own kube2iam pod on one node only
    tenant = lookalike(store)
    for node in cluster.nodes:
        pod = running_pod(store, "aaa-tenant", f"metrics-{node.name}", node, tenant, tenant["spec"]["template"]["metadata"]["labels"],
                          image="example.com/acme/kube2iam-exporter:1")
        cluster.pod_paths[pod["metadata"]["name"]] = fake_iptables(tmp_path, node)
        assert metadata_rules(node) == []  # the nat tables are empty: every pod there reaches the node role
    tenant_pods = [p for p in pods(store) if p[0] == "aaa-tenant"]
    opts = ["--via", "kubernetes", "--kubeconfig", cluster.api.kubeconfig, "--host-interface", "docker0"]

    status = rbb("iptables", "status", "-o", "json", *opts)
    assert status.returncode == 0, status.stderr
    reports = {r["node"]: r for r in json.loads(status.stdout)["nodes"]}
    assert {n: (r["kept"], r["missing"]) for n, r in reports.items()} == {with_ours.name: (0, "yes"), without.name: (0, "yes")}
    notes = json.loads(status.stdout)["plan"]["notes"]
    assert f"{with_ours.name}: reached through Kubernetes, exec in kube2iam pod {KUBE2IAM_NS}/kube2iam-{with_ours.name}" in notes
    assert any(n.startswith(f"{without.name}: reached through Kubernetes, exec in short-lived pod {KUBE2IAM_NS}/rbacbridge-node-exec-")
               for n in notes), notes

    audit = rbb("audit", "--only", "kube,nodes", "-o", "json", "--kubeconfig", cluster.api.kubeconfig)
    assert audit.returncode != 0, audit.stdout  # main: 0 ("kept" on both nodes)
    found = json.loads(audit.stdout)
    assert [f for f in found["findings"] if f["id"] == "iptables-missing" and f"Node {with_ours.name}" in f["objects"]]
    assert any(without.name in e and "creates no pod" in e for e in found["errors"]), found["errors"]

    added = rbb("iptables", "fix", "--add-missing", "--yes", "-o", "json", *opts)
    assert added.returncode == 0, added.stderr
    assert [r["missing"] for r in json.loads(added.stdout)["nodes"]] == ["added", "added"]
    for node in cluster.nodes:
        assert metadata_rules(node) == [wanted(node)]  # main: still empty

    assert not [pod for _, pod, _ in cluster.execs if pod.startswith("metrics-")]  # the lookalike never ran a command
    assert [p for p in pods(store) if p[0] == "aaa-tenant"] == tenant_pods
    assert cluster.our_pods() == []  # the short-lived pods are gone
