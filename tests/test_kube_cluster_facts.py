"""Facts other parts use: nodes (providerID, addresses, selector), kube2iam's interface, exec, pods."""

from __future__ import annotations

import pytest

from rbacbridge import kube
from rbacbridge.kube import ClusterNode, cluster_nodes, host_interface, parse_provider_id
from tests.fixtures_kube import kube_api  # noqa: F401
from tests.kube_helpers import kube_context


@pytest.mark.parametrize("provider_id, expected", [
    ("aws:///us-east-1a/i-0123456789abcdef0", ("us-east-1a", "i-0123456789abcdef0")),
    ("aws:///eu-west-2c/i-0a1b2c3d", ("eu-west-2c", "i-0a1b2c3d")),
    ("aws://us-east-1a/i-0123456789abcdef0", (None, None)),
    ("gce://project/zone/vm-1", (None, None)),
    ("kind://docker/kind/kind-control-plane", (None, None)),
    ("", (None, None)),
    (None, (None, None)),
])
def test_provider_id_parsing(provider_id, expected):
    assert parse_provider_id(provider_id) == expected


def test_cluster_nodes_from_the_api_with_selector(kube_api):
    store = kube_api.store
    store.add_node("worker-1", "10.0.1.10", external_ip="54.1.2.3", provider_id="aws:///us-east-1b/i-0123456789abcdef0",
                   labels={"role": "worker"})
    store.add_node("worker-2", "10.0.1.11", labels={"role": "worker"})  # no providerID (e.g. kubeadm on EC2 without the cloud provider)
    store.add_node("control", "10.0.1.1", provider_id="aws:///us-east-1a/i-0fedcba9876543210", labels={"role": "control-plane"})
    ctx = kube_context(kube_api, node_selector="role=worker")
    nodes = cluster_nodes(ctx)
    assert nodes == [
        ClusterNode("worker-1", "10.0.1.10", "54.1.2.3", "i-0123456789abcdef0", "us-east-1b", "54.1.2.3"),
        ClusterNode("worker-2", "10.0.1.11", None, None, None, "10.0.1.11"),
    ]
    requests = [r for r in store.requests if r.path == "/api/v1/nodes"]
    assert requests[0].query["labelSelector"] == ["role=worker"]
    assert cluster_nodes(ctx) is nodes and len([r for r in store.requests if r.path == "/api/v1/nodes"]) == 1
    assert len(cluster_nodes(kube_context(kube_api))) == 3


def test_no_matching_nodes_is_an_error(kube_api):
    with pytest.raises(kube.RbacbridgeError, match="no nodes matching 'role=gpu'"):
        cluster_nodes(kube_context(kube_api, node_selector="role=gpu"))


def _daemonset(namespace: str, name: str) -> dict:
    return {"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": name, "namespace": namespace},
            "spec": {"selector": {"matchLabels": {"k8s-app": name}},
                     "template": {"metadata": {"labels": {"k8s-app": name}}, "spec": {"containers": [{"name": "c", "image": "x"}]}}}}


@pytest.mark.parametrize("namespace, daemonsets, interface", [
    ("kube-system", ["calico-node"], "cali+"),
    ("calico-system", ["calico-node"], "cali+"),
    ("kube-system", ["canal"], "cali+"),
    ("kube-system", ["aws-node", "calico-node"], "eni+"),
    ("kube-system", ["aws-node"], "eni+"),
    ("kube-system", ["kube-flannel-ds"], "cni0"),
    ("kube-flannel", ["kube-flannel-ds"], "cni0"),
    ("kube-system", ["cilium", "cilium-envoy"], "lxc+"),
    ("kube-system", ["weave-net"], "weave"),
    ("kube-system", ["kube-router"], "kube-bridge"),
    ("kube-system", ["openshift-sdn"], "tun0"),
    ("kube-system", ["kube-proxy"], "docker0"),
])
def test_interface_auto_detection_per_network_plugin(kube_api, namespace, daemonsets, interface):
    for name in daemonsets:
        kube_api.store.put(_daemonset(namespace, name))
    kube_api.store.put(_daemonset("kube-system", "kube-proxy"))
    ctx = kube_context(kube_api)
    chosen, reason = host_interface(ctx)
    assert chosen == interface
    assert reason in ctx.facts["notes"]
    if interface != "docker0":
        assert f"DaemonSet {namespace}/" in reason
    else:
        assert "no known network plugin" in reason


