"""Issue 22, items 8 and 9, against the real stand-ins (moto in server mode, the test API server):

- a managed role's whole permission set: an inline `s3:*` and another tenant's policy on tenant A's role are
  drift for `plan --exit-code`, setup takes them off (the other policy stays, attached to its own role), a
  second setup plans nothing; verify's drift check reports them; the node role keeps the extra policies the
  operator allows;
- a namespace outside every tenant whose allowed-roles match a managed role is a finding in plan (exit 1
  with --exit-code), verify and audit; setup does not touch it; one matching no managed role is no finding.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace

import boto3
import pytest
import yaml

from rbacbridge import planner
from rbacbridge import verify as v
from rbacbridge.aws import AwsGateway
from rbacbridge.config import load
from rbacbridge.planner import Context
from tests.fixtures_audit import Brownfield
from tests.fixtures_aws import ACCOUNT, moto_url, sandbox  # noqa: F401
from tests.fixtures_kube import kube_api  # noqa: F401

ARN = f"arn:aws:iam::{ACCOUNT}"
TENANTS = [
    {"name": "client-a", "namespaces": ["client-a"], "role": "client-a-s3", "read": ["nettech-helm-test"]},
    {"name": "client-b", "namespaces": ["client-b"], "role": "client-b-s3", "read": ["client-b-data"]},
    {"name": "client-c", "namespaces": ["client-c"], "role": "client-c-s3", "write": ["client-c-data"]},
]
S3_ALL = json.dumps({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]})
ALLOWED = "iam.amazonaws.com/allowed-roles"


def write_config(tmp_path, **extra) -> str:
    path = tmp_path / "rbacbridge.yaml"
    path.write_text(yaml.safe_dump({"account_id": ACCOUNT, "tenants": TENANTS, **extra}))
    return str(path)


def cli(sandbox, *argv: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rbacbridge", *argv], capture_output=True, text=True,
                          env=dict(sandbox.env(), COLUMNS="200"), timeout=timeout, stdin=subprocess.DEVNULL)


def changed(plan_json: str) -> list[dict]:
    """The changing steps, without the record write that only notes when setup changed IAM (verify's settle window)."""
    return [s for s in json.loads(plan_json)["steps"] if s["action"] != "unchanged"
            and not s.get("details", {}).get("stamp_only")]


def iam_changes(plan) -> list:
    return [s for s in plan.changes if not s.details.get("stamp_only")]


def role_state(iam, role: str) -> tuple[list[str], list[str]]:
    attached = sorted(p["PolicyArn"] for p in iam.list_attached_role_policies(RoleName=role)["AttachedPolicies"])
    return attached, iam.list_role_policies(RoleName=role)["PolicyNames"]


# --- item 8: a managed role's whole permission set ------------------------------------------------


def plant_extra_permissions(iam) -> None:
    iam.put_role_policy(RoleName="client-a-s3", PolicyName="debug-access", PolicyDocument=S3_ALL)
    iam.attach_role_policy(RoleName="client-a-s3", PolicyArn=f"{ARN}:policy/client-b-s3")


def test_extra_policies_on_a_tenant_role_are_drift_and_setup_takes_them_off(sandbox, tmp_path):
    config = write_config(tmp_path)
    common = ["--only", "aws", "-c", config, "--account-id", ACCOUNT]
    assert cli(sandbox, "setup", *common, "--yes").returncode == 0
    iam = sandbox.client("iam")
    clean = cli(sandbox, "plan", *common, "--exit-code")
    assert clean.returncode == 0, clean.stdout + clean.stderr
    plant_extra_permissions(iam)
    before = sandbox.snapshot()

    pending = cli(sandbox, "plan", *common, "--exit-code", "-o", "json")
    assert pending.returncode == 4, pending.stderr
    steps = changed(pending.stdout)
    assert [(s["action"], s["kind"], s["name"]) for s in steps] == [
        ("delete", "iam-attachment", "client-a-s3/client-b-s3"), ("delete", "iam-inline-policy", "client-a-s3/debug-access")]
    assert "tenant client-b's policy" in steps[0]["message"]
    assert json.loads(S3_ALL) == steps[1]["details"]["document"]  # what is removed can be put back by hand
    assert sandbox.snapshot() == before  # plan changed nothing
    stamps = [s for s in json.loads(pending.stdout)["steps"] if s.get("details", {}).get("stamp_only")]
    assert [(s["action"], s["kind"]) for s in stamps] == [("update", "record")]

    applied = cli(sandbox, "setup", *common, "--yes")
    assert applied.returncode == 0, applied.stderr
    assert role_state(iam, "client-a-s3") == ([f"{ARN}:policy/client-a-s3"], [])
    # the other tenant's policy is not touched: it exists, same version, still on its own role only
    assert iam.get_policy(PolicyArn=f"{ARN}:policy/client-b-s3")["Policy"]["DefaultVersionId"] == "v1"
    entities = iam.list_entities_for_policy(PolicyArn=f"{ARN}:policy/client-b-s3")
    assert [r["RoleName"] for r in entities["PolicyRoles"]] == ["client-b-s3"]
    assert role_state(iam, "client-b-s3") == ([f"{ARN}:policy/client-b-s3"], [])
    assert role_state(iam, "client-c-s3") == ([f"{ARN}:policy/client-c-s3"], [])

    again = cli(sandbox, "plan", *common, "--exit-code", "-o", "json")
    assert again.returncode == 0 and changed(again.stdout) == [], again.stdout  # a second setup plans nothing
    after = sandbox.snapshot()
    assert cli(sandbox, "setup", *common, "--yes").returncode == 0
    assert sandbox.snapshot() == after


def test_the_node_role_keeps_the_policies_the_operator_allows(sandbox):
    iam = sandbox.client("iam")
    # the operator's own policies (moto has no AWS managed ones): one for SSM, one far too broad
    ssm = iam.create_policy(PolicyName="ops-ssm-core", PolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": "ssm:UpdateInstanceInformation", "Resource": "*"}]}))["Policy"]["Arn"]
    admin = iam.create_policy(PolicyName="ops-admin", PolicyDocument=S3_ALL.replace("s3:*", "*"))["Policy"]["Arn"]
    config = sandbox.config(node_role_extra_policies=(ssm,))
    ctx = sandbox.context(config)
    assert planner.run(ctx, planner.plan_setup(ctx)).ok
    for arn in (ssm, admin):
        iam.attach_role_policy(RoleName="nettech-s3-read-only", PolicyArn=arn)
    plan = planner.plan_setup(sandbox.context(config))
    assert [(s.action, s.name) for s in iam_changes(plan)] == [("delete", "nettech-s3-read-only/ops-admin")]
    assert planner.run(ctx, plan).ok
    assert role_state(iam, "nettech-s3-read-only")[0] == sorted([f"{ARN}:policy/nettech-kube2iam-node",
                                                                 f"{ARN}:policy/nettech-s3-read-only", ssm])
    assert iam.get_policy(PolicyArn=admin)["Policy"]["Arn"] == admin  # detached, never deleted
    # without the allowance the same policy is drift too
    assert [s.name for s in iam_changes(planner.plan_setup(sandbox.context(sandbox.config())))] == [
        "nettech-s3-read-only/ops-ssm-core"]


def test_a_renamed_tenant_policy_is_detached_once(sandbox):
    """The removal of a tenant's old policy detaches it; the permission-set check does not plan it twice."""
    tenants = load_tenants()
    ctx = sandbox.context(sandbox.config(tenants=tenants))
    assert planner.run(ctx, planner.plan_setup(ctx)).ok
    renamed = (replace(tenants[0], policy="client-a-s3-v2"),) + tenants[1:]
    ctx = sandbox.context(sandbox.config(tenants=renamed))
    plan = planner.plan_setup(ctx)
    detaches = [s for s in plan.changes if s.kind == "iam-attachment" and s.name == "client-a-s3/client-a-s3"]
    assert len(detaches) == 1
    outcome = planner.run(ctx, plan)
    assert outcome.ok, outcome.failure and outcome.failure.error
    assert role_state(sandbox.client("iam"), "client-a-s3") == ([f"{ARN}:policy/client-a-s3-v2"], [])


def load_tenants():
    from rbacbridge.config import tenants

    return tenants(TENANTS)


# --- the cluster: tenants' namespaces, and namespaces outside them -----------------------------------


def add_namespace(store, name: str, allowed: str | None = None) -> None:
    meta = {"name": name, **({"annotations": {ALLOWED: allowed}} if allowed is not None else {})}
    store.put({"apiVersion": "v1", "kind": "Namespace", "metadata": meta})


def add_pod(store, namespace: str, name: str, role: str) -> None:
    store.put({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": namespace,
                                                                "annotations": {"iam.amazonaws.com/role": role}},
               "spec": {"containers": [{"name": "main", "image": "x"}]}, "status": {"phase": "Running"}})


def plant_outsiders(store) -> None:
    add_namespace(store, "outsider", '["*"]')
    add_pod(store, "outsider", "grabber", "client-c-s3")
    add_namespace(store, "exact", json.dumps([f"{ARN}:role/client-c-s3"]))
    add_namespace(store, "elsewhere", '["other-team-*", "arn:aws:iam::999999999999:role/*"]')  # no managed role


@pytest.fixture
def cluster(kube_api):
    for tenant in TENANTS:
        add_namespace(kube_api.store, tenant["namespaces"][0])
    kube_api.store.add_node("node-a", "10.0.0.1")  # no providerID: nothing to associate
    return kube_api


def kube_args(cluster) -> list[str]:
    return ["--kubeconfig", cluster.kubeconfig, "--host-interface", "docker0"]


def test_a_namespace_outside_the_tenants_allowing_a_managed_role_fails_the_plan_gate(sandbox, cluster, tmp_path):
    config = write_config(tmp_path)
    common = ["--only", "aws,kube", "-c", config, "--account-id", ACCOUNT, *kube_args(cluster)]
    applied = cli(sandbox, "setup", *common, "--yes")
    assert applied.returncode == 0, applied.stderr
    assert cli(sandbox, "plan", *common, "--exit-code").returncode == 0
    plant_outsiders(cluster.store)
    outsiders = {n: cluster.store.get("Namespace", n) for n in ("outsider", "exact", "elsewhere")}

    gate = cli(sandbox, "plan", *common, "--exit-code", "-o", "json")
    assert gate.returncode == 1, gate.stderr  # a finding: setup cannot fix it, a human must
    findings = changed(gate.stdout)
    assert [(s["action"], s["kind"], s["name"]) for s in findings] == [("finding", "Namespace", "exact"),
                                                                      ("finding", "Namespace", "outsider")]
    by_name = {s["name"]: s for s in findings}
    assert by_name["exact"]["details"]["roles"] == [f"{ARN}:role/client-c-s3"]
    assert set(by_name["outsider"]["details"]["roles"]) == {f"{ARN}:role/{r}" for r in
                                                           ("client-a-s3", "client-b-s3", "client-c-s3", "nettech-s3-read-only")}
    assert by_name["outsider"]["details"]["pods"] == ["pod outsider/grabber asks for client-c-s3"]
    assert any("outsider" in w for w in json.loads(gate.stdout)["warnings"])

    # setup reports it and leaves the namespaces as they are (not rbacbridge's)
    patches = len(cluster.store.mutating_requests())
    again = cli(sandbox, "setup", *common, "--yes")
    assert again.returncode == 0, again.stderr
    assert "outsider" in again.stderr  # the warning, on stderr
    assert len(cluster.store.mutating_requests()) == patches
    assert {n: cluster.store.get("Namespace", n) for n in outsiders} == outsiders

    # once the annotations are narrowed, the gate passes
    for name in ("outsider", "exact"):
        add_namespace(cluster.store, name, '["other-team-*"]')
    assert cli(sandbox, "plan", *common, "--exit-code").returncode == 0


def test_verify_reports_the_outsider_namespaces_and_the_extra_policies(sandbox, cluster, tmp_path):
    config = replace(load(write_config(tmp_path)), endpoint_url=sandbox.url, kubeconfig=cluster.kubeconfig,
                     host_interface="docker0", rollout_timeout=5.0)

    def context() -> Context:
        return Context(config=config, parts=("aws", "kube"),
                       gateways={"aws": AwsGateway(config, session=boto3.Session(
                           region_name="us-east-1", aws_access_key_id="testing", aws_secret_access_key="testing"))})

    ctx = context()
    assert planner.run(ctx, planner.plan_setup(ctx)).ok
    assert v.drift_findings(context())[0] == []
    plant_outsiders(cluster.store)
    plant_extra_permissions(sandbox.client("iam"))
    findings, _ = v.drift_findings(context())
    seen = {(f.kind, f.subject, f.layer) for f in findings}
    assert seen == {
        ("outsiderNamespace", "kube Namespace exact", "kube2iam"),
        ("outsiderNamespace", "kube Namespace outsider", "kube2iam"),
        ("drift", "aws iam-attachment client-a-s3/client-b-s3 (tenant client-a)", "permissions"),
        ("drift", "aws iam-inline-policy client-a-s3/debug-access (tenant client-a)", "permissions"),
    }
    result = v.VerifyResult("after", ACCOUNT, "us-east-1", config.node_role, [], [], findings=findings, drift_checked=True)
    assert result.exit_code == 1
    from rbacbridge import report

    document = json.loads(report.to_json(result))
    assert {f["kind"] for f in document["findings"]} == {"drift", "outsiderNamespace"}


# --- audit ---------------------------------------------------------------------------------------------


def audit(field: Brownfield, *args: str) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-m", "rbacbridge", "audit", "--kubeconfig", field.kube_api.kubeconfig, "--via", "ssh", *args]
    return subprocess.run(argv, capture_output=True, text=True, env=dict(field.sandbox.env(), COLUMNS="200"), timeout=120,
                          stdin=subprocess.DEVNULL)


def test_audit_finds_a_namespace_outside_the_tenants_allowing_their_role(kube_api, sandbox, tmp_path):
    field = Brownfield(kube_api, sandbox).build()
    config = tmp_path / "rbacbridge.yaml"
    config.write_text(yaml.safe_dump({"account_id": ACCOUNT, "iam": {"node_role": "k8s-node"},  # the Helm install's roles
                                      "kube2iam": {"default_role": "k8s-default"}, "tenants": [
        {"name": "tenant-a", "namespaces": ["tenant-a"], "role": {"existing": f"{ARN}:role/app-role"}}]}))
    add_namespace(field.store, "elsewhere", '["other-team-*"]')
    clean = audit(field, "-c", str(config), "-o", "json")
    assert clean.returncode == 0, clean.stdout + clean.stderr

    add_namespace(field.store, "outsider", '["*"]')
    add_pod(field.store, "outsider", "grabber", "app-role")
    add_namespace(field.store, "exact", json.dumps([f"{ARN}:role/app-role"]))
    run = audit(field, "-c", str(config), "-o", "json")
    assert run.returncode == 1, run.stdout + run.stderr
    report = json.loads(run.stdout)
    found = [f for f in report["findings"] if f["id"] == "namespace-allows-managed-role"]
    assert [f["objects"][0] for f in found] == ["Namespace exact", "Namespace outsider"]
    assert all(f["severity"] == "high" for f in found)
    assert "pod outsider/grabber asks for app-role" in found[1]["evidence"]
    assert "namespace-allows-managed-role" in report["checked"]
    assert {r.method for r in field.store.requests} == {"GET"}  # audit only reads
