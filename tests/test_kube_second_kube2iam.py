"""A second kube2iam (issue 10): setup stops on a kube2iam DaemonSet rbacbridge does not manage."""

from __future__ import annotations

import pytest

from rbacbridge import kube, planner
from rbacbridge.plan import UPDATE
from tests.fixtures_kube import kube_api  # noqa: F401
from tests.kube_helpers import kube_context, steps_by_name


def helm_kube2iam(namespace: str = "kube2iam", name: str = "kube2iam", args: list[str] | None = None,
                  image: str = "jtblin/kube2iam:0.11.1") -> dict:
    labels = {"app.kubernetes.io/name": "kube2iam", "app.kubernetes.io/instance": "kube2iam"}
    return {
        "apiVersion": "apps/v1", "kind": "DaemonSet",
        "metadata": {"name": name, "namespace": namespace,
                     "labels": {**labels, "app.kubernetes.io/managed-by": "Helm"},
                     "annotations": {"meta.helm.sh/release-name": "kube2iam"}},
        "spec": {"selector": {"matchLabels": {"app.kubernetes.io/name": "kube2iam"}},
                 "template": {"metadata": {"labels": labels},
                              "spec": {"containers": [{"name": "kube2iam", "image": image,
                                                       "args": args if args is not None else ["--iptables=true"]}]}}},
    }


def kiam_agent(namespace: str = "kiam", port: int = 8183) -> dict:
    labels = {"app": "kiam", "component": "agent"}
    return {"apiVersion": "apps/v1", "kind": "DaemonSet",
            "metadata": {"name": "kiam-agent", "namespace": namespace, "labels": {**labels, "app.kubernetes.io/managed-by": "Helm"}},
            "spec": {"selector": {"matchLabels": labels},
                     "template": {"metadata": {"labels": labels},
                                  "spec": {"hostNetwork": True, "containers": [{
                                      "name": "agent", "image": "quay.io/uswitch/kiam:v4.2", "command": ["/kiam", "agent"],
                                      "args": ["--iptables", "--host-interface=cali+", f"--port={port}", "--json-log"]}]}}}}


@pytest.mark.parametrize("image,args,port", [
    ("jtblin/kube2iam:0.11.1", ["--iptables=true"], 8181),  # by image, default port
    ("registry.example:5000/mirror/kube2iam@sha256:abc", ["--app-port", "8282"], 8282),
    ("example.com/metadata-proxy:1", ["--base-role-arn=arn:aws:iam::1:role/", "--app-port=9090"], 9090),  # by flags
    ("example.com/metadata-proxy:1", ["--app-port=$(PORT)"], None),  # flag present, port unreadable
])
def test_kube2iam_daemonsets_are_recognised_by_image_or_flags(image, args, port):
    found = kube.kube2iam_daemonset(helm_kube2iam(image=image, args=args))
    assert found is not None and found.port == port and found.installer == "Helm release kube2iam" and not found.managed


def test_other_daemonsets_are_not_kube2iam():
    obj = helm_kube2iam(image="calico/node:v3.28.0", args=["--felix"])
    assert kube.kube2iam_daemonset(obj) is None
    tagged = helm_kube2iam(image="example.com/kube2iam-exporter:1")  # name contains kube2iam: counted (documented)
    assert kube.kube2iam_daemonset(tagged) is not None


def test_setup_stops_before_changing_anything_when_another_kube2iam_runs(kube_api):
    kube_api.store.put({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "kube2iam"}})
    kube_api.store.put(helm_kube2iam())
    for adopt in (False, True):
        ctx = kube_context(kube_api)
        ctx.adopt = adopt
        plan = planner.plan_setup(ctx)
        [conflict] = plan.conflicts
        assert (conflict.kind, conflict.name) == ("DaemonSet", "kube2iam/kube2iam")
        assert "another kube2iam" in conflict.message and "Helm release kube2iam" in conflict.message
        assert "kube2iam.namespace to kube2iam" in conflict.reason
    assert kube_api.store.mutating_requests() == []


