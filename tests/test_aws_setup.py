"""The AWS part against a real moto server: end state, call order, idempotency."""

from __future__ import annotations

from rbacbridge import planner
from rbacbridge.plan import CONFLICT, UNCHANGED
from tests.fixtures_aws import ACCOUNT, is_mutating, moto_url, policy_document, sandbox, signed_record  # noqa: F401

RO, RW, PROFILE = "nettech-s3-read-only", "nettech-s3-read-write", "nettech-instance-profile"
DEFAULT = "nettech-pod-default"
RO_ARN = f"arn:aws:iam::{ACCOUNT}:role/{RO}"
RW_ARN = f"arn:aws:iam::{ACCOUNT}:role/{RW}"
DEFAULT_ARN = f"arn:aws:iam::{ACCOUNT}:role/{DEFAULT}"


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


def _assumable(iam) -> list[str]:
    kube2iam = policy_document(iam, "nettech-kube2iam-node")
    assume = [s for s in kube2iam["Statement"] if "sts:AssumeRole" in s["Action"]]
    assert len(assume) == 1
    return sorted(assume[0]["Resource"])


def _all_actions(iam, role: str) -> set[str]:
    actions: set[str] = set()
    for attached in iam.list_attached_role_policies(RoleName=role)["AttachedPolicies"]:
        for statement in policy_document(iam, attached["PolicyName"])["Statement"]:
            value = statement.get("Action", [])
            actions |= set(value if isinstance(value, list) else [value])
    return actions


def assert_dedicated_default_role(iam):
    role = iam.get_role(RoleName=DEFAULT)["Role"]
    assert _principals(role["AssumeRolePolicyDocument"]) == {("AWS", RO_ARN)}
    assert [p["PolicyName"] for p in iam.list_attached_role_policies(RoleName=DEFAULT)["AttachedPolicies"]] == [RO]
    assert iam.list_role_policies(RoleName=DEFAULT)["PolicyNames"] == []
    actions = _all_actions(iam, DEFAULT)
    assert actions == {"s3:ListBucket", "s3:GetObject"}
    assert not any(a.startswith("sts:") or a == "*" for a in actions)
    assert {"Key": "managed-by", "Value": "rbacbridge"} in role["Tags"]


def assert_article_state(sandbox, instance_id, previous_profile=None):
    iam, ec2 = sandbox.client("iam"), sandbox.client("ec2")
    # Step 1-2: read-only policy on the node role, trusted by EC2 only (pods never get the node role,
    # so it needs no self-trust).
    node_policy = policy_document(iam, RO)
    assert _actions_on(node_policy, "arn:aws:s3:::nettech-helm-test") == {"s3:ListBucket"}
    assert _actions_on(node_policy, "arn:aws:s3:::nettech-helm-test/*") == {"s3:GetObject"}
    assert not _actions_on(node_policy, "arn:aws:s3:::lanre.k8s.dev")
    node_role = iam.get_role(RoleName=RO)["Role"]
    assert _principals(node_role["AssumeRolePolicyDocument"]) == {("Service", "ec2.amazonaws.com")}
    attached = {p["PolicyName"] for p in iam.list_attached_role_policies(RoleName=RO)["AttachedPolicies"]}
    assert attached == {RO, "nettech-kube2iam-node"}
    # kube2iam's permissions: AssumeRole scoped to exactly the roles it hands out (the pod role and the
    # dedicated default role), not "*" and not the node role itself.
    assert _assumable(iam) == sorted([RW_ARN, DEFAULT_ARN])
    kube2iam = policy_document(iam, "nettech-kube2iam-node")
    assert any("ec2:DescribeRegions" in s["Action"] for s in kube2iam["Statement"])
    # The dedicated default role: the read-only policy, trusted only by the node role's exact ARN, no sts.
    assert_dedicated_default_role(iam)
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
    assert owned in iam.get_role(RoleName=DEFAULT)["Role"]["Tags"]
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
    """What the signed record says each instance had (instance -> previous profile ARN, "none", or "unknown")."""
    record = signed_record(sandbox) or {"replaced": {}}
    return {i: (e[2] if len(e) == 3 else "unknown" if e == ["?"] else "none") for i, e in record["replaced"].items()}


def test_setup_creates_the_article_state(sandbox):
    instance = sandbox.new_instance(previous_profile="legacy-profile")
    _setup(sandbox, sandbox.config(instance_ids=(instance,)))
    assert_article_state(sandbox, instance, previous_profile="legacy-profile")


