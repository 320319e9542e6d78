"""Setup of the Kubernetes part against the test API server: apply, no-op, drift, ownership."""

from __future__ import annotations

import json

from rbacbridge import planner
from rbacbridge.plan import CONFLICT, CREATE, UNCHANGED, UPDATE
from tests.fixtures_kube import kube_api  # noqa: F401
from tests.kube_helpers import ACCOUNT, kube_context, steps_by_name


def _setup(ctx):
    plan = planner.plan_setup(ctx)
    outcome = planner.run(ctx, plan)
    assert outcome.ok, outcome.failure and outcome.failure.error
    return plan


def test_first_apply_creates_every_object_with_label_and_field_manager(kube_api):
    ctx = kube_context(kube_api)
    plan = _setup(ctx)
    actions = {(s.kind, s.name): s.action for s in plan.steps}
    assert actions == {
        ("ServiceAccount", "kube-system/kube2iam"): CREATE,
        ("ClusterRole", "kube2iam"): CREATE,
        ("ClusterRoleBinding", "kube2iam"): CREATE,
        ("DaemonSet", "kube-system/kube2iam"): CREATE,
        ("Namespace", "default"): UPDATE,
        ("Deployment", "default/nginx-vanilla"): CREATE,
        ("Deployment", "default/nginx-annotated"): CREATE,
    }
    store = kube_api.store
    for kind, name, ns in [("ServiceAccount", "kube2iam", "kube-system"), ("ClusterRole", "kube2iam", ""),
                           ("ClusterRoleBinding", "kube2iam", ""), ("DaemonSet", "kube2iam", "kube-system"),
                           ("Deployment", "nginx-vanilla", "default"), ("Deployment", "nginx-annotated", "default")]:
        obj = store.get(kind, name, ns)
        assert obj is not None, (kind, name)
        assert obj["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "rbacbridge"
        assert [m["manager"] for m in obj["metadata"]["managedFields"]] == ["rbacbridge"]
    applies = [r for r in store.mutating_requests("PATCH")]
    assert len(applies) == 7
    assert all(r.content_type == "application/apply-patch+yaml" and r.query["force"] == ["true"]
               and r.query["fieldManager"] == ["rbacbridge"] for r in applies)
    args = store.get("DaemonSet", "kube2iam", "kube-system")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert f"--base-role-arn=arn:aws:iam::{ACCOUNT}:role/" in args
    assert "--host-interface=docker0" in args and "--namespace-restrictions" in args
    namespace = store.get("Namespace", "default")
    assert json.loads(namespace["metadata"]["annotations"]["iam.amazonaws.com/allowed-roles"]) == ["nettech-s3-read-write"]
    annotated = store.get("Deployment", "nginx-annotated", "default")
    assert annotated["spec"]["template"]["metadata"]["annotations"] == {"iam.amazonaws.com/role": "nettech-s3-read-write"}
    assert "host interface docker0" in plan.notes[0]


def test_reapply_is_a_no_op_and_sends_no_patch(kube_api):
    _setup(kube_context(kube_api))
    before = len(kube_api.store.mutating_requests())
    ctx = kube_context(kube_api)
    plan = _setup(ctx)
    assert {s.action for s in plan.steps} == {UNCHANGED}
    assert kube_api.store.mutating_requests()[before:] == []
    assert ctx.gateways["kube"].patches == 0


def test_drifted_daemonset_args_show_as_update_and_setup_repairs_them(kube_api):
    _setup(kube_context(kube_api))
    store = kube_api.store
    daemonset = store.get("DaemonSet", "kube2iam", "kube-system")
    container = daemonset["spec"]["template"]["spec"]["containers"][0]
    good_args = list(container["args"])
    container["args"] = [a for a in good_args if a != "--namespace-restrictions"] + ["--host-interface=eth0"]
    store.put(daemonset)  # someone edited it with kubectl

    ctx = kube_context(kube_api)
    plan = planner.plan_setup(ctx)
    steps = steps_by_name(plan)
    step = steps[("DaemonSet", "kube-system/kube2iam")]
    assert step.action == UPDATE
    assert step.details["fields"] == ["spec.template.spec.containers[kube2iam].args"]
    assert "containers[kube2iam].args" in step.reason
    assert [s.action for k, s in steps.items() if k[0] != "DaemonSet"] == [UNCHANGED] * 6
    before = len(store.mutating_requests())
    assert planner.run(ctx, plan).ok
    assert len(store.mutating_requests()) == before + 1
    assert store.get("DaemonSet", "kube2iam", "kube-system")["spec"]["template"]["spec"]["containers"][0]["args"] == good_args


def test_fields_other_managers_add_do_not_count_as_drift(kube_api):
    _setup(kube_context(kube_api))
    store = kube_api.store
    deployment = store.get("Deployment", "nginx-vanilla", "default")
    deployment["metadata"]["labels"]["team"] = "web"
    deployment["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"] = "IfNotPresent"
    deployment["spec"]["revisionHistoryLimit"] = 10
    store.put(deployment)
    plan = planner.plan_setup(kube_context(kube_api))
    assert steps_by_name(plan)[("Deployment", "default/nginx-vanilla")].action == UNCHANGED


def test_existing_object_without_label_is_a_conflict_unless_adopted(kube_api):
    store = kube_api.store
    store.put({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": "kube2iam"},
               "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}]})
    plan = planner.plan_setup(kube_context(kube_api))
    step = steps_by_name(plan)[("ClusterRole", "kube2iam")]
    assert step.action == CONFLICT and "--adopt" in step.reason

    ctx = kube_context(kube_api)
    ctx.adopt = True
    plan = planner.plan_setup(ctx)
    step = steps_by_name(plan)[("ClusterRole", "kube2iam")]
    assert step.action == UPDATE and "rules" in step.details["fields"]
    assert planner.run(ctx, plan).ok
    role = store.get("ClusterRole", "kube2iam")
    assert role["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "rbacbridge"
    assert role["rules"][0]["resources"] == ["namespaces", "pods"]


def test_foreign_allowed_roles_annotation_is_a_conflict(kube_api):
    store = kube_api.store
    store.put({"apiVersion": "v1", "kind": "Namespace", "metadata": {
        "name": "default", "annotations": {"iam.amazonaws.com/allowed-roles": '["someone-elses-role"]'}}})
    plan = planner.plan_setup(kube_context(kube_api))
    step = steps_by_name(plan)[("Namespace", "default")]
    assert step.action == CONFLICT and "someone-elses-role" in step.message


def test_explicit_default_role_and_no_namespace_restrictions(kube_api):
    ctx = kube_context(kube_api, default_role="nettech-s3-read-only", namespace_restrictions=False,
                       host_interface="cni0", kube2iam_port=8181)
    plan = _setup(ctx)
    assert ("Namespace", "default") not in steps_by_name(plan)
    args = kube_api.store.get("DaemonSet", "kube2iam", "kube-system")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--default-role=nettech-s3-read-only" in args and "--auto-discover-default-role" not in args
    assert "--namespace-restrictions" not in args
    assert "--host-interface=cni0" in args and "--app-port=8181" in args
    assert "iam.amazonaws.com/allowed-roles" not in (kube_api.store.get("Namespace", "default")["metadata"].get("annotations") or {})
    assert plan.notes == ["host interface cni0: set in the configuration"]


def test_missing_namespace_blocks_the_run(kube_api):
    plan = planner.plan_setup(kube_context(kube_api, namespace="tenant-a"))
    step = steps_by_name(plan)[("Namespace", "tenant-a")]
    assert step.action == CONFLICT


def test_turning_restrictions_off_removes_the_annotation_rbacbridge_set(kube_api):
    _setup(kube_context(kube_api))
    ctx = kube_context(kube_api, namespace_restrictions=False)
    plan = planner.plan_setup(ctx)
    steps = steps_by_name(plan)
    assert steps[("Namespace", "default")].action == "delete"
    assert steps[("DaemonSet", "kube-system/kube2iam")].details["fields"] == ["spec.template.spec.containers[kube2iam].args"]
    assert planner.run(ctx, plan).ok
    assert "iam.amazonaws.com/allowed-roles" not in kube_api.store.get("Namespace", "default")["metadata"]["annotations"]
    assert {s.action for s in planner.plan_setup(kube_context(kube_api, namespace_restrictions=False)).steps} == {UNCHANGED}


def test_daemonset_made_by_an_older_rbacbridge_is_updated_field_by_field(kube_api):
    """An install from before issue 9: image 0.11.2, --auto-discover-default-role, --debug always on, no
    tolerations, priority class, probe or region. One setup brings every new field; the next is a no-op."""
    from rbacbridge.kube import desired_objects

    config = kube_context(kube_api).config
    old = next(o for o in desired_objects(config, "docker0") if o["kind"] == "DaemonSet")
    pod = old["spec"]["template"]["spec"]
    for key in ("priorityClassName", "tolerations"):
        del pod[key]
    container = pod["containers"][0]
    del container["livenessProbe"]
    container["image"] = "jtblin/kube2iam:0.11.2"
    container["env"] = [e for e in container["env"] if not e["name"].startswith("AWS_")]
    container["args"] = [a.replace("--default-role=nettech-pod-default", "--auto-discover-default-role")
                         for a in container["args"]] + ["--debug"]
    kube_api.store.put(old)

    ctx = kube_context(kube_api)
    plan = planner.plan_setup(ctx)
    step = steps_by_name(plan)[("DaemonSet", "kube-system/kube2iam")]
    assert step.action == UPDATE
    prefix = "spec.template.spec."
    assert sorted(step.details["fields"]) == sorted(prefix + f for f in (
        "priorityClassName", "tolerations", "containers[kube2iam].image", "containers[kube2iam].args",
        "containers[kube2iam].env[AWS_REGION]", "containers[kube2iam].env[AWS_DEFAULT_REGION]",
        "containers[kube2iam].livenessProbe"))
    assert planner.run(ctx, plan).ok
    live = kube_api.store.get("DaemonSet", "kube2iam", "kube-system")["spec"]["template"]["spec"]
    args = live["containers"][0]["args"]
    assert "--default-role=nettech-pod-default" in args
    assert "--auto-discover-default-role" not in args and "--debug" not in args
    assert live["tolerations"] == [{"operator": "Exists"}] and live["priorityClassName"] == "system-node-critical"
    again = planner.plan_setup(kube_context(kube_api))
    assert steps_by_name(again)[("DaemonSet", "kube-system/kube2iam")].action == UNCHANGED


def test_empty_tolerations_are_not_a_perpetual_difference(kube_api):
    _setup(kube_context(kube_api, kube2iam_tolerations=()))
    daemonset = kube_api.store.get("DaemonSet", "kube2iam", "kube-system")
    daemonset["spec"]["template"]["spec"].pop("tolerations", None)  # a real API server omits the empty list
    kube_api.store.put(daemonset)
    plan = planner.plan_setup(kube_context(kube_api, kube2iam_tolerations=()))
    assert steps_by_name(plan)[("DaemonSet", "kube-system/kube2iam")].action == UNCHANGED
    # and going back to the default shows the tolerations as the difference
    plan = planner.plan_setup(kube_context(kube_api))
    assert steps_by_name(plan)[("DaemonSet", "kube-system/kube2iam")].details["fields"] == ["spec.template.spec.tolerations"]
