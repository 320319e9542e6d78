"""The AWS part against a real moto server: end state, call order, idempotency."""

from __future__ import annotations

from rbacbridge import planner
from rbacbridge.plan import CONFLICT, UNCHANGED
from tests.fixtures_aws import ACCOUNT, is_mutating, moto_url, policy_document, sandbox  # noqa: F401

RO, RW, PROFILE = "nettech-s3-read-only", "nettech-s3-read-write", "nettech-instance-profile"
RO_ARN = f"arn:aws:iam::{ACCOUNT}:role/{RO}"
RW_ARN = f"arn:aws:iam::{ACCOUNT}:role/{RW}"


def _setup(sandbox, config=None, **ctx_kw):
    ctx = sandbox.context(config, **ctx_kw)
    plan = planner.plan_setup(ctx)
    outcome = planner.run(ctx, plan)
    assert outcome.ok, outcome.failure and outcome.failure.error
    return plan, outcome


def _teardown(sandbox, config=None, **ctx_kw):
    ctx = sandbox.context(config, **ctx_kw)
    plan = planner.plan_teardown(ctx)
    outcome = planner.run(ctx, plan, teardown=True)
    assert outcome.ok, outcome.failure and outcome.failure.error
    return plan, outcome


def _statements(document):
    return document["Statement"]


def _principals(trust):
    out = set()
    for statement in trust["Statement"]:
        for kind, value in statement["Principal"].items():
            out |= {(kind, v) for v in (value if isinstance(value, list) else [value])}
    return out


def _actions_on(document, resource):
    actions = set()
    for statement in document["Statement"]:
        resources = statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
        if resource in resources and statement["Effect"] == "Allow":
            actions |= set(statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]])
    return actions


def assert_article_state(sandbox, instance_id, previous_profile=None):
    iam, ec2 = sandbox.client("iam"), sandbox.client("ec2")
    # Step 1-2: read-only policy on the node role, trusted by EC2 and by itself (default role = node role).
    node_policy = policy_document(iam, RO)
    assert _actions_on(node_policy, "arn:aws:s3:::nettech-helm-test") == {"s3:ListBucket"}
    assert _actions_on(node_policy, "arn:aws:s3:::nettech-helm-test/*") == {"s3:GetObject"}
    assert not _actions_on(node_policy, "arn:aws:s3:::lanre.k8s.dev")
    node_role = iam.get_role(RoleName=RO)["Role"]
    assert _principals(node_role["AssumeRolePolicyDocument"]) == {("Service", "ec2.amazonaws.com"), ("AWS", RO_ARN)}
    attached = {p["PolicyName"] for p in iam.list_attached_role_policies(RoleName=RO)["AttachedPolicies"]}
    assert attached == {RO, "nettech-kube2iam-node"}
    # kube2iam's permissions: AssumeRole scoped to the exact roles it hands out, not "*".
    kube2iam = policy_document(iam, "nettech-kube2iam-node")
    assume = [s for s in kube2iam["Statement"] if "sts:AssumeRole" in s["Action"]]
    assert len(assume) == 1 and sorted(assume[0]["Resource"]) == sorted([RO_ARN, RW_ARN])
    assert any("ec2:DescribeRegions" in s["Action"] for s in kube2iam["Statement"])
    # Step 3: the profile holds the node role.
    profile = iam.get_instance_profile(InstanceProfileName=PROFILE)["InstanceProfile"]
    assert [r["RoleName"] for r in profile["Roles"]] == [RO]
    # Step 4-5: read-write policy and role trusting the node role's exact ARN.
    pod_policy = policy_document(iam, RW)
    assert _actions_on(pod_policy, "arn:aws:s3:::lanre.k8s.dev/*") == {"s3:GetObject", "s3:PutObject", "s3:DeleteObject"}
    assert _actions_on(pod_policy, "arn:aws:s3:::nettech-helm-test/*") == {"s3:GetObject"}
    pod_role = iam.get_role(RoleName=RW)["Role"]
    assert _principals(pod_role["AssumeRolePolicyDocument"]) == {("AWS", RO_ARN)}
    assert [p["PolicyName"] for p in iam.list_attached_role_policies(RoleName=RW)["AttachedPolicies"]] == [RW]
    # Everything tagged as owned.
    owned = {"Key": "managed-by", "Value": "rbacbridge"}
    assert owned in node_role["Tags"] and owned in pod_role["Tags"] and owned in profile["Tags"]
    for name in (RO, RW, "nettech-kube2iam-node"):
        assert owned in iam.get_policy(PolicyArn=f"arn:aws:iam::{ACCOUNT}:policy/{name}")["Policy"]["Tags"]
    # Step 6-7: the instance uses the profile; the previous one is recorded.
    association = ec2.describe_iam_instance_profile_associations(
        Filters=[{"Name": "instance-id", "Values": [instance_id]}])["IamInstanceProfileAssociations"]
    live = [a for a in association if a["State"] == "associated"]
    assert [a["IamInstanceProfile"]["Arn"].rsplit("/", 1)[1] for a in live] == [PROFILE]
    # The record lives in IAM tags on rbacbridge's own profile, never on the instance.
    tags = {t["Key"]: t["Value"] for r in ec2.describe_instances(InstanceIds=[instance_id])["Reservations"]
            for i in r["Instances"] for t in i.get("Tags", [])}
    assert not any(k.startswith("rbacbridge") for k in tags)
    assert recorded(sandbox)[instance_id] == (f"arn:aws:iam::{ACCOUNT}:instance-profile/{previous_profile}"
                                               if previous_profile else "none")


