"""verify per tenant, in the sandbox: moto (server mode, IAM enforcement on) computes every cell from the
live policies that the real planner created from the tenants of a config file."""

from dataclasses import replace

import boto3
import pytest
import yaml

from rbacbridge import config as config_module
from rbacbridge import planner
from rbacbridge import verify as v
from rbacbridge.aws import AwsGateway
from rbacbridge.errors import UsageError
from rbacbridge.sandbox import sandbox_matrix
from tests.fixtures_verify import ACCOUNT, DUMMY, _post, all_buckets, bucket_keys, create_managed_resources, moto_url  # noqa: F401

ABC = [
    {"name": "client-a", "namespaces": ["client-a"], "role": "client-a-s3", "workloads": ["nginx-client-a"]},
    {"name": "client-b", "namespaces": ["client-b", "client-b-jobs"], "role": "client-b-s3", "read": ["nettech-helm-test"],
     "write": ["tenants-shared/client-b/*"], "workloads": ["nginx-client-b"]},
    {"name": "client-c", "namespaces": ["client-c"], "role": "client-c-s3", "write": ["client-c-data"],
     "workloads": ["nginx-client-c"]},
]


def load(tmp_path, tenants, **extra):
    path = tmp_path / "rbacbridge.yaml"
    path.write_text(yaml.safe_dump({"account_id": ACCOUNT, "tenants": tenants, **extra}))
    return config_module.load(str(path))


@pytest.fixture
def fresh(moto_url):
    _post(moto_url, "/moto-api/reset-auth", b"inf")
    _post(moto_url, "/moto-api/reset")
    yield moto_url
    _post(moto_url, "/moto-api/reset-auth", b"inf")


def cells_of(result):
    return {(c.principal, c.check, c.bucket or c.target): c for c in result.all_cells}


def owned_left(url):
    iam = boto3.client("iam", endpoint_url=url, region_name="us-east-1", **DUMMY)
    roles = [r["RoleName"] for r in iam.list_roles()["Roles"]
             if {"Key": "managed-by", "Value": "rbacbridge"} in iam.list_role_tags(RoleName=r["RoleName"])["Tags"]]
    return roles + [p["PolicyName"] for p in iam.list_policies(Scope="Local")["Policies"]]


def test_three_tenants_own_cells_allowed_cross_tenant_denied(fresh, tmp_path):
    url = fresh
    config = load(tmp_path, ABC)
    create_managed_resources(url, config)
    result = sandbox_matrix(url, config, ACCOUNT, "after")
    assert result.ok, [(c.principal, c.check, c.bucket or c.target, c.blame) for c in result.mismatches]
    got = cells_of(result)
    # principals from the tenants: host, the default-role pod, one pod per tenant workload
    assert [p.principal.name for p in result.principals] == ["host", "nginx-vanilla", "nginx-client-a", "nginx-client-b",
                                                            "nginx-client-c"]
    assert result.buckets == ["nettech-helm-test", "tenants-shared/client-b/*", "client-c-data"]
    # observed by moto from the live policies
    assert got[("nginx-client-c", "write", "client-c-data")].observed is True
    assert got[("nginx-client-b", "write", "tenants-shared/client-b/*")].observed is True
    assert got[("nginx-client-b", "read", "nettech-helm-test")].observed is True
    for pod in ("nginx-client-a", "nginx-client-b", "nginx-vanilla", "host"):
        assert got[(pod, "read", "client-c-data")].observed is False
        assert got[(pod, "write", "client-c-data")].observed is False
    assert got[("nginx-client-c", "write", "tenants-shared/client-b/*")].observed is False
    assert got[("nginx-client-a", "read", "nettech-helm-test")].observed is False  # no grants at all
    # identities: each tenant's pods got the tenant's role
    arns = {p.principal.name: p.observed.arn for p in result.principals}
    for name in ("client-a", "client-b", "client-c"):
        assert f":assumed-role/{name}-s3/" in arns[f"nginx-{name}"]
    # cross-tenant cells: every other tenant's grants denied, every other tenant's role not obtainable
    cross = [c for c in result.all_cells if c.cross_tenant and c.tenant is not None]
    assert {c.check for c in cross} == {"read", "write", "chain", "annotation"}
    assert all(c.observed is False and c.match for c in cross if c.check != "read" or c.bucket != "tenants-shared/client-b/*")
    annotation = [c for c in result.all_cells if c.check == "annotation"]
    assert sorted((c.principal, c.target) for c in annotation) == [
        ("nginx-client-a", "client-b-s3"), ("nginx-client-a", "client-c-s3"), ("nginx-client-b", "client-a-s3"),
        ("nginx-client-b", "client-c-s3"), ("nginx-client-c", "client-a-s3"), ("nginx-client-c", "client-b-s3")]
    assert all(c.observed is False and c.predicted is False and "refused" in c.detail for c in annotation)
    chains = [c for c in result.all_cells if c.check == "chain"]
    assert {c.target for c in chains} == {"client-a-s3", "client-b-s3", "client-c-s3", "nettech-pod-default", "nettech-s3-read-only"}
    assert all(c.observed is False for c in chains)
    for bucket in all_buckets(config):
        assert bucket_keys(url, bucket) == []  # every probe object deleted
    # a bucket-level read of a prefix grant: ListBucket is on the bucket, so tenants without it are denied
    assert got[("nginx-client-a", "read", "tenants-shared/client-b/*")].observed is False


