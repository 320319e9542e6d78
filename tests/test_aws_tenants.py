"""Tenants in AWS against a real moto server: least-privilege documents, trust, tags; adding and
removing a tenant touches only that tenant (others byte-identical, detach before delete); an
existing-role tenant is never touched; teardown leaves nothing of rbacbridge."""

from __future__ import annotations

import json

from rbacbridge import planner
from rbacbridge.config import Tenant
from rbacbridge.plan import DELETE, LEFT_ALONE, UNCHANGED
from tests.fixtures_aws import ACCOUNT, moto_url, policy_document, sandbox, signed_record  # noqa: F401

NODE_ARN = f"arn:aws:iam::{ACCOUNT}:role/nettech-s3-read-only"
OWNED = {"Key": "managed-by", "Value": "rbacbridge"}
INSTALL = {"Key": "rbacbridge:install", "Value": "nettech-instance-profile"}
A = Tenant("client-a", ("client-a",), "client-a-s3", None, "client-a-s3", ("nettech-helm-test",), (), ("nginx-client-a",))
B = Tenant("client-b", ("client-b",), "client-b-s3", None, None, (), (), ())
C = Tenant("client-c", ("client-c", "client-c-jobs"), "client-c-s3", None, "client-c-policy", ("nettech-helm-test",),
           ("client-c-data", "client-c-logs/app/*"), ("nginx-client-c",))
EXISTING_ARN = f"arn:aws:iam::{ACCOUNT}:role/team-owned"
E = Tenant("client-e", ("client-e",), "team-owned", EXISTING_ARN, None, ("client-e-data",), (), ())


def _run(sandbox, config, teardown=False):
    ctx = sandbox.context(config)
    plan = (planner.plan_teardown if teardown else planner.plan_setup)(ctx)
    outcome = planner.run(ctx, plan, teardown=teardown)
    assert outcome.ok, outcome.failure and outcome.failure.error
    return plan


def _tenant_state(iam, tenant: Tenant) -> dict:
    """A tenant's role and policy exactly as IAM holds them (documents, tags, attachments)."""
    role = iam.get_role(RoleName=tenant.role)["Role"]
    state = {"trust": role["AssumeRolePolicyDocument"], "tags": role.get("Tags"),
             "attached": iam.list_attached_role_policies(RoleName=tenant.role)["AttachedPolicies"]}
    if tenant.policy:
        arn = f"arn:aws:iam::{ACCOUNT}:policy/{tenant.policy}"
        policy = iam.get_policy(PolicyArn=arn)["Policy"]
        state["policy"] = (policy_document(iam, tenant.policy), policy.get("Tags"), policy["DefaultVersionId"])
    return json.loads(json.dumps(state, sort_keys=True, default=str))


def _recorded(sandbox, kind: str) -> dict[str, str]:
    """Name -> tenant of the roles or policies the signed record names (by unique id, checked live)."""
    record = signed_record(sandbox)
    return {name: tenant for name, tenant in record[kind].values()}


def _assumable(iam) -> list[str]:
    document = policy_document(iam, "nettech-kube2iam-node")
    return sorted(next(s for s in document["Statement"] if s["Sid"] == "AssumePodRoles")["Resource"])