def recorded(sandbox) -> dict[str, str]:
    """The restore record, read the way an operator would (aws iam get-instance-profile): instance -> previous ARN."""
    tags = {t["Key"]: t["Value"] for t in
            sandbox.client("iam").get_instance_profile(InstanceProfileName=PROFILE)["InstanceProfile"].get("Tags", [])}
    out = {}
    for key, value in tags.items():
        if key.startswith("rbacbridge:record:"):
            for entry in value.split():
                parts = entry.split("=")
                out[parts[0]] = "none" if parts[1] == "none" else tags[f"rbacbridge:profile:{parts[2]}"]
    return out


def test_setup_creates_the_article_state(sandbox):
    instance = sandbox.new_instance(previous_profile="legacy-profile")
    _setup(sandbox, sandbox.config(instance_ids=(instance,)))
    assert_article_state(sandbox, instance, previous_profile="legacy-profile")


def test_setup_calls_in_dependency_order(sandbox):
    instance = sandbox.new_instance()
    _setup(sandbox, sandbox.config(instance_ids=(instance,)))
    order = [op for _, op, _ in sandbox.mutating_calls]
    # Each policy exists before it is attached; the node role before the pod role that trusts it;
    # the role is in the profile before the profile is associated; the record before associating.
    assert order.count("CreatePolicy") == 3 and order.count("AttachRolePolicy") == 3
    creates = [i for i, op in enumerate(order) if op == "CreateRole"]
    assert len(creates) == 2
    assert order.index("CreatePolicy") < order.index("AttachRolePolicy")
    assert order.index("AddRoleToInstanceProfile") < order.index("AssociateIamInstanceProfile")
    assert order.index("TagInstanceProfile") < order.index("AssociateIamInstanceProfile")
    assert "CreateTags" not in order
    # The self-trust is added only after the node role exists (AWS rejects a role naming itself at creation).
    assert creates[0] < order.index("UpdateAssumeRolePolicy") < creates[1]


def test_second_setup_makes_no_mutating_call(sandbox):
    instance = sandbox.new_instance(previous_profile="legacy-profile")
    _setup(sandbox, sandbox.config(instance_ids=(instance,)))
    before = sandbox.snapshot()
    sandbox.calls.clear()
    plan, outcome = _setup(sandbox, sandbox.config(instance_ids=(instance,)))
    assert sandbox.mutating_calls == []
    assert sandbox.calls, "the re-run must still read live state"
    assert {s.action for s in plan.steps} == {UNCHANGED}
    assert sandbox.snapshot() == before


def test_teardown_restores_previous_profile_and_leaves_nothing(sandbox):
    instance = sandbox.new_instance(previous_profile="legacy-profile")
    before = sandbox.snapshot()
    _setup(sandbox, sandbox.config(instance_ids=(instance,)))
    _teardown(sandbox, sandbox.config(instance_ids=(instance,)))
    assert sandbox.snapshot() == before
    sandbox.calls.clear()
    plan, _ = _teardown(sandbox)
    assert plan.steps == [] and sandbox.mutating_calls == []


def test_teardown_without_instance_list_finds_tagged_instances(sandbox):
    first, second = sandbox.new_instance(), sandbox.new_instance(previous_profile="old")
    before = sandbox.snapshot()
    _setup(sandbox, sandbox.config(instance_ids=(first, second)))
    _teardown(sandbox, sandbox.config())  # config lost its instance list: teardown still finds them
    assert sandbox.snapshot() == before