def test_setup_calls_in_dependency_order(sandbox):
    instance = sandbox.new_instance()
    _setup(sandbox, sandbox.config(instance_ids=(instance,)))
    calls = sandbox.mutating_calls
    order = [op for _, op, _ in calls]
    # Each policy exists before it is attached; the node role before the roles that trust it;
    # the role is in the profile before the profile is associated; the record before associating.
    assert order.count("CreatePolicy") == 3 and order.count("AttachRolePolicy") == 4
    created = [p["RoleName"] for _, op, p in calls if op == "CreateRole"]
    assert created == [RO, RW, DEFAULT]
    for index, (_, op, params) in enumerate(calls):
        if op == "AttachRolePolicy":
            policy = params["PolicyArn"].rsplit("/", 1)[-1]
            assert any(o == "CreatePolicy" and p["PolicyName"] == policy for _, o, p in calls[:index])
            assert any(o == "CreateRole" and p["RoleName"] == params["RoleName"] for _, o, p in calls[:index])
    assert order.index("AddRoleToInstanceProfile") < order.index("AssociateIamInstanceProfile")
    # The record's key exists before anything else; the record (KMS tags) is signed and written before
    # anything is created or associated, and again (the new unique ids) after the last association.
    assert order[:3] == ["CreateKey", "CreateAlias", "TagResource"]
    assert order[-1] == "TagResource" and order.count("TagResource") == 2
    assert "TagInstanceProfile" not in order
    assert "CreateTags" not in order
    assert "UpdateAssumeRolePolicy" not in order  # no self-trust: pods never get the node role


def test_node_default_role_trusts_itself_and_is_warned(sandbox):
    iam = sandbox.client("iam")
    for mode in ("node", "auto"):
        ctx = sandbox.context(sandbox.config(default_role=mode))
        plan = planner.plan_setup(ctx)
        [warning] = plan.warnings
        assert f"kube2iam.default_role={mode} hands every unannotated pod the node role {RO}" in warning
        assert f"may sts:AssumeRole {RW}: any pod can chain into it" in warning
        assert plan.to_dict()["warnings"] == [warning]
    sandbox.calls.clear()
    _setup(sandbox, sandbox.config(default_role="node"))
    order = [op for _, op, _ in sandbox.mutating_calls]
    creates = [i for i, op in enumerate(order) if op == "CreateRole"]
    assert len(creates) == 2  # no dedicated role
    # The self-trust is added only after the node role exists (AWS rejects a role naming itself at creation).
    assert creates[0] < order.index("UpdateAssumeRolePolicy") < creates[1]
    assert _principals(iam.get_role(RoleName=RO)["Role"]["AssumeRolePolicyDocument"]) == {
        ("Service", "ec2.amazonaws.com"), ("AWS", RO_ARN)}
    assert _assumable(iam) == sorted([RO_ARN, RW_ARN])
    assert DEFAULT not in {r["RoleName"] for r in iam.list_roles()["Roles"]}
    assert planner.plan_setup(sandbox.context()).warnings == []


def test_install_made_with_the_old_auto_default_converges_in_one_setup(sandbox):
    iam = sandbox.client("iam")
    instance = sandbox.new_instance(previous_profile="legacy-profile")
    _setup(sandbox, sandbox.config(instance_ids=(instance,), default_role="auto"))  # what the old default made
    assert _assumable(iam) == sorted([RO_ARN, RW_ARN])
    plan, _ = _setup(sandbox, sandbox.config(instance_ids=(instance,)))
    changed = {(s.kind, s.name, s.action) for s in plan.changes}
    assert ("iam-role", RO, "update") in changed  # loses its self-trust
    assert ("iam-policy", "nettech-kube2iam-node", "update") in changed  # new default version
    assert ("iam-role", DEFAULT, "create") in changed
    [trust] = [s for s in plan.changes if s.name == RO]
    assert trust.reason.startswith("trust policy differs") and f"unexpected Allow sts:AssumeRole on principal {RO_ARN}" in trust.reason
    assert_article_state(sandbox, instance, previous_profile="legacy-profile")
    versions = iam.list_policy_versions(PolicyArn=f"arn:aws:iam::{ACCOUNT}:policy/nettech-kube2iam-node")["Versions"]
    assert len(versions) == 2 and [v["VersionId"] for v in versions if v["IsDefaultVersion"]] == ["v2"]
    sandbox.calls.clear()
    again, _ = _setup(sandbox, sandbox.config(instance_ids=(instance,)))
    assert again.changes == [] and sandbox.mutating_calls == []


