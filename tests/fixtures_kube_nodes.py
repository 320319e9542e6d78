"""A cluster of real nodes for `--via kubernetes`: netns nodes (tests/netns.py, real iptables) known to
the test API server (tests/kube_apiserver.py) as Nodes, whose pod exec runs the command inside the
node's network namespace when the pod is a hostNetwork pod on that node (as the lab does for pods).

    cluster = kube_nodes(3)                   # fixture factory: 3 nodes, each also reachable over SSH
    cluster.add_kube2iam(node)                # a kube2iam DaemonSet pod on that node (hostNetwork)
    cluster.execs                             # [(namespace, pod, node name)] of every exec answered
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.fixtures_kube import KubeApi, kube_api  # noqa: F401
from tests.fixtures_nodes import host_ruleset_unchanged, make_node  # noqa: F401
from tests.netns import Node

KUBE2IAM_NS = "kube-system"


def image_path() -> str:
    """A PATH like upstream kube2iam's image (alpine + iptables): every command of this machine but `ss`
    (iproute2 is not in it), so the pod path's `ss` stand-in is what answers."""
    directory = Path(tempfile.gettempdir()) / f"rbb-no-ss-{os.getpid()}"
    if not directory.is_dir():
        staging = Path(tempfile.mkdtemp(prefix="rbb-no-ss-"))
        for folder in ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"):
            if not os.path.isdir(folder):
                continue
            for name in os.listdir(folder):
                target = staging / name
                if name != "ss" and not target.exists() and not os.path.islink(target):
                    os.symlink(os.path.join(folder, name), target)
        try:
            staging.rename(directory)
        except OSError:  # another thread made it first
            import shutil

            shutil.rmtree(staging, ignore_errors=True)
    return str(directory)


@dataclass
class NodeCluster:
    api: KubeApi
    nodes: list[Node]
    execs: list[tuple[str, str, str]] = field(default_factory=list)
    pods_seen: dict[str, dict] = field(default_factory=dict)  # pod name -> the pod as it was when exec'd
    on_exec: object = None  # called with (namespace, pod) before the command runs
    lock: threading.Lock = field(default_factory=threading.Lock)
    daemonset: dict | None = None
    pod_paths: dict[str, str] = field(default_factory=dict)  # pod name -> PATH inside it (e.g. a tenant's own `iptables`)

    def node(self, name: str) -> Node:
        return next(n for n in self.nodes if n.name == name)

    def exec(self, namespace: str, pod: str, container: str | None, argv: list[str]) -> tuple[int, bytes, bytes]:
        obj = self.api.store.get("Pod", pod, namespace)
        spec = (obj or {}).get("spec") or {}
        if not spec.get("hostNetwork"):
            return 1, b"", f"pod {namespace}/{pod} is not a hostNetwork pod of a test node\n".encode()
        node = next((n for n in self.nodes if n.name == spec.get("nodeName")), None)
        if node is None:
            return 1, b"", f"pod {namespace}/{pod} is on no test node\n".encode()
        with self.lock:
            self.execs.append((namespace, pod, node.name))
            self.pods_seen.setdefault(pod, obj)
        if self.on_exec is not None:
            self.on_exec(namespace, pod)
        env = {"PATH": self.pod_paths.get(pod) or image_path(), "LC_ALL": "C"}
        done = subprocess.run(["ip", "netns", "exec", node.namespace, *argv], capture_output=True, timeout=60,
                              stdin=subprocess.DEVNULL, env=env)
        return done.returncode, done.stdout, done.stderr

    def add_kube2iam(self, node: Node, port: int = 8282) -> dict:
        """kube2iam's DaemonSet (once) and its hostNetwork pod on `node` (running)."""
        store = self.api.store
        if self.daemonset is None:
            self.daemonset = store.put({
                "apiVersion": "apps/v1", "kind": "DaemonSet",
                "metadata": {"name": "kube2iam", "namespace": KUBE2IAM_NS,
                             "labels": {"app.kubernetes.io/name": "kube2iam", "app.kubernetes.io/managed-by": "rbacbridge"}},
                "spec": {"selector": {"matchLabels": {"app.kubernetes.io/name": "kube2iam"}},
                         "template": {"metadata": {"labels": {"app.kubernetes.io/name": "kube2iam"}},
                                      "spec": {"hostNetwork": True, "containers": [{
                                          "name": "kube2iam", "image": "jtblin/kube2iam:0.13.0",
                                          "args": [f"--app-port={port}", "--iptables=true"]}]}}}})
        ds = self.daemonset
        return store.put({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": f"kube2iam-{node.name}", "namespace": KUBE2IAM_NS,
                         "labels": {"app.kubernetes.io/name": "kube2iam", "app.kubernetes.io/managed-by": "rbacbridge"},
                         "ownerReferences": [{"apiVersion": "apps/v1", "kind": "DaemonSet", "name": "kube2iam",
                                              "uid": ds["metadata"]["uid"], "controller": True}]},
            "spec": {"nodeName": node.name, "hostNetwork": True,
                     "containers": [{"name": "kube2iam", "image": "jtblin/kube2iam:0.13.0"}]},
            "status": {"phase": "Running", "hostIP": node.address, "podIP": node.address,
                       "conditions": [{"type": "Ready", "status": "True"}],
                       "containerStatuses": [{"name": "kube2iam", "ready": True, "restartCount": 0, "image": "x", "imageID": "",
                                              "state": {"running": {"startedAt": "2026-01-01T00:00:00Z"}}}]},
        })

    def our_pods(self) -> list[dict]:
        return [p for p in self.api.store.objects_of("Pod")
                if (p["metadata"].get("labels") or {}).get("app.kubernetes.io/managed-by") == "rbacbridge"
                and (p["metadata"].get("labels") or {}).get("app.kubernetes.io/component") == "node-exec"]


@pytest.fixture
def kube_nodes(make_node, kube_api, tmp_path):  # noqa: F811
    """Factory: kube_nodes(count, names=None) -> NodeCluster (nodes named node-0.. or `names`; one SSH key)."""
    def make(count: int = 1, names: tuple[str, ...] | None = None) -> NodeCluster:
        names = names or tuple(f"node-{i}" for i in range(count))
        key = tmp_path / "client_key"
        if not key.exists():
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "", "-f", str(key)], check=True)
        nodes = [make_node(name, client_key=key) for name in names]
        cluster = NodeCluster(kube_api, nodes)
        for node in nodes:
            kube_api.store.add_node(node.name, node.address)
        kube_api.server.exec_handler = cluster.exec
        return cluster

    yield make
    import shutil

    shutil.rmtree(image_path(), ignore_errors=True)
