"""Waiting after setup (rollout) and after teardown (kube2iam's pods gone), and teardown's ownership rules."""

from __future__ import annotations

import threading

import pytest

from rbacbridge import kube, planner
from rbacbridge.errors import RbacbridgeError
from rbacbridge.plan import DELETE, LEFT_ALONE, UNCHANGED, execute
from tests.fixtures_kube import kube_api  # noqa: F401
from tests.kube_helpers import kube_context, steps_by_name


def test_rollout_timeout_names_the_unready_pod_its_reason_and_last_event(kube_api):
    store = kube_api.store
    store.auto_ready = False  # the controllers do nothing: we stage the cluster ourselves
    ctx = kube_context(kube_api, rollout_timeout=0.4)
    plan = planner.plan_setup(ctx)
    outcome = planner.run(ctx, plan)
    assert not outcome.ok
    daemonset = store.get("DaemonSet", "kube2iam", "kube-system")
    assert daemonset is not None  # applied, then the wait failed
    assert "timed out after 0.4s" in str(outcome.failure.error)

    # A node whose kube2iam pod cannot pull its image; the nginx Deployments are fine.
    store.set_status("DaemonSet", "kube2iam", "kube-system", {
        "observedGeneration": 1, "desiredNumberScheduled": 2, "currentNumberScheduled": 2,
        "updatedNumberScheduled": 2, "numberReady": 1, "numberAvailable": 1, "numberMisscheduled": 0})
    for name in ("nginx-vanilla", "nginx-annotated"):
        store.set_status("Deployment", name, "default", {"observedGeneration": 1, "replicas": 1, "updatedReplicas": 1,
                                                          "readyReplicas": 1, "availableReplicas": 1})
    labels = daemonset["spec"]["template"]["metadata"]["labels"]
    store.add_pod("kube-system", "kube2iam-good", labels, owner=daemonset, node="n1")
    store.add_pod("kube-system", "kube2iam-bad", labels, ready=False, waiting_reason="ImagePullBackOff",
                  owner=daemonset, node="n2", container="kube2iam")
    store.add_event("kube-system", "kube2iam-bad", "Pulling", "Pulling image", seconds_ago=30)
    store.add_event("kube-system", "kube2iam-bad", "Failed", "Failed to pull image \"jtblin/kube2iam:0.11.2\": not found")

    with pytest.raises(RbacbridgeError) as caught:
        kube.after_setup(ctx)
    message = str(caught.value)
    assert "\n" not in message
    assert "DaemonSet kube-system/kube2iam 1/2 available" in message
    assert "pod kube-system/kube2iam-bad not ready: container kube2iam ImagePullBackOff" in message
    assert 'last event: Failed: Failed to pull image "jtblin/kube2iam:0.11.2": not found' in message
    assert "kube2iam-good" not in message
    assert "nginx" not in message
    assert any("waiting for rollout" in m for m in ctx.reporter.messages)


def test_wait_succeeds_once_the_controllers_catch_up(kube_api):
    store = kube_api.store
    store.auto_ready = False
    ctx = kube_context(kube_api, rollout_timeout=5)
    assert execute(planner.plan_setup(ctx).steps).ok  # applied; nothing rolled out yet
    with pytest.raises(RbacbridgeError):
        kube.after_setup(kube_context(kube_api, rollout_timeout=0.1))

    def roll_out():
        for kind, name, ns in [("DaemonSet", "kube2iam", "kube-system"), ("Deployment", "nginx-vanilla", "default"),
                               ("Deployment", "nginx-annotated", "default")]:
            if kind == "DaemonSet":
                status = {"observedGeneration": 1, "desiredNumberScheduled": 1, "currentNumberScheduled": 1,
                          "updatedNumberScheduled": 1, "numberReady": 1, "numberAvailable": 1, "numberMisscheduled": 0}
            else:
                status = {"observedGeneration": 1, "replicas": 1, "updatedReplicas": 1, "readyReplicas": 1, "availableReplicas": 1}
            store.set_status(kind, name, ns, status)

    timer = threading.Timer(0.3, roll_out)
    timer.start()
    try:
        kube.after_setup(ctx)
    finally:
        timer.cancel()
    assert any(m.startswith("rolled out:") for m in ctx.reporter.messages)