def test_teardown_removes_the_dedicated_role_even_after_switching_to_node(sandbox):
    before = sandbox.snapshot()
    _setup(sandbox)
    assert DEFAULT in sandbox.snapshot()["roles"]
    sandbox.calls.clear()
    plan, _ = _teardown(sandbox, sandbox.config(default_role="node"))
    assert sandbox.snapshot() == before
    deletes = [p["RoleName"] for _, op, p in sandbox.mutating_calls if op == "DeleteRole"]
    assert DEFAULT in deletes


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
    # Every role loses its attachments before it is deleted (the dedicated default role included).
    for index, (_, op, params) in enumerate(calls):
        if op == "DeleteRole":
            assert not [1 for _, o, p in calls[index:] if o == "DetachRolePolicy" and p["RoleName"] == params["RoleName"]]
            assert [1 for _, o, p in calls[:index] if o == "DetachRolePolicy" and p["RoleName"] == params["RoleName"]]
    assert sorted(p["RoleName"] for _, op, p in calls if op == "DeleteRole") == sorted([RO, RW, DEFAULT])
    ro_policy = f"arn:aws:iam::{ACCOUNT}:policy/{RO}"
    assert {p["RoleName"] for _, op, p in calls if op == "DetachRolePolicy" and p["PolicyArn"] == ro_policy} == {RO, DEFAULT}
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
    [step] = [s for s in plan.steps if s.changes and s.kind != "record"]
    [stamp] = [s for s in plan.steps if s.kind == "record"]  # the record notes when the trust changed (verify's settle window)
    assert "last changed a trust" in stamp.message and stamp.details == {"stamp_only": True}
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


def test_plan_says_what_each_instances_metadata_options_mean(sandbox):
    ec2 = sandbox.client("ec2")
    strict, loose, hops2 = sandbox.new_instance(), sandbox.new_instance(), sandbox.new_instance()
    ec2.modify_instance_metadata_options(InstanceId=strict, HttpTokens="required", HttpPutResponseHopLimit=1)
    ec2.modify_instance_metadata_options(InstanceId=hops2, HttpTokens="required", HttpPutResponseHopLimit=2)
    config = sandbox.config(instance_ids=(strict, loose, hops2))
    plan = planner.plan_setup(sandbox.context(config))
    found = {f["instance_id"]: f for f in plan.to_dict()["metadata_options"]}
    assert (found[strict]["http_tokens"], found[strict]["hop_limit"], found[strict]["pods_blocked_without_rule"]) == ("required", 1, True)
    assert (found[loose]["http_tokens"], found[loose]["pods_blocked_without_rule"]) == ("optional", False)
    assert (found[hops2]["hop_limit"], found[hops2]["pods_blocked_without_rule"]) == (2, False)
    notes = "\n".join(plan.notes)
    assert f"instance {strict}: IMDSv2 tokens required, hop limit 1: pods cannot reach the metadata service even without" in notes
    assert f"instance {loose}: IMDSv1 allowed (HttpTokens optional)" in notes and "the rule is the only barrier" in notes
    assert f"instance {hops2}: IMDSv2 tokens required but hop limit 2" in notes
    # One describe for both the record tags and the metadata options.
    assert [op for _, op, _ in sandbox.calls].count("DescribeInstances") == 1
    assert plan.warnings == []
    # An image without IMDSv2 support on a node that requires tokens is a warning naming the instance.
    old_image = planner.plan_setup(sandbox.context(sandbox.config(instance_ids=(strict, loose), kube2iam_image="jtblin/kube2iam:0.11.2")))
    [warning] = old_image.warnings
    assert "jtblin/kube2iam:0.11.2 has no IMDSv2 support" in warning and strict in warning and loose not in warning


def test_plan_cli_puts_notes_and_warnings_on_stderr_and_in_json(sandbox, tmp_path):
    import json
    import subprocess
    import sys

    instance = sandbox.new_instance()
    sandbox.client("ec2").modify_instance_metadata_options(InstanceId=instance, HttpTokens="required", HttpPutResponseHopLimit=1)
    base = [sys.executable, "-m", "rbacbridge", "plan", "--only", "aws", "--account-id", ACCOUNT, "--instance-id", instance]

    def cli(*extra: str) -> subprocess.CompletedProcess:
        done = subprocess.run(base + list(extra), capture_output=True, text=True, timeout=60,
                              env=dict(sandbox.env(), COLUMNS="200"))  # piped: 80 columns would fold the notes
        assert done.returncode == 0, done.stderr
        return done

    table = cli()
    assert "pods cannot reach the metadata service" in table.stderr and "metadata service" not in table.stdout
    assert "warning:" not in table.stderr
    data = json.loads(cli("-o", "json").stdout)
    assert data["metadata_options"][0]["instance_id"] == instance and data["warnings"] == []
    config = tmp_path / "rbacbridge.yaml"
    config.write_text("kube2iam:\n  default_role: node\n")
    warned = cli("-c", str(config))
    assert f"warning: kube2iam.default_role=node hands every unannotated pod the node role {RO}" in " ".join(warned.stderr.split())
    as_json = cli("-c", str(config), "-o", "json")
    assert "any pod can chain into it" in json.loads(as_json.stdout)["warnings"][0]
    assert "warning:" in as_json.stderr  # a CI log shows it too
    setup = subprocess.run([sys.executable, "-m", "rbacbridge", "setup", "--only", "aws", "--dry-run", "-c", str(config),
                            "--account-id", ACCOUNT], capture_output=True, text=True, env=sandbox.env(), timeout=60)
    assert setup.returncode == 0, setup.stderr
    assert "any pod can chain into it" in " ".join(setup.stderr.split())