def test_teardown_call_order_detaches_before_deleting(sandbox):
    _setup(sandbox, sandbox.config())
    sandbox.calls.clear()
    _teardown(sandbox)
    order = [op for _, op, _ in sandbox.mutating_calls]
    # moto would let DeletePolicy through on an attached policy; AWS would not: check the order here.
    calls = sandbox.mutating_calls
    for index, (_, op, params) in enumerate(calls):
        if op == "DeletePolicy":
            detaches = [i for i, (_, o, p) in enumerate(calls) if o == "DetachRolePolicy" and p["PolicyArn"] == params["PolicyArn"]]
            assert detaches and max(detaches) < index
    assert order.index("RemoveRoleFromInstanceProfile") < order.index("DeleteInstanceProfile")
    delete_roles = [i for i, op in enumerate(order) if op == "DeleteRole"]
    remove_from_profile = order.index("RemoveRoleFromInstanceProfile")
    assert delete_roles[-1] > remove_from_profile
    assert sandbox.snapshot()["roles"] == {} and sandbox.snapshot()["policies"] == []


def test_untagged_resources_conflict_on_setup_and_are_left_on_teardown(sandbox):
    iam = sandbox.client("iam")
    iam.create_role(RoleName=RW, AssumeRolePolicyDocument='{"Version":"2012-10-17","Statement":[]}')
    ctx = sandbox.context()
    plan = planner.plan_setup(ctx)
    assert [s.name for s in plan.conflicts] == [RW]
    # teardown: the foreign role is reported and left
    _setup(sandbox, sandbox.config(pod_role="tenant-role"))
    plan, _ = _teardown(sandbox)
    assert any(s.action == "left-alone" and s.name == RW for s in plan.steps)
    assert iam.get_role(RoleName=RW)["Role"]["RoleName"] == RW


def test_adopt_takes_over_an_untagged_role(sandbox):
    iam = sandbox.client("iam")
    iam.create_role(RoleName=RW, AssumeRolePolicyDocument='{"Version":"2012-10-17","Statement":[]}')
    plan, _ = _setup(sandbox, adopt=True)
    assert not plan.conflicts
    trust = iam.get_role(RoleName=RW)["Role"]
    assert _principals(trust["AssumeRolePolicyDocument"]) == {("AWS", RO_ARN)}
    assert {"Key": "managed-by", "Value": "rbacbridge"} in trust["Tags"]


def test_changed_document_becomes_new_version_and_old_versions_are_pruned(sandbox):
    iam = sandbox.client("iam")
    _setup(sandbox)
    for index in range(6):
        plan, _ = _setup(sandbox, sandbox.config(tenant_bucket=f"tenant-{index}"))
        reasons = [s.reason for s in plan.steps if s.kind == "iam-policy" and s.action == "update"]
        assert reasons and "policy document differs" in reasons[0]
        versions = iam.list_policy_versions(PolicyArn=f"arn:aws:iam::{ACCOUNT}:policy/{RW}")["Versions"]
        assert len(versions) <= 5
    assert _actions_on(policy_document(iam, RW), "arn:aws:s3:::tenant-5/*") >= {"s3:PutObject"}


def test_drifted_trust_policy_is_repaired_with_reason(sandbox):
    iam = sandbox.client("iam")
    _setup(sandbox)
    wrong = f'{{"Version":"2012-10-17","Statement":[{{"Effect":"Allow","Principal":{{"AWS":"arn:aws:iam::{ACCOUNT}:role/someone"}},"Action":"sts:AssumeRole"}}]}}'
    iam.update_assume_role_policy(RoleName=RW, PolicyDocument=wrong)
    plan = planner.plan_setup(sandbox.context())
    [step] = [s for s in plan.steps if s.changes]
    assert step.reason.startswith("trust policy differs")
    assert RO_ARN in step.reason and "someone" in step.reason
    _setup(sandbox)
    assert _principals(iam.get_role(RoleName=RW)["Role"]["AssumeRolePolicyDocument"]) == {("AWS", RO_ARN)}


def test_explicit_default_role_drops_self_trust(sandbox):
    iam = sandbox.client("iam")
    iam_default = "tenant-default"
    _setup(sandbox, sandbox.config(default_role=iam_default))
    node_trust = iam.get_role(RoleName=RO)["Role"]["AssumeRolePolicyDocument"]
    assert _principals(node_trust) == {("Service", "ec2.amazonaws.com")}
    kube2iam = policy_document(iam, "nettech-kube2iam-node")
    resources = [r for s in kube2iam["Statement"] if "sts:AssumeRole" in s["Action"] for r in s["Resource"]]
    assert sorted(resources) == sorted([RW_ARN, f"arn:aws:iam::{ACCOUNT}:role/{iam_default}"])
