"""The sandbox matrix: real calls against moto (server mode) with IAM enforcement on."""

import boto3
import pytest

from rbacbridge import verify as v
from rbacbridge.sandbox import Boto3Backend, sandbox_matrix
from tests.fixtures_verify import ACCOUNT, DUMMY, bucket_keys, moto_url, sandbox  # noqa: F401


def layers(result):
    return {(c.principal, c.check, c.bucket or c.target): c.blame.layer for c in result.mismatches}


def chains(result, principal):
    return {c.target: c for p in result.principals if p.principal.name == principal for c in p.cells if c.check == v.CHAIN}


def assert_buckets_empty(url, config):
    assert bucket_keys(url, config.shared_bucket) == []
    assert bucket_keys(url, config.tenant_bucket) == []


def test_default_config_all_match_and_identities(sandbox):
    url, config = sandbox
    result = sandbox_matrix(url, config, ACCOUNT, "after")
    assert result.ok, [(c.principal, c.check, c.bucket, c.blame) for c in result.mismatches]
    roles = {p.principal.name: p.observed.arn for p in result.principals}
    assert roles[v.ANNOTATED].startswith(f"arn:aws:sts::{ACCOUNT}:assumed-role/nettech-s3-read-write/")
    assert roles[v.HOST].startswith(f"arn:aws:sts::{ACCOUNT}:assumed-role/nettech-s3-read-only/")
    assert roles[v.VANILLA].startswith(f"arn:aws:sts::{ACCOUNT}:assumed-role/nettech-pod-default/")  # never the node role
    annotated = next(p for p in result.principals if p.principal.name == v.ANNOTATED)
    assert {(c.bucket, c.check): c.observed for c in annotated.cells if c.check != v.CHAIN} == {
        ("nettech-helm-test", "read"): True, ("nettech-helm-test", "write"): False,
        ("lanre.k8s.dev", "read"): True, ("lanre.k8s.dev", "write"): True}
    # 3 principals x (identity + 2 buckets x read/write), plus a chain cell per managed role for each pod
    assert len(result.all_cells) == 3 * 5 + 2 * 3
    for pod in (v.VANILLA, v.ANNOTATED):
        cells = chains(result, pod)
        assert set(cells) == {"nettech-s3-read-write", "nettech-pod-default", "nettech-s3-read-only"}
        assert all(c.observed is False and c.predicted is False and c.match for c in cells.values())
    assert_buckets_empty(url, config)


def test_stage_before_all_match(sandbox):
    url, config = sandbox
    assert sandbox_matrix(url, config, ACCOUNT, "before").ok


def test_trust_fault_is_blamed_on_trust_and_undone(sandbox):
    url, config = sandbox
    result = sandbox_matrix(url, config, ACCOUNT, "after", fault="trust")
    got = layers(result)
    assert got[(v.ANNOTATED, "identity", None)] == "trust"
    assert got[(v.ANNOTATED, "write", "lanre.k8s.dev")] == "trust"
    assert {p for p, _, _ in got} == {v.ANNOTATED}
    identity = next(p.identity for p in result.principals if p.principal.name == v.ANNOTATED)
    assert "does not trust" in identity.blame.message
    assert sandbox_matrix(url, config, ACCOUNT, "after").ok  # the planted trust was restored


def test_policy_fault_is_blamed_on_permissions(sandbox):
    url, config = sandbox
    result = sandbox_matrix(url, config, ACCOUNT, "after", fault="policy")
    assert layers(result) == {(v.ANNOTATED, "write", "nettech-helm-test"): "permissions",
                              (v.ANNOTATED, "write", "lanre.k8s.dev"): "permissions"}
    assert_buckets_empty(url, config)  # the write that wrongly succeeded was cleaned up
    assert sandbox_matrix(url, config, ACCOUNT, "after").ok


def test_iptables_fault_is_blamed_on_interception(sandbox):
    url, config = sandbox
    result = sandbox_matrix(url, config, ACCOUNT, "after", fault="iptables")
    got = layers(result)
    # holding the node role, the pod can also chain into the roles kube2iam hands out: observed, not predicted
    assert got == {(v.ANNOTATED, "identity", None): "interception", (v.ANNOTATED, "read", "lanre.k8s.dev"): "interception",
                   (v.ANNOTATED, "write", "lanre.k8s.dev"): "interception",
                   (v.ANNOTATED, "chain", "nettech-s3-read-write"): "escalation",
                   (v.ANNOTATED, "chain", "nettech-pod-default"): "escalation"}
    annotated = next(p for p in result.principals if p.principal.name == v.ANNOTATED)
    assert annotated.observed.role == config.node_role
    cell = chains(result, v.ANNOTATED)["nettech-s3-read-write"]
    assert cell.observed is True and cell.predicted is False
    assert "nginx-annotated → nettech-s3-read-only → sts:AssumeRole → nettech-s3-read-write" in cell.blame.message