def test_cells_follow_the_live_policies_not_a_table(fresh, tmp_path):
    """Give client-a's role client-c's policy behind rbacbridge's back: moto now lets client-a into client-c's
    bucket, and verify fails on exactly those cross-tenant cells, blamed on permissions."""
    url = fresh
    config = load(tmp_path, ABC)
    create_managed_resources(url, config)
    iam = boto3.client("iam", endpoint_url=url, region_name="us-east-1", **DUMMY)
    iam.attach_role_policy(RoleName="client-a-s3", PolicyArn=f"arn:aws:iam::{ACCOUNT}:policy/client-c-s3")
    result = sandbox_matrix(url, config, ACCOUNT, "after")
    assert {(c.principal, c.check, c.bucket) for c in result.mismatches} == {
        ("nginx-client-a", "read", "client-c-data"), ("nginx-client-a", "write", "client-c-data")}
    assert {c.blame.layer for c in result.mismatches} == {"permissions"}
    assert all(c.cross_tenant for c in result.mismatches)


def test_namespace_restrictions_off_a_pod_obtains_another_tenants_role(fresh, tmp_path):
    """Without namespace restrictions kube2iam hands any pod any role it can assume: the annotation cells
    fail (the configuration itself grants it: predicted), blamed on kube2iam."""
    url = fresh
    config = load(tmp_path, ABC, kube2iam={"namespace_restrictions": False})
    create_managed_resources(url, config)
    result = sandbox_matrix(url, config, ACCOUNT, "after")
    bad = [c for c in result.mismatches if c.check == "annotation"]
    assert len(bad) == 6 and all(c.observed is True and c.predicted is True for c in bad)
    assert {c.blame.layer for c in bad} == {"kube2iam"}
    assert not [c for c in result.mismatches if c.check != "annotation"]


def test_tenant_limits_the_run_and_unknown_tenant_is_usage_error(fresh, tmp_path):
    url = fresh
    config = load(tmp_path, ABC)
    create_managed_resources(url, config)
    result = sandbox_matrix(url, config, ACCOUNT, "after", tenant="client-b")
    assert [p.principal.name for p in result.principals] == ["nginx-client-b"]
    assert [t.name for t in result.tenants] == ["client-b"]
    assert result.ok
    with pytest.raises(UsageError, match="unknown tenant"):
        sandbox_matrix(url, config, ACCOUNT, "after", tenant="client-z")


def test_ten_tenants_every_cell_by_moto_then_teardown_leaves_nothing(fresh, tmp_path):
    url = fresh
    tenants = [{"name": f"t{i}", "namespaces": [f"ns-{i}"], "role": f"t{i}-role", "write": [f"t{i}-data"],
                "read": ["nettech-helm-test"] if i % 2 else [], "workloads": [f"app-{i}"]} for i in range(10)]
    config = load(tmp_path, tenants)
    create_managed_resources(url, config)
    result = sandbox_matrix(url, config, ACCOUNT, "after")
    assert result.ok, [(c.principal, c.check, c.bucket or c.target, c.blame) for c in result.mismatches][:5]
    # 12 principals x (identity + 11 locations x read/write); 11 pods x 12 chain targets; 10 pods x 9 other tenants
    assert len(result.all_cells) == 12 * (1 + 11 * 2) + 11 * 12 + 10 * 9
    for c in result.all_cells:
        if c.check in ("read", "write") and c.bucket.startswith("t") and c.tenant is not None:
            assert c.observed is (c.bucket == f"{c.tenant}-data"), (c.principal, c.check, c.bucket)
    assert all(c.observed is False for c in result.all_cells if c.check in ("chain", "annotation"))
    session = boto3.Session(region_name="us-east-1", **DUMMY)
    cfg = replace(config, endpoint_url=url)
    ctx = planner.Context(config=cfg, parts=("aws",), gateways={"aws": AwsGateway(cfg, session=session)})
    assert planner.run(ctx, planner.plan_teardown(ctx), teardown=True).ok
    assert owned_left(url) == []


def test_default_config_is_todays_matrix_and_one_tenant_group(fresh):
    url = fresh
    config = config_module.Config(account_id=ACCOUNT)
    create_managed_resources(url, config)
    result = sandbox_matrix(url, config, ACCOUNT, "after")
    assert result.ok and len(result.all_cells) == 3 * 5 + 2 * 3
    assert not [c for c in result.all_cells if c.check == "annotation"]
    assert [t.name for t in result.tenants] == ["nginx-annotated"]
    assert {p.principal.name: p.principal.tenant for p in result.principals} == {
        "host": None, "nginx-vanilla": None, "nginx-annotated": "nginx-annotated"}


def test_starting_point_every_pod_reaches_every_tenants_bucket(fresh, tmp_path):
    url = fresh
    config = load(tmp_path, ABC)
    create_managed_resources(url, config)
    result = sandbox_matrix(url, config, ACCOUNT, "before", starting_point=True)
    assert result.ok  # the starting point's own expectation: everyone has the node role, which holds every grant
    got = cells_of(result)
    for pod in ("nginx-client-a", "nginx-client-b", "nginx-vanilla"):
        assert got[(pod, "read", "client-c-data")].observed is True and got[(pod, "write", "client-c-data")].observed is True
    iam = boto3.client("iam", endpoint_url=url, region_name="us-east-1", **DUMMY)
    attached = {p["PolicyName"] for p in iam.list_attached_role_policies(RoleName="nettech-s3-read-only")["AttachedPolicies"]}
    assert attached == {"nettech-s3-read-only", "nettech-kube2iam-node"}  # the starting point was undone