def test_three_tenants_least_privilege(sandbox):
    config = sandbox.config(tenants=(A, B, C))
    _run(sandbox, config)
    iam = sandbox.client("iam")
    assert policy_document(iam, "client-c-policy") == {"Version": "2012-10-17", "Statement": [
        {"Sid": "ListBuckets", "Effect": "Allow", "Action": ["s3:ListBucket"],
         "Resource": ["arn:aws:s3:::nettech-helm-test", "arn:aws:s3:::client-c-data", "arn:aws:s3:::client-c-logs"]},
        {"Sid": "ReadObjects", "Effect": "Allow", "Action": ["s3:GetObject"],
         "Resource": ["arn:aws:s3:::nettech-helm-test/*", "arn:aws:s3:::client-c-data/*", "arn:aws:s3:::client-c-logs/app/*"]},
        {"Sid": "WriteTenantObjects", "Effect": "Allow", "Action": ["s3:PutObject", "s3:DeleteObject"],
         "Resource": ["arn:aws:s3:::client-c-data/*", "arn:aws:s3:::client-c-logs/app/*"]}]}
    assert policy_document(iam, "client-a-s3")["Statement"] == [
        {"Sid": "ListBuckets", "Effect": "Allow", "Action": ["s3:ListBucket"], "Resource": ["arn:aws:s3:::nettech-helm-test"]},
        {"Sid": "ReadObjects", "Effect": "Allow", "Action": ["s3:GetObject"], "Resource": ["arn:aws:s3:::nettech-helm-test/*"]}]
    for tenant in (A, B, C):
        role = iam.get_role(RoleName=tenant.role)["Role"]
        trust = role["AssumeRolePolicyDocument"]
        assert [s["Principal"] for s in trust["Statement"]] == [{"AWS": NODE_ARN}]
        assert OWNED in role["Tags"] and INSTALL in role["Tags"] and {"Key": "rbacbridge:tenant", "Value": tenant.name} in role["Tags"]
        attached = [p["PolicyName"] for p in iam.list_attached_role_policies(RoleName=tenant.role)["AttachedPolicies"]]
        assert attached == ([tenant.policy] if tenant.policy else [])
    tags = iam.get_policy(PolicyArn=f"arn:aws:iam::{ACCOUNT}:policy/client-c-policy")["Policy"]["Tags"]
    assert OWNED in tags and {"Key": "rbacbridge:tenant", "Value": "client-c"} in tags
    assert "nettech-s3-read-write" not in {r["RoleName"] for r in iam.list_roles()["Roles"]}  # no legacy tenant
    assert _assumable(iam) == sorted(f"arn:aws:iam::{ACCOUNT}:role/{n}" for n in
                                     ("client-a-s3", "client-b-s3", "client-c-s3", "nettech-pod-default"))
    # The signed record names each tenant's role and policy by unique id, with its tenant.
    record = signed_record(sandbox)
    assert record["roles"][iam.get_role(RoleName="client-c-s3")["Role"]["RoleId"]] == ["client-c-s3", "client-c"]
    assert record["policies"][iam.get_policy(PolicyArn=f"arn:aws:iam::{ACCOUNT}:policy/client-c-policy")["Policy"]["PolicyId"]] == [
        "client-c-policy", "client-c"]
    assert _recorded(sandbox, "roles")["client-b-s3"] == "client-b" and "client-b-s3" not in _recorded(sandbox, "policies")
    again = planner.plan_setup(sandbox.context(config))
    assert {s.action for s in again.steps} == {UNCHANGED}


def test_add_then_remove_a_tenant_touches_only_it(sandbox):
    _run(sandbox, sandbox.config(tenants=(A, C)))
    iam = sandbox.client("iam")
    before = {t.name: _tenant_state(iam, t) for t in (A, C)}
    _run(sandbox, sandbox.config(tenants=(A, B, C)))
    assert iam.get_role(RoleName="client-b-s3")["Role"]
    assert {t.name: _tenant_state(iam, t) for t in (A, C)} == before
    sandbox.calls.clear()
    plan = _run(sandbox, sandbox.config(tenants=(A, B)))  # C goes
    assert {t.name: _tenant_state(iam, t) for t in (A,)} == {"client-a": before["client-a"]}
    roles = {r["RoleName"] for r in iam.list_roles()["Roles"]}
    assert "client-c-s3" not in roles and {"client-a-s3", "client-b-s3"} <= roles
    assert "client-c-policy" not in {p["PolicyName"] for p in iam.list_policies(Scope="Local")["Policies"]}
    removal = [s for s in plan.steps if s.action == DELETE]
    assert removal and all("tenant client-c" in s.message for s in removal)
    # detach before delete (moto would delete an attached policy: assert the order ourselves)
    calls = [(op, p.get("RoleName") or p.get("PolicyArn", "").rsplit("/", 1)[-1]) for _, op, p in sandbox.mutating_calls]
    assert calls.index(("DetachRolePolicy", "client-c-s3")) < calls.index(("DeleteRole", "client-c-s3"))
    assert calls.index(("DetachRolePolicy", "client-c-s3")) < calls.index(("DeletePolicy", "client-c-policy"))
    # the record forgets C's ids in its last write, after the deletions
    assert calls.index(("DeletePolicy", "client-c-policy")) < len(calls) - 1 and calls[-1][0] == "TagResource"
    assert f"arn:aws:iam::{ACCOUNT}:role/client-c-s3" not in _assumable(iam)
    assert "client-c-s3" not in _recorded(sandbox, "roles") and "client-c-policy" not in _recorded(sandbox, "policies")