def test_teardown_deletes_only_labelled_objects_and_the_owned_annotation(kube_api):
    store = kube_api.store
    ctx = kube_context(kube_api)
    assert planner.run(ctx, planner.plan_setup(ctx)).ok
    # Someone else's nginx-vanilla (no label) replaced ours, and the namespace has another annotation.
    store.delete("Deployment", "nginx-vanilla", "default")
    store.put({"apiVersion": "apps/v1", "kind": "Deployment",
               "metadata": {"name": "nginx-vanilla", "namespace": "default", "labels": {"team": "web"}},
               "spec": {"selector": {"matchLabels": {"a": "b"}}, "template": {"metadata": {"labels": {"a": "b"}},
                        "spec": {"containers": [{"name": "c", "image": "nginx"}]}}}})
    namespace = store.get("Namespace", "default")
    namespace["metadata"]["annotations"]["team"] = "web"
    store.put(namespace)

    ctx = kube_context(kube_api)
    plan = planner.plan_teardown(ctx)
    steps = steps_by_name(plan)
    assert steps[("Deployment", "default/nginx-vanilla")].action == LEFT_ALONE
    assert steps[("Deployment", "default/nginx-annotated")].action == DELETE
    assert steps[("Namespace", "default")].action == DELETE
    assert steps[("ClusterRole", "kube2iam")].action == DELETE
    assert [s.name for s in plan.steps][:2] == ["default/nginx-annotated", "default/nginx-vanilla"]
    outcome = planner.run(ctx, plan, teardown=True)
    assert outcome.ok, outcome.failure and outcome.failure.error

    assert store.get("Deployment", "nginx-vanilla", "default")["metadata"]["labels"] == {"team": "web"}
    for kind, name, ns in [("Deployment", "nginx-annotated", "default"), ("DaemonSet", "kube2iam", "kube-system"),
                           ("ClusterRoleBinding", "kube2iam", ""), ("ClusterRole", "kube2iam", ""),
                           ("ServiceAccount", "kube2iam", "kube-system")]:
        assert store.get(kind, name, ns) is None, (kind, name)
    assert store.objects_of("Pod", "kube-system") == []
    namespace = store.get("Namespace", "default")
    assert namespace is not None
    assert namespace["metadata"]["annotations"] == {"team": "web"}

    again = planner.plan_teardown(kube_context(kube_api))
    assert {s.action for s in again.steps} == {UNCHANGED, LEFT_ALONE}


def test_teardown_leaves_an_annotation_rbacbridge_did_not_set(kube_api):
    kube_api.store.put({"apiVersion": "v1", "kind": "Namespace", "metadata": {
        "name": "default", "annotations": {"iam.amazonaws.com/allowed-roles": '["nettech-s3-read-write"]'}}})
    plan = planner.plan_teardown(kube_context(kube_api))
    assert steps_by_name(plan)[("Namespace", "default")].action == LEFT_ALONE
    # setup sees the same value already there: unchanged, and it does not take ownership
    setup = planner.plan_setup(kube_context(kube_api))
    assert steps_by_name(setup)[("Namespace", "default")].action == UNCHANGED


def test_after_teardown_waits_for_kube2iam_pods_to_go(kube_api):
    store = kube_api.store
    ctx = kube_context(kube_api, rollout_timeout=5)
    assert planner.run(ctx, planner.plan_setup(ctx)).ok
    labels = {"app.kubernetes.io/name": "kube2iam", "app.kubernetes.io/managed-by": "rbacbridge"}
    store.add_pod("kube-system", "kube2iam-terminating", labels)  # no owner: the GC will not take it
    store.add_pod("kube-system", "coredns-1", {"k8s-app": "kube-dns"})
    # the pod goes 0.3 s after teardown starts waiting for it (not after a fixed time: a loaded machine
    # could finish the deletes later than that and the wait would never be seen)
    timers: list[threading.Timer] = []
    record = ctx.reporter.progress

    def progress(message: str) -> None:
        record(message)
        if "kube2iam pod(s) to terminate" in message and not timers:
            timers.append(threading.Timer(0.3, store.delete, args=("Pod", "kube2iam-terminating", "kube-system")))
            timers[0].start()

    ctx.reporter.progress = progress
    try:
        outcome = planner.run(ctx, planner.plan_teardown(ctx), teardown=True)
    finally:
        for timer in timers:
            timer.cancel()
    assert outcome.ok
    assert store.get("Pod", "kube2iam-terminating", "kube-system") is None
    assert store.get("Pod", "coredns-1", "kube-system") is not None
    assert "waiting for 1 kube2iam pod(s) to terminate" in ctx.reporter.messages


def test_after_teardown_times_out_naming_the_pods_left(kube_api):
    labels = {"app.kubernetes.io/name": "kube2iam", "app.kubernetes.io/managed-by": "rbacbridge"}
    kube_api.store.add_pod("kube-system", "kube2iam-stuck", labels)
    with pytest.raises(RbacbridgeError, match="kube-system/kube2iam-stuck"):
        kube.after_teardown(kube_context(kube_api, rollout_timeout=0.2))


def test_teardown_force_deletes_an_unlabelled_object(kube_api):
    store = kube_api.store
    store.put({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "kube2iam", "namespace": "kube-system"}})
    ctx = kube_context(kube_api)
    ctx.force = True
    plan = planner.plan_teardown(ctx)
    step = steps_by_name(plan)[("ServiceAccount", "kube-system/kube2iam")]
    assert step.action == DELETE and "--force" in step.reason
    assert planner.run(ctx, plan, teardown=True).ok
    assert store.get("ServiceAccount", "kube2iam", "kube-system") is None