def test_interface_from_pods_when_no_daemonset(kube_api):
    kube_api.store.add_pod("kube-system", "weave-net-abcde", {"name": "weave-net"})
    assert host_interface(kube_context(kube_api))[0] == "weave"


def test_interface_detection_falls_back_to_kube_system_when_cluster_wide_list_is_forbidden(kube_api):
    kube_api.store.put(_daemonset("kube-system", "cilium"))
    kube_api.server.forbid("list", "daemonsets")
    ctx = kube_context(kube_api)
    # the namespaced list is the same verb here, so the fallback is forbidden too: one line naming it
    with pytest.raises(kube.RbacbridgeError, match="missing Kubernetes permission: list daemonsets.apps in namespace kube-system"):
        host_interface(ctx)


def test_configured_interface_needs_no_cluster():
    from rbacbridge.config import Config
    from rbacbridge.planner import Context

    ctx = Context(Config(host_interface="eth0", kubeconfig="/nonexistent"), parts=("kube",))
    assert host_interface(ctx) == ("eth0", "host interface eth0: set in the configuration")


def test_exec_returns_rc_stdout_stderr_over_websocket(kube_api):
    kube_api.store.add_pod("default", "nginx-annotated-0", {"app": "x"}, container="nginx")
    seen = []

    def handler(namespace, pod, container, argv):
        seen.append((namespace, pod, container, argv))
        if argv[0] == "fail":
            return 3, b"", b"it failed\n"
        return 0, ("out:" + " ".join(argv[1:])).encode(), b"warn\n"

    kube_api.server.exec_handler = handler
    gw = kube.KubeGateway(kube_api.kubeconfig)
    ok = gw.exec("default", "nginx-annotated-0", ["echo", "a b", "$HOME"], container="nginx")
    assert (ok.rc, ok.stdout, ok.stderr) == (0, "out:a b $HOME", "warn\n")
    failed = gw.exec("default", "nginx-annotated-0", ["fail"])
    assert (failed.rc, failed.stderr) == (3, "it failed\n")
    assert seen[0] == ("default", "nginx-annotated-0", "nginx", ["echo", "a b", "$HOME"])
    assert seen[1][2] is None


def test_exec_default_handler_and_missing_pod(kube_api):
    kube_api.store.add_pod("default", "p", {})
    gw = kube.KubeGateway(kube_api.kubeconfig)
    assert gw.exec("default", "p", ["aws", "--version"]).rc == 127
    with pytest.raises(kube.RbacbridgeError, match="404|not found"):
        gw.exec("default", "absent", ["true"])


def test_list_pods_with_label_selector(kube_api):
    store = kube_api.store
    store.add_pod("default", "a", {"app": "nginx", "tier": "web"})
    store.add_pod("default", "b", {"app": "nginx", "tier": "db"})
    store.add_pod("other", "c", {"app": "nginx", "tier": "web"})
    gw = kube.KubeGateway(kube_api.kubeconfig)
    assert [p["metadata"]["name"] for p in gw.list_pods("default", "app=nginx,tier!=db")] == ["a"]
    assert [p["metadata"]["name"] for p in gw.list_pods("default", "tier in (web, db)")] == ["a", "b"]
    assert [p["metadata"]["name"] for p in gw.list_pods("default")] == ["a", "b"]


def test_exec_forbidden_names_the_permission(kube_api):
    kube_api.store.add_pod("default", "p", {})
    kube_api.server.forbid("create", "pods")
    with pytest.raises(kube.RbacbridgeError, match=r"^missing Kubernetes permission: create pods/exec in namespace default \(403"):
        kube.KubeGateway(kube_api.kubeconfig).exec("default", "p", ["true"])