def test_removed_tenant_deleted_only_on_evidence(sandbox):
    """Removing a tenant acts on the signed record's unique ids, never on tags: untagging C's role does not
    save it from its own install, and tags claiming a tenant (or a same-named role with another id) are
    never enough to delete anything."""
    _run(sandbox, sandbox.config(tenants=(A, B, C)))
    iam = sandbox.client("iam")
    iam.untag_role(RoleName="client-c-s3", TagKeys=["managed-by", "rbacbridge:install", "rbacbridge:tenant"])
    # B's role deleted and re-created by someone else: same name, another id, not the recorded one
    iam.delete_role(RoleName="client-b-s3")
    iam.create_role(RoleName="client-b-s3", AssumeRolePolicyDocument="{}", Tags=[OWNED, INSTALL])
    # a role whose tags claim a tenant of this install, but that the record does not name
    iam.create_role(RoleName="forged", AssumeRolePolicyDocument="{}",
                    Tags=[OWNED, INSTALL, {"Key": "rbacbridge:tenant", "Value": "client-z"}])
    plan = _run(sandbox, sandbox.config(tenants=(A,)))
    roles = {r["RoleName"] for r in iam.list_roles()["Roles"]}
    assert "client-c-s3" not in roles  # recorded by id: deleted, tags or no tags
    assert {"client-b-s3", "forged"} <= roles
    assert not [s for s in plan.changes if s.name in ("client-b-s3", "forged")]
    assert [s.action for s in plan.steps if s.name == "client-b-s3"] == [LEFT_ALONE]
    assert "client-b-s3" not in _recorded(sandbox, "roles")  # the recorded id is gone: forgotten
    _run(sandbox, sandbox.config(tenants=(A,)), teardown=True)
    assert {"client-b-s3", "forged"} <= {r["RoleName"] for r in iam.list_roles()["Roles"]}


def test_policy_dropped_but_role_kept(sandbox):
    _run(sandbox, sandbox.config(tenants=(C,)))
    sandbox.calls.clear()
    no_grants = Tenant("client-c", ("client-c",), "client-c-s3", None, None, (), (), ())
    _run(sandbox, sandbox.config(tenants=(no_grants,)))
    iam = sandbox.client("iam")
    assert iam.list_attached_role_policies(RoleName="client-c-s3")["AttachedPolicies"] == []
    assert "client-c-policy" not in {p["PolicyName"] for p in iam.list_policies(Scope="Local")["Policies"]}
    ops = [op for _, op, _ in sandbox.mutating_calls]
    assert ops.index("DetachRolePolicy") < ops.index("DeletePolicy")
    assert _recorded(sandbox, "roles")["client-c-s3"] == "client-c" and "client-c-policy" not in _recorded(sandbox, "policies")


def test_existing_role_tenant_untouched(sandbox):
    iam = sandbox.client("iam")
    trust = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": {"AWS": NODE_ARN}, "Action": "sts:AssumeRole"}]}
    iam.create_role(RoleName="team-owned", AssumeRolePolicyDocument=json.dumps(trust), Tags=[{"Key": "team", "Value": "e"}])
    before = iam.get_role(RoleName="team-owned")["Role"]
    sandbox.calls.clear()
    _run(sandbox, sandbox.config(tenants=(A, E)))
    assert EXISTING_ARN in _assumable(iam)
    _run(sandbox, sandbox.config(tenants=(A, E)), teardown=True)
    assert iam.get_role(RoleName="team-owned")["Role"] == before
    assert iam.list_attached_role_policies(RoleName="team-owned")["AttachedPolicies"] == []
    assert not [op for _, op, p in sandbox.mutating_calls if p.get("RoleName") == "team-owned"]


def test_teardown_leaves_nothing(sandbox):
    before = sandbox.snapshot()
    _run(sandbox, sandbox.config(tenants=(A, B, C)))
    _run(sandbox, sandbox.config(tenants=(A,)), teardown=False)  # B and C removed, A stays
    _run(sandbox, sandbox.config(tenants=(A, B, C)))
    _run(sandbox, sandbox.config(tenants=(A, B)), teardown=True)  # C only in the record: removed too
    assert sandbox.snapshot() == before


def test_default_config_is_the_article(sandbox):
    """No tenants: the same roles, policies and documents as before tenants existed."""
    _run(sandbox, sandbox.config())
    iam = sandbox.client("iam")
    assert policy_document(iam, "nettech-s3-read-write") == {"Version": "2012-10-17", "Statement": [
        {"Sid": "ListBuckets", "Effect": "Allow", "Action": ["s3:ListBucket"],
         "Resource": ["arn:aws:s3:::nettech-helm-test", "arn:aws:s3:::lanre.k8s.dev"]},
        {"Sid": "ReadObjects", "Effect": "Allow", "Action": ["s3:GetObject"],
         "Resource": ["arn:aws:s3:::nettech-helm-test/*", "arn:aws:s3:::lanre.k8s.dev/*"]},
        {"Sid": "WriteTenantObjects", "Effect": "Allow", "Action": ["s3:PutObject", "s3:DeleteObject"],
         "Resource": ["arn:aws:s3:::lanre.k8s.dev/*"]}]}
    assert sorted(r["RoleName"] for r in iam.list_roles()["Roles"]) == [
        "nettech-pod-default", "nettech-s3-read-only", "nettech-s3-read-write"]
    assert sorted(p["PolicyName"] for p in iam.list_policies(Scope="Local")["Policies"]) == [
        "nettech-kube2iam-node", "nettech-s3-read-only", "nettech-s3-read-write"]
