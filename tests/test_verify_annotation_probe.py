"""Live annotation cells (rbacbridge.verify.annotation_probe): the rotation covers every tenant namespace from
the configuration alone; the probe pods go through the test Kubernetes API server (validated bodies), run the
AWS CLI through the exec API, and are deleted afterwards; an earlier run's leftovers are cleaned by label.
The lab (tests/test_lab.py) runs the same pods against the kube2iam stand-in over the wire."""

import json
import threading
import time

import pytest
import yaml

from rbacbridge import config as config_module
from rbacbridge.kube import KubeGateway
from rbacbridge.verify.annotation_probe import PROBE_POD_PREFIX, rotation, run_asks
from rbacbridge.verify.model import ERROR, NO_CREDENTIALS, ROLE_ANNOTATION
from tests.fixtures_kube import kube_api  # noqa: F401
from tests.fixtures_verify import ACCOUNT


def tenants(n: int, extra_namespaces: int = 0) -> list[dict]:
    out = [{"name": f"t{i:02d}", "namespaces": [f"ns-{i:02d}"], "role": f"t{i:02d}-s3"} for i in range(n)]
    out[0]["namespaces"] += [f"ns-00-x{j}" for j in range(extra_namespaces)]
    return out


def load(tmp_path, spec, **extra):
    path = tmp_path / "rbacbridge.yaml"
    path.write_text(yaml.safe_dump({"account_id": ACCOUNT, "tenants": spec, **extra}))
    return config_module.load(str(path))


@pytest.mark.parametrize("n,extra", [(2, 0), (3, 0), (3, 2), (10, 1)])
def test_rotation_covers_every_tenant_namespace_once(tmp_path, n, extra):
    config = load(tmp_path, tenants(n, extra))
    asks = rotation(config)
    namespaces = [ns for t in config.tenants for ns in t.namespaces]
    assert sorted(a.namespace for a in asks) == sorted(namespaces)  # every namespace, exactly once: one pod each
    owner = {ns: t.name for t in config.tenants for ns in t.namespaces}
    roles = {t.name: t.role for t in config.tenants}
    for ask in asks:
        assert ask.tenant == owner[ask.namespace] and ask.target_tenant != ask.tenant
        assert ask.target_role == roles[ask.target_tenant] == ask.annotation
    assert {a.target_role for a in asks} == set(roles.values())  # every tenant's role is asked for at least once


def test_rotation_nothing_to_ask_with_one_tenant_and_tenant_filter(tmp_path):
    assert rotation(load(tmp_path, tenants(1))) == []
    config = load(tmp_path, tenants(4, 1))
    only = rotation(config, "t00")
    assert [(a.namespace, a.target_tenant) for a in only] == [("ns-00", "t01"), ("ns-00-x0", "t01")]
    assert [(a.namespace, a.target_tenant) for a in rotation(config, "t03")] == [("ns-03", "t00")]


def test_rotation_uses_an_existing_roles_arn_as_the_annotation(tmp_path):
    spec = tenants(2)
    spec[1]["role"] = {"existing": f"arn:aws:iam::{ACCOUNT}:role/theirs"}
    config = load(tmp_path, spec)
    ask = next(a for a in rotation(config) if a.tenant == "t00")
    assert ask.annotation == f"arn:aws:iam::{ACCOUNT}:role/theirs" and ask.target_role == "theirs"


class Kubelet:
    """Plays the scheduler and kubelet: a created pod with no status turns Running with an IP."""

    def __init__(self, store):
        self.store, self.stop, self.seen = store, threading.Event(), []
        store.kubelet = lambda pod: True  # the store leaves created pods Pending: this thread runs them
        self.thread = threading.Thread(target=self.loop, daemon=True)
        self.thread.start()

    def loop(self):
        while not self.stop.is_set():
            for pod in self.store.objects_of("Pod"):
                if not (pod.get("status") or {}).get("phase"):
                    self.seen.append(pod)
                    pod["status"] = {"phase": "Running", "podIP": f"10.0.0.{len(self.seen)}"}
                    pod["spec"]["nodeName"] = "node-a"
                    self.store.put(pod)
            time.sleep(0.02)