def test_node_role_as_default_the_escalation_is_observed_and_fails(sandbox):
    """kube2iam.default_role: node hands unannotated pods the node role, which may assume the pod role."""
    from dataclasses import replace

    from rbacbridge import policy_eval as pe
    from rbacbridge.sandbox import live_documents

    url, config = sandbox
    config = replace(config, default_role="node")
    from tests.fixtures_verify import create_managed_resources

    create_managed_resources(url, config)  # converge IAM to the node-role default (self-trust, no default role use)
    result = sandbox_matrix(url, config, ACCOUNT, "after")
    assert not result.ok and result.exit_code == 1
    cells = chains(result, v.VANILLA)
    granted = cells["nettech-s3-read-write"]
    # observed for real: moto granted the node role's session sts:AssumeRole on the pod role (identity side) ...
    assert granted.observed is True and granted.predicted is True and not granted.match
    assert granted.blame.layer == "escalation"
    assert "nginx-vanilla → nettech-s3-read-only → sts:AssumeRole → nettech-s3-read-write" in granted.blame.message
    # ... and the trust side, which moto versions differ on, holds by the evaluator over the live trust policy
    boto = boto3.client("iam", endpoint_url=url, region_name="us-east-1", **DUMMY)
    live = live_documents(boto, [config.pod_role])
    session = f"arn:aws:sts::{ACCOUNT}:assumed-role/{config.node_role}/rbacbridge-verify-chain"
    assert pe.trust_allows(live.trust[config.pod_role], session)
    assert {c.target for c in cells.values() if not c.match} == {"nettech-s3-read-write", "nettech-s3-read-only"}
    assert all(c.match for c in chains(result, v.ANNOTATED).values())  # the pod role holds no sts:*
    assert {c.blame.layer for c in result.mismatches} == {"escalation"}


def test_namespace_fault_is_blamed_on_kube2iam(sandbox):
    url, config = sandbox
    result = sandbox_matrix(url, config, ACCOUNT, "after", fault="namespace")
    identity = next(p.identity for p in result.principals if p.principal.name == v.ANNOTATED)
    assert identity.blame.layer == "kube2iam" and "allowed-roles" in identity.blame.message


class FailAfterPut:
    """Wraps a real backend: the put really happens, then the transport reports a timeout."""

    def __init__(self, inner):
        self.inner = inner

    def put_object(self, bucket, key):
        self.inner.put_object(bucket, key)
        raise TimeoutError("connection dropped after the put")

    def __getattr__(self, name):
        return getattr(self.inner, name)


def _admin_backend(url):
    iam = boto3.client("iam", endpoint_url=url, region_name="us-east-1", **DUMMY)
    iam.create_user(UserName="probe-admin")
    iam.put_user_policy(UserName="probe-admin", PolicyName="all", PolicyDocument='{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"*","Resource":"*"}]}')
    key = iam.create_access_key(UserName="probe-admin")["AccessKey"]
    return Boto3Backend(url, "us-east-1", {"aws_access_key_id": key["AccessKeyId"], "aws_secret_access_key": key["SecretAccessKey"]})


def test_probe_object_removed_when_a_call_in_the_middle_fails(sandbox):
    url, config = sandbox
    backend = FailAfterPut(_admin_backend(url))
    with pytest.raises(TimeoutError):
        v.probe_write(backend, config.tenant_bucket, v.probe_key("host"))
    assert bucket_keys(url, config.tenant_bucket) == []
    # through observe(): the failure becomes an observation, and the bucket is still empty
    observed = v.observe([(v.Principal("host", "host"), backend)], [config.tenant_bucket])
    cell = observed[0].cells[(config.tenant_bucket, "write")]
    assert cell.allowed is None and "TimeoutError" in cell.result.detail
    assert bucket_keys(url, config.tenant_bucket) == []


def test_probe_reports_object_left_when_delete_is_denied(sandbox):
    url, config = sandbox
    from rbacbridge.sandbox import set_enforcement

    iam = boto3.client("iam", endpoint_url=url, region_name="us-east-1", **DUMMY)
    iam.create_user(UserName="put-only")
    iam.put_user_policy(UserName="put-only", PolicyName="p", PolicyDocument='{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:PutObject","Resource":"*"}]}')
    key = iam.create_access_key(UserName="put-only")["AccessKey"]
    backend = Boto3Backend(url, "us-east-1", {"aws_access_key_id": key["AccessKeyId"], "aws_secret_access_key": key["SecretAccessKey"]})
    set_enforcement(url, True)
    try:
        obs = v.probe_write(backend, config.tenant_bucket, "rbacbridge-verify-probe/put-only")
    finally:
        set_enforcement(url, False)
    assert obs.left_behind and obs.allowed is None and "left behind" in obs.result.detail
    assert bucket_keys(url, config.tenant_bucket) == ["rbacbridge-verify-probe/put-only"]
