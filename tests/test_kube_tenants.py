"""Tenants in Kubernetes against the test API server: each tenant namespace allows only its tenant's
role (rbacbridge's field manager), each tenant's workloads carry its role and label; removing a tenant
removes exactly its workloads and annotations; teardown removes all; render passes strict validation."""

from __future__ import annotations

import json

import kubernetes_validate
import pytest

from rbacbridge import planner
from rbacbridge.config import Config, Tenant
from rbacbridge.kube import desired_objects
from rbacbridge.plan import DELETE, UNCHANGED
from tests.fixtures_kube import kube_api  # noqa: F401
from tests.kube_helpers import ACCOUNT, CollectingReporter

ALLOWED = "iam.amazonaws.com/allowed-roles"
EXISTING = "arn:aws:iam::111122223333:role/team/b-role"
A = Tenant("client-a", ("client-a",), "client-a-s3", None, "client-a-s3", ("nettech-helm-test",), (), ("nginx-client-a",))
B = Tenant("client-b", ("client-b", "client-b-jobs"), "b-role", EXISTING, None, (), (), ("nginx-client-b",))
C = Tenant("client-c", ("client-c",), "client-c-s3", None, "client-c-s3", (), ("client-c-data",), ("nginx-client-c", "worker-c"))


def _context(kube_api, *tenants, **values):
    config = Config(account_id=ACCOUNT, kubeconfig=kube_api.kubeconfig, rollout_timeout=5.0, tenants=tenants, **values)
    return planner.Context(config, parts=("kube",), reporter=CollectingReporter())


def _run(ctx, teardown=False):
    plan = (planner.plan_teardown if teardown else planner.plan_setup)(ctx)
    outcome = planner.run(ctx, plan, teardown=teardown)
    assert outcome.ok, outcome.failure and outcome.failure.error
    return plan


def _namespaces(kube_api, *names):
    for name in names:
        kube_api.store.put({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})


@pytest.mark.parametrize("version", ["1.29.0", "1.33.0"])
def test_tenant_objects_pass_strict_validation(version):
    objects = desired_objects(Config(account_id=ACCOUNT, tenants=(A, B, C)), "cali+")
    for obj in objects:
        kubernetes_validate.validate(obj, version, strict=True)
    namespaces = {o["metadata"]["name"]: json.loads(o["metadata"]["annotations"][ALLOWED]) for o in objects if o["kind"] == "Namespace"}
    assert namespaces == {"client-a": ["client-a-s3"], "client-b": [EXISTING], "client-b-jobs": [EXISTING], "client-c": ["client-c-s3"]}
    worker = next(o for o in objects if o["metadata"]["name"] == "worker-c")
    assert worker["metadata"]["namespace"] == "client-c"
    assert worker["metadata"]["labels"]["rbacbridge.io/tenant"] == "client-c"
    assert worker["spec"]["template"]["metadata"]["labels"]["rbacbridge.io/tenant"] == "client-c"
    assert worker["spec"]["selector"]["matchLabels"] == {"app.kubernetes.io/name": "worker-c"}
    assert worker["spec"]["template"]["metadata"]["annotations"] == {"iam.amazonaws.com/role": "client-c-s3"}
    b = next(o for o in objects if o["metadata"]["name"] == "nginx-client-b")
    assert b["spec"]["template"]["metadata"]["annotations"] == {"iam.amazonaws.com/role": EXISTING}


def test_no_tenants_renders_no_annotation_or_workload():
    objects = desired_objects(Config(account_id=ACCOUNT, tenants=()), "cali+")
    assert [o["kind"] for o in objects] == ["ServiceAccount", "ClusterRole", "ClusterRoleBinding", "DaemonSet", "Deployment"]


def test_remove_a_tenant_removes_only_its_objects(kube_api):
    _namespaces(kube_api, "client-a", "client-b", "client-b-jobs", "client-c")
    _run(_context(kube_api, A, B, C))
    store = kube_api.store
    for ns, value in (("client-a", ["client-a-s3"]), ("client-b-jobs", [EXISTING]), ("client-c", ["client-c-s3"])):
        live = store.get("Namespace", ns)
        assert json.loads(live["metadata"]["annotations"][ALLOWED]) == value
        assert [m["manager"] for m in live["metadata"]["managedFields"]] == ["rbacbridge"]
    assert store.get("Deployment", "worker-c", "client-c") is not None
    keep = {(k, n, ns): json.dumps(store.get(k, n, ns), sort_keys=True) for k, n, ns in
            [("Namespace", "client-a", ""), ("Namespace", "client-b", ""), ("Deployment", "nginx-client-a", "client-a"),
             ("Deployment", "nginx-client-b", "client-b")]}
    # someone else's annotation on a namespace that was never a tenant's stays
    store.put({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "other", "annotations": {ALLOWED: '["x"]'}}})

    plan = _run(_context(kube_api, A, B))
    changes = [s for s in plan.steps if s.action != UNCHANGED]
    assert {(s.action, s.kind, s.name) for s in changes} == {
        (DELETE, "Namespace", "client-c"), (DELETE, "Deployment", "client-c/nginx-client-c"),
        (DELETE, "Deployment", "client-c/worker-c")}
    assert all("client-c" in s.message for s in changes)
    assert store.get("Deployment", "worker-c", "client-c") is None
    assert ALLOWED not in (store.get("Namespace", "client-c")["metadata"].get("annotations") or {})
    assert store.get("Namespace", "client-c") is not None  # the namespace stays
    assert store.get("Namespace", "other")["metadata"]["annotations"][ALLOWED] == '["x"]'
    for (k, n, ns), before in keep.items():
        assert json.dumps(store.get(k, n, ns), sort_keys=True) == before, (k, n)
    again = planner.plan_setup(_context(kube_api, A, B))
    assert {s.action for s in again.steps} == {UNCHANGED}


def test_teardown_removes_every_tenant(kube_api):
    _namespaces(kube_api, "client-a", "client-b", "client-b-jobs", "client-c")
    _run(_context(kube_api, A, B, C))
    _run(_context(kube_api, A), teardown=True)  # B and C are only in the cluster now: removed too
    store = kube_api.store
    assert not [o for o in store.objects.values()
                if (o["metadata"].get("labels") or {}).get("app.kubernetes.io/managed-by") == "rbacbridge"]
    assert not [o for o in store.objects.values() if ALLOWED in (o["metadata"].get("annotations") or {})]


def test_switching_from_the_article_to_tenants_removes_nginx_annotated(kube_api):
    _namespaces(kube_api, "client-a")
    _run(planner.Context(Config(account_id=ACCOUNT, kubeconfig=kube_api.kubeconfig, rollout_timeout=5.0),
                         parts=("kube",), reporter=CollectingReporter()))
    assert kube_api.store.get("Deployment", "nginx-annotated", "default") is not None
    plan = _run(_context(kube_api, A))
    assert kube_api.store.get("Deployment", "nginx-annotated", "default") is None
    assert ALLOWED not in (kube_api.store.get("Namespace", "default")["metadata"].get("annotations") or {})
    assert any(s.action == DELETE and "tenant nginx-annotated" in s.message for s in plan.steps)
