"""The live verify's parts that need no node: the drift check through the one planner (moto + the test API
server), hostNetwork findings, kube2iam missing on a node, annotation drift, and "could not verify" = exit 3."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import boto3
import pytest

from rbacbridge import planner
from rbacbridge import verify as v
from rbacbridge.aws import AwsGateway
from rbacbridge.config import Config
from rbacbridge.kube import KubeGateway
from rbacbridge.plan import execute
from rbacbridge.planner import Context
from tests.fixtures_kube import kube_api, write_kubeconfig  # noqa: F401
from tests.fixtures_verify import ACCOUNT, DUMMY, fresh_state, moto_url  # noqa: F401

ROOT = Path(__file__).resolve().parent.parent


def _context(url: str, kube_api, config: Config | None = None) -> Context:
    config = replace(config or Config(), account_id=ACCOUNT, endpoint_url=url, kubeconfig=kube_api.kubeconfig, rollout_timeout=5.0)
    session = boto3.Session(region_name=config.region, **DUMMY)
    return Context(config=config, parts=("aws", "kube"), gateways={"aws": AwsGateway(config, session=session)})


@pytest.fixture
def installed(moto_url, kube_api):
    """What `setup --only aws,kube` leaves: IAM in moto (fresh_state), the Kubernetes objects in the API server."""
    fresh_state(moto_url)
    kube_api.store.add_node("node-a", "10.0.0.1")  # no providerID: nothing to associate
    ctx = _context(moto_url, kube_api)
    execution = execute(planner.plan_setup(ctx, parts=("kube",)).steps)
    assert execution.ok, execution.error
    return moto_url, kube_api


def test_no_drift_right_after_setup_then_each_difference_in_the_plans_words(installed):
    url, kube_api = installed
    findings, steps = v.drift_findings(_context(url, kube_api))
    assert findings == [] and steps >= 10
    # trust drift (what cached kube2iam credentials would hide), a namespace annotation and kube2iam's args
    iam = boto3.client("iam", endpoint_url=url, region_name="us-east-1", **DUMMY)
    iam.update_assume_role_policy(RoleName="nettech-s3-read-write", PolicyDocument=json.dumps({
        "Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole",
                                                "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT}:role/someone-else"}}]}))
    namespace = kube_api.store.get("Namespace", "default")
    namespace["metadata"]["annotations"]["iam.amazonaws.com/allowed-roles"] = '["*"]'
    kube_api.store.put(namespace)
    daemonset = kube_api.store.get("DaemonSet", "kube2iam", "kube-system")
    daemonset["spec"]["template"]["spec"]["containers"][0]["args"].append("--debug")
    kube_api.store.put(daemonset)
    ctx = _context(url, kube_api)
    findings, _ = v.drift_findings(ctx)
    plan = planner.plan_setup(_context(url, kube_api), parts=("aws", "kube"))
    changed = [s for s in plan.steps if s.action != "unchanged" and not s.details.get("stamp_only")]
    assert [(f.message, f.reason) for f in findings] == [(f"{s.action}: {s.message}", s.reason) for s in changed]
    # the record write that would note when setup changed IAM (verify's settle window) is bookkeeping, not drift
    assert [s.kind for s in plan.steps if s.details.get("stamp_only")] == ["record"]
    by_subject = {f.subject: f for f in findings}
    trust = by_subject["aws iam-role nettech-s3-read-write"]
    assert trust.layer == "trust" and "someone-else" in trust.reason
    assert by_subject["kube Namespace default"].layer == "kube2iam"
    assert by_subject["kube DaemonSet kube-system/kube2iam"].layer == "kube2iam"


def _pod(store, namespace, name, node, host_network=False, labels=None):
    store.put({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": namespace, "labels": labels or {}},
               "spec": {"nodeName": node, "hostNetwork": host_network, "containers": [{"name": "main", "image": "x"}]},
               "status": {"phase": "Running", "podIP": "10.0.0.9"}})


def test_host_network_pods_in_restricted_namespaces_are_findings(kube_api):
    store = kube_api.store
    store.put({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "tenant-b", "annotations": {
        "iam.amazonaws.com/allowed-roles": '["tenant-b-*"]'}}})
    _pod(store, "tenant-b", "debug-shell", "node-b", host_network=True)
    _pod(store, "tenant-b", "web", "node-b")  # goes through kube2iam
    store.put({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "monitoring"}})
    _pod(store, "monitoring", "node-exporter", "node-a", host_network=True)  # the namespace restricts nothing
    store.put({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "kube-system", "annotations": {
        "iam.amazonaws.com/allowed-roles": "[]"}}})
    _pod(store, "kube-system", "kube2iam-abc", "node-a", host_network=True,
         labels={"app.kubernetes.io/name": "kube2iam", "app.kubernetes.io/managed-by": "rbacbridge"})  # kube2iam itself
    found = v.host_network_findings(KubeGateway(kube_api.kubeconfig), Config())
    assert [(f.kind, f.subject, f.layer, f.node) for f in found] == [("hostNetwork", "pod tenant-b/debug-shell", "interception", "node-b")]
    assert "node role nettech-s3-read-only" in found[0].reason and "tenant-b-*" in found[0].reason


def test_a_node_without_kube2iam_is_named_with_its_taints(kube_api):
    store = kube_api.store
    node = store.add_node("node-b", "10.0.0.2")
    node["spec"]["taints"] = [{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}]
    store.put(node)
    store.add_node("node-a", "10.0.0.1")
    _pod(store, "kube-system", "kube2iam-a", "node-a", host_network=True,
         labels={"app.kubernetes.io/name": "kube2iam", "app.kubernetes.io/managed-by": "rbacbridge"})
    missing = v.kube2iam_missing(KubeGateway(kube_api.kubeconfig), Config(), {"node-a", "node-b"})
    assert list(missing) == ["node-b"]
    assert "dedicated=gpu:NoSchedule" in missing["node-b"] and "nettech-s3-read-only" in missing["node-b"]
    # blamed on interception, naming the node, when a pod there got the node role
    config = Config()
    pod = v.Principal("nginx-vanilla@node-b", "pod", namespace="default", pod="nginx-vanilla-x", node="node-b")
    (exp,) = v.expected_matrix(config, ACCOUNT, "after", [pod])
    arn = f"arn:aws:sts::{ACCOUNT}:assumed-role/nettech-s3-read-only/i-0"
    observed = v.Observed(pod, v.CallResult(True, value=arn), arn, "nettech-s3-read-only",
                          {k: v.Observation(True, v.CallResult(True)) for k in exp.access})
    result = v.compare(config, ACCOUNT, "after", [exp], [observed], v.Diagnostics(kube2iam_missing=missing))
    identity = result.principals[0].identity
    assert identity.blame.layer == "interception" and "no kube2iam pod runs on node node-b" in identity.blame.message


def _observed(principal, role, access):
    arn = f"arn:aws:sts::{ACCOUNT}:assumed-role/{role}/s"
    return v.Observed(principal, v.CallResult(True, value=arn), arn, role,
                      {k: v.Observation(want, v.CallResult(True) if want else v.CallResult(False, v.ACCESS_DENIED))
                       for k, want in access.items()},
                      {t: v.Observation(False, v.CallResult(False, v.ASSUME_DENIED)) for t in v.chain_targets(Config())})


@pytest.mark.parametrize("live", ["nettech-pod-default", None, "arn:aws:iam::123456789012:role/other"])
def test_a_live_annotation_that_differs_from_the_configuration_is_a_kube2iam_mismatch(live):
    config = Config()
    pod = v.Principal(v.ANNOTATED, "pod", namespace="default", pod="nginx-annotated-1", role_annotation=config.pod_role,
                      annotation_seen=True, live_annotation=live)
    (exp,) = v.expected_matrix(config, ACCOUNT, "after", [pod])
    assert exp.role == config.pod_role  # from the configuration, not from the live annotation
    # even when kube2iam still hands out the configured role (a pod not rolled out yet), the cell fails
    result = v.compare(config, ACCOUNT, "after", [exp], [_observed(pod, config.pod_role, exp.access)])
    (cell,) = result.mismatches
    assert cell.check == "identity" and cell.blame.layer == "kube2iam"
    assert f"iam.amazonaws.com/role: {live or '(none)'}" in cell.blame.message and config.pod_role in cell.blame.message
    assert result.exit_code == 1
    # the same role written as an ARN is no difference
    same = replace(pod, live_annotation=f"arn:aws:iam::{ACCOUNT}:role/{config.pod_role}")
    (exp,) = v.expected_matrix(config, ACCOUNT, "after", [same])
    assert v.compare(config, ACCOUNT, "after", [exp], [_observed(same, config.pod_role, exp.access)]).ok


def test_only_network_errors_mean_no_verdict():
    config = Config()
    host = v.Principal(v.HOST, "host")
    (exp,) = v.expected_matrix(config, ACCOUNT, "after", [host])
    down = v.CallResult(False, v.NETWORK, "Could not connect to the endpoint URL")
    observed = v.Observed(host, down, None, None, {k: v.Observation(None, down) for k in exp.access})
    result = v.compare(config, ACCOUNT, "after", [exp], [observed])
    assert not result.ok and result.exit_code == 3
    result.findings.append(v.Finding("hostNetwork", "pod a/b", "m", "r", v.INTERCEPTION))
    assert result.exit_code == 1


def _dead_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


def _verify(*args, tmp_path, **extra):
    env = {k: val for k, val in os.environ.items() if not k.startswith(("AWS_", "KUBECONFIG", "GITHUB_"))}
    env.update(PYTHONPATH=str(ROOT), HOME=str(tmp_path), **extra)
    return subprocess.run([sys.executable, "-m", "rbacbridge", "verify", "--account-id", ACCOUNT, *args], capture_output=True,
                          text=True, env=env, timeout=120, stdin=subprocess.DEVNULL)


def test_cluster_unreachable_exits_3_in_one_line(tmp_path):
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", {"gone": _dead_url()}, current="gone")
    done = _verify("--kubeconfig", str(kubeconfig), "--no-drift-check", tmp_path=tmp_path)
    assert done.returncode == 3, done.stderr
    assert done.stderr.startswith("error: could not verify (finding the principals): cannot reach the Kubernetes API server")
    assert done.stderr.count("\n") == 1 and done.stdout == ""


def test_no_pods_exits_3(kube_api, tmp_path):
    done = _verify("--kubeconfig", kube_api.kubeconfig, "--no-drift-check", tmp_path=tmp_path)
    assert done.returncode == 3, done.stderr
    assert "no running pod with label" in done.stderr and done.stderr.count("\n") == 1


def test_could_not_verify_is_annotated_in_github_actions(tmp_path):
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", {"gone": _dead_url()}, current="gone")
    done = _verify("--kubeconfig", str(kubeconfig), "--no-drift-check", tmp_path=tmp_path, GITHUB_ACTIONS="true")
    assert done.returncode == 3
    first, second = done.stderr.splitlines()
    assert first.startswith("::error title=rbacbridge verify::could not verify (finding the principals)")
    assert second.startswith("error: could not verify")


def test_principals_expect_the_configured_role_and_unmanaged_pods_are_reported(kube_api, monkeypatch, tmp_path):
    """live_targets: the expectation comes from the configuration; the live annotation is only observed; a pod
    found by the article's `app=` label without rbacbridge's label is reported, not trusted."""
    store = kube_api.store
    managed = {"app.kubernetes.io/name": "nginx-annotated", "app.kubernetes.io/managed-by": "rbacbridge"}
    for name, labels, annotations in (("nginx-vanilla-1", {"app": "nginx-vanilla"}, {"iam.amazonaws.com/role": "admin"}),
                                      ("nginx-annotated-1", managed, {"iam.amazonaws.com/role": "nettech-pod-default"})):
        store.put({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "default", "labels": labels,
                                                                     "annotations": annotations},
                   "spec": {"nodeName": "node-a", "containers": [{"name": "main", "image": "x"}]},
                   "status": {"phase": "Running", "podIP": "10.0.0.9"}})
    monkeypatch.setattr(v.live, "ensure_cli_all", lambda checks: None)  # no AWS CLI to look for: nothing is probed here
    (tmp_path / "known_hosts").write_text("")  # the host node's SSH settings are checked up front (exit 2 if unusable)
    config = Config(account_id=ACCOUNT, kubeconfig=kube_api.kubeconfig, known_hosts=str(tmp_path / "known_hosts"),
                    ssh_config="none")
    ctx = Context(config=config)
    targets = v.live_targets(ctx, v.LiveOptions(node="127.0.0.1:2222"))
    pods = {p.name: p for p, _ in targets if p.kind == "pod"}
    vanilla, annotated = pods["nginx-vanilla"], pods["nginx-annotated"]
    assert (vanilla.role_annotation, vanilla.live_annotation, vanilla.managed) == (None, "admin", False)
    assert (annotated.role_annotation, annotated.live_annotation, annotated.managed) == (config.pod_role, "nettech-pod-default", True)
    assert [n for n in ctx.facts["notes"] if "not rbacbridge's" in n] == [
        "pod default/nginx-vanilla-1 is not rbacbridge's (no app.kubernetes.io/managed-by=rbacbridge label): reported, "
        "not trusted; its expected role still comes from the configuration"]
    expected = {e.principal.name: e.role for e in v.expected_matrix(config, ACCOUNT, "after", [p for p, _ in targets])}
    assert expected == {"host": "nettech-s3-read-only", "nginx-vanilla": "nettech-pod-default", "nginx-annotated": config.pod_role}