def test_probe_pods_created_asked_and_deleted(tmp_path, kube_api):  # noqa: F811
    config = load(tmp_path, tenants(3), kubernetes={"kubeconfig": kube_api.kubeconfig})
    store = kube_api.store
    for t in config.tenants:
        store.put({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": t.namespaces[0]}})
    # an earlier run's pod (ours by label) and a tenant's own pod with a similar name (not ours): only ours goes
    labels = {"app.kubernetes.io/managed-by": "rbacbridge", "app.kubernetes.io/name": "rbacbridge-annotation-probe"}
    store.put({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": PROBE_POD_PREFIX + "old", "namespace": "ns-01",
                                                               "labels": labels}, "status": {"phase": "Running"}})
    store.put({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": PROBE_POD_PREFIX + "mine", "namespace": "ns-01",
                                                               "labels": {"app.kubernetes.io/name": "rbacbridge-annotation-probe"}},
               "status": {"phase": "Running"}})
    handed = {"ns-02"}  # a broken kube2iam: in ns-02 the pod gets the role it is annotated with

    def exec_handler(namespace, pod, container, argv):
        live = store.get("Pod", pod, namespace)
        role = live["metadata"]["annotations"][ROLE_ANNOTATION]
        assert argv[:3] == ["env", "AWS_PAGER=", "aws"] and "get-caller-identity" in argv
        if namespace in handed:
            arn = f"arn:aws:sts::{ACCOUNT}:assumed-role/{role}/pod"
            return 0, json.dumps({"Arn": arn, "Account": ACCOUNT, "UserId": "X"}).encode(), b""
        return 253, b"", b"\nUnable to locate credentials. You can configure credentials by running \"aws configure\".\n"

    kube_api.server.exec_handler = exec_handler
    kubelet = Kubelet(store)
    try:
        observed = run_asks(KubeGateway(kube_api.kubeconfig), config, rotation(config), timeout=10, poll=0.02)
    finally:
        kubelet.stop.set()
        kubelet.thread.join()
    by_ns = {a.namespace: (a.target_role, o) for a, o in observed.items()}
    assert {ns: (role, o.allowed) for ns, (role, o) in by_ns.items()} == {
        "ns-00": ("t01-s3", False), "ns-01": ("t02-s3", False), "ns-02": ("t00-s3", True)}
    assert by_ns["ns-00"][1].result.category == NO_CREDENTIALS
    assert "assumed-role/t00-s3/" in by_ns["ns-02"][1].result.detail
    # what was created: one pod per namespace, ours by label, annotated with the other tenant's role
    created = [p for p in kubelet.seen if p["metadata"]["name"] != PROBE_POD_PREFIX + "old"]
    assert sorted((p["metadata"]["namespace"], p["metadata"]["annotations"][ROLE_ANNOTATION]) for p in created) == [
        ("ns-00", "t01-s3"), ("ns-01", "t02-s3"), ("ns-02", "t00-s3")]
    assert all(p["metadata"]["labels"] == labels and p["spec"]["containers"][0]["image"] == config.probe_image for p in created)
    # end state in the API server: every probe pod gone, the leftover too; the pod that is not ours stays
    assert [(p["metadata"]["namespace"], p["metadata"]["name"]) for p in store.objects_of("Pod")] == [
        ("ns-01", PROBE_POD_PREFIX + "mine")]


def test_probe_pod_that_never_runs_is_no_verdict_and_is_deleted(tmp_path, kube_api):  # noqa: F811
    config = load(tmp_path, tenants(2), kubernetes={"kubeconfig": kube_api.kubeconfig})
    for t in config.tenants:
        kube_api.store.put({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": t.namespaces[0]}})
    kube_api.store.kubelet = lambda pod: True  # no kubelet runs them: the pods stay Pending
    observed = run_asks(KubeGateway(kube_api.kubeconfig), config, rotation(config), timeout=0.3, poll=0.05)
    assert {o.allowed for o in observed.values()} == {None}
    assert {o.result.category for o in observed.values()} == {ERROR}
    assert all("not running after" in o.result.detail for o in observed.values())
    assert kube_api.store.objects_of("Pod") == []


def test_no_rbac_to_create_pods_is_no_verdict_naming_the_option(tmp_path, kube_api):  # noqa: F811
    config = load(tmp_path, tenants(2), kubernetes={"kubeconfig": kube_api.kubeconfig})
    kube_api.server.forbid("create", "pods")
    observed = run_asks(KubeGateway(kube_api.kubeconfig), config, rotation(config), timeout=1, poll=0.05)
    assert all(o.allowed is None and "--no-annotation-probe" in o.result.detail for o in observed.values())