def test_cli_setup_exits_with_the_conflict_and_changes_nothing(kube_api, tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    from tests.kube_helpers import ACCOUNT

    kube_api.store.put(helm_kube2iam(namespace="kube-system", name="iam-kube2iam"))
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]), COLUMNS="200")
    result = subprocess.run([sys.executable, "-m", "rbacbridge", "setup", "--only", "kube", "--yes", "--account-id", ACCOUNT,
                             "--kubeconfig", kube_api.kubeconfig, "--adopt"], capture_output=True, text=True, env=env,
                            timeout=60, stdin=subprocess.DEVNULL)
    assert result.returncode == 1 and "conflict(s), nothing changed: DaemonSet kube-system/iam-kube2iam" in result.stderr
    assert kube_api.store.mutating_requests() == []


def test_adopt_takes_over_a_kube2iam_at_rbacbridges_name_and_namespace(kube_api):
    foreign = helm_kube2iam(namespace="kube-system")
    kube_api.store.put(foreign)
    ctx = kube_context(kube_api)
    plan = planner.plan_setup(ctx)
    [conflict] = plan.conflicts
    assert conflict.name == "kube-system/kube2iam" and "--adopt" in conflict.reason
    assert kube_api.store.mutating_requests() == []

    ctx = kube_context(kube_api)
    ctx.adopt = True
    plan = planner.plan_setup(ctx)
    assert not plan.conflicts
    assert steps_by_name(plan)[("DaemonSet", "kube-system/kube2iam")].action == UPDATE
    outcome = planner.run(ctx, plan)
    assert outcome.ok, outcome.failure and outcome.failure.error
    live = kube_api.store.get("DaemonSet", "kube2iam", "kube-system")
    assert live["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "rbacbridge"
    # from now on it is rbacbridge's own: no conflict on the next plan
    assert not planner.plan_setup(kube_context(kube_api)).conflicts


def test_rbacbridges_own_daemonset_is_not_a_second_kube2iam(kube_api):
    ctx = kube_context(kube_api)
    assert planner.run(ctx, planner.plan_setup(ctx)).ok
    assert [d.managed for d in kube.kube2iam_daemonsets(kube_context(kube_api))] == [True]
    assert not planner.plan_setup(kube_context(kube_api)).conflicts


def test_a_kiam_agent_is_an_interceptor_too_with_its_port(kube_api):
    """Issue 22: kiam's agent (`kiam agent`, --port, default 3100) is recognised, and setup stops on it."""
    found = kube.kube2iam_daemonset(kiam_agent(port=8183))
    assert (found.tool, found.port, found.managed) == ("kiam", 8183, False)
    default = kiam_agent()
    default["spec"]["template"]["spec"]["containers"][0]["args"] = ["--iptables"]
    assert kube.kube2iam_daemonset(default).port == 3100
    server = kiam_agent()
    server["spec"]["template"]["spec"]["containers"][0]["command"] = ["/kiam", "server"]
    assert kube.kube2iam_daemonset(server) is None  # kiam's server does not intercept on the nodes
    kube_api.store.put(kiam_agent())
    [conflict] = planner.plan_setup(kube_context(kube_api)).conflicts
    assert conflict.name == "kiam/kiam-agent" and "a kiam agent runs" in conflict.message
    assert kube_api.store.mutating_requests() == []


def test_rbacbridges_label_elsewhere_does_not_make_a_daemonset_rbacbridges(kube_api):
    """Only kube2iam.namespace/kube2iam with rbacbridge's label is rbacbridge's own: a label anyone can write
    on a DaemonSet in their own namespace is a lookalike, a second kube2iam."""
    tenant = helm_kube2iam(namespace="aaa-tenant", name="kube2iam")
    tenant["metadata"]["labels"]["app.kubernetes.io/managed-by"] = "rbacbridge"
    assert not kube.kube2iam_daemonset(tenant).managed
    kube_api.store.put(tenant)
    [conflict] = planner.plan_setup(kube_context(kube_api)).conflicts
    assert conflict.name == "aaa-tenant/kube2iam"
    assert kube.own_kube2iam(kube_context(kube_api)) is None
