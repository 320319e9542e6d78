"""API failures become one clear line: 401, 403 (naming the permission), 409, 422, unreachable; kubeconfig contexts."""

from __future__ import annotations

import socket

import pytest

from rbacbridge import planner
from rbacbridge.config import Config
from rbacbridge.errors import RbacbridgeError, UsageError
from rbacbridge.kube import KubeApiError, KubeGateway
from rbacbridge.planner import Context
from tests.fixtures_kube import kube_api, write_kubeconfig  # noqa: F401
from tests.kube_helpers import kube_context


def _dead_url() -> str:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


def test_forbidden_clusterrole_creation_names_the_missing_permission(kube_api):
    kube_api.server.forbid("patch", "clusterroles")
    ctx = kube_context(kube_api)
    outcome = planner.run(ctx, planner.plan_setup(ctx))
    assert not outcome.ok
    message = str(outcome.failure.error)
    assert "\n" not in message
    assert message.startswith("missing Kubernetes permission: patch clusterroles.rbac.authorization.k8s.io (403 Forbidden")
    assert outcome.failure.failed.kind == "ClusterRole"
    assert [s.kind for s in outcome.done] == ["ServiceAccount"]  # stopped there; a re-run finishes
    assert kube_api.store.get("ClusterRole", "kube2iam") is None

    kube_api.store.forbidden.clear()
    ctx = kube_context(kube_api)
    plan = planner.plan_setup(ctx)
    assert [s.action for s in plan.steps][:2] == ["unchanged", "create"]
    assert planner.run(ctx, plan).ok


def test_forbidden_list_during_planning_is_one_line(kube_api):
    kube_api.server.forbid("list", "nodes")
    from rbacbridge.kube import cluster_nodes

    with pytest.raises(RbacbridgeError, match=r"^missing Kubernetes permission: list nodes \(403"):
        cluster_nodes(kube_context(kube_api))


def test_unauthorized_token(kube_api, tmp_path):
    kubeconfig = write_kubeconfig(tmp_path / "bad", {"c": kube_api.url}, "c", token="wrong")
    gw = KubeGateway(str(kubeconfig))
    with pytest.raises(KubeApiError, match="rejected the credentials \\(401 Unauthorized\\) on get clusterroles") as caught:
        gw.get("ClusterRole", "kube2iam")
    assert caught.value.status == 401


def test_invalid_object_is_a_422_line(kube_api):
    gw = KubeGateway(kube_api.kubeconfig)
    bad = {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "x", "namespace": "default"}, "color": "red"}
    with pytest.raises(KubeApiError, match=r"rejected ServiceAccount x as invalid \(422\)") as caught:
        gw.request("PATCH", "/api/v1/namespaces/default/serviceaccounts/x", body=bad,
                   query=[("fieldManager", "rbacbridge")], content_type="application/apply-patch+yaml",
                   what="ServiceAccount x")
    assert "color" in str(caught.value)
    assert kube_api.store.get("ServiceAccount", "x", "default") is None


def test_conflict_is_a_409_line(kube_api):
    gw = KubeGateway(kube_api.kubeconfig)
    with pytest.raises(KubeApiError, match=r"conflict \(409\) on create namespaces: namespaces \"default\" already exists"):
        gw.request("POST", "/api/v1/namespaces", body={"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "default"}})


def test_unreachable_server_is_one_line(tmp_path):
    kubeconfig = write_kubeconfig(tmp_path / "kc", {"gone": _dead_url()}, "gone")
    ctx = Context(Config(account_id="123456789012", kubeconfig=str(kubeconfig)), parts=("kube",))
    with pytest.raises(RbacbridgeError, match=r"^cannot reach the Kubernetes API server at http://127\.0\.0\.1:\d+ \(kubeconfig .*\): connection refused$"):
        planner.plan_setup(ctx)


def test_context_selects_the_cluster(kube_api, tmp_path):
    kubeconfig = write_kubeconfig(tmp_path / "kc", {"gone": _dead_url(), "lab": kube_api.url}, current="gone")
    kube_api.store.add_node("n1", "10.0.0.1")
    assert [o["metadata"]["name"] for o in KubeGateway(str(kubeconfig), context="lab").list("Node")] == ["n1"]
    with pytest.raises(RbacbridgeError, match="cannot reach"):
        KubeGateway(str(kubeconfig)).list("Node")
    with pytest.raises(UsageError, match="nope"):
        KubeGateway(str(kubeconfig), context="nope")


def test_kubeconfig_from_environment_and_missing_files(kube_api, tmp_path, monkeypatch):
    monkeypatch.setenv("KUBECONFIG", kube_api.kubeconfig)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    assert KubeGateway().source == f"kubeconfig {kube_api.kubeconfig}"
    with pytest.raises(UsageError, match="does not exist"):
        KubeGateway(str(tmp_path / "missing"))
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))
    with pytest.raises(UsageError, match="no kubeconfig found"):
        KubeGateway()
