"""`rbacbridge permissions`: the operator's least-privilege policy is enough, and scoped.

Two checks, because moto enforces only part of IAM:

- enforced by moto (server mode, `/moto-api/reset-auth` on): an IAM user holding ONLY the printed
  policy runs `setup --yes` then `teardown --yes` through the CLI; a user whose policy lacks one
  statement fails on that statement's call. What moto 5.2 checks here: the *action* of every IAM,
  EC2 and STS call against the user's identity policies (Allow/Deny, wildcards). What it does not:
  resource ARNs (it matches most calls against resource "*"; role calls against the role ARN only
  once the role exists) and conditions (iam:PolicyARN, iam:PassedToService, aws:TagKeys), nor the
  iam:PassRole that AWS implies when an instance profile is associated. So the user gets the
  policy's statements with Resource "*" and no Condition: exactly its actions, statement by
  statement.
- resources and conditions: the calls a real setup + teardown (+ verify's diagnostics) make are
  recorded and each one (plus the implied iam:PassRole) is evaluated against the printed policy,
  ARNs and conditions included, with rbacbridge.policy_eval and a small condition check below.
"""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import boto3
import pytest

from rbacbridge import planner, policy_eval
from rbacbridge.config import Config
from rbacbridge.permissions import operator_policy
from tests.fixtures_aws import ACCOUNT, moto_url, sandbox  # noqa: F401

REPO = Path(__file__).resolve().parents[1]
REGION = "us-east-1"


def cli(*args: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rbacbridge", *args], capture_output=True, text=True, env=env,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def printed_policy(*args: str) -> dict:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    result = cli("permissions", "--account-id", ACCOUNT, *args, env=env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


# --- moto with IAM enforcement on -----------------------------------------------------------------


@pytest.fixture
def enforced_moto():
    """Its own moto server process (enforcement is global state: never the shared one)."""
    process = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", "0"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url, deadline = None, time.monotonic() + 30
    while url is None and time.monotonic() < deadline:
        line = process.stdout.readline()
        match = re.search(r"Running on (http://127\.0\.0\.1:\d+)", line)
        url = match.group(1) if match else None
    assert url, "moto server did not start"
    try:
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)
        process.stdout.close()


def _client(url: str, service: str, key: tuple[str, str] = ("testing", "testing")):
    return boto3.client(service, endpoint_url=url, region_name=REGION, aws_access_key_id=key[0], aws_secret_access_key=key[1])


def _user_with_policy(iam, name: str, document: dict) -> tuple[str, str]:
    iam.create_user(UserName=name)
    iam.put_user_policy(UserName=name, PolicyName="only-this", PolicyDocument=json.dumps(document))
    key = iam.create_access_key(UserName=name)["AccessKey"]
    return key["AccessKeyId"], key["SecretAccessKey"]


def as_moto_sees_it(document: dict, without: str | None = None) -> dict:
    """The same actions, statement by statement, with what moto cannot evaluate taken out (see the top)."""
    out = copy.deepcopy(document)
    out["Statement"] = [dict({k: v for k, v in s.items() if k != "Condition"}, Resource="*")
                        for s in out["Statement"] if s["Sid"] != without]
    return out


def _env(url: str, key: tuple[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_ENDPOINT_URL=url, AWS_ACCESS_KEY_ID=key[0], AWS_SECRET_ACCESS_KEY=key[1], AWS_DEFAULT_REGION=REGION,
               AWS_EC2_METADATA_DISABLED="true", AWS_CONFIG_FILE="/dev/null", AWS_SHARED_CREDENTIALS_FILE="/dev/null",
               PYTHONPATH=str(REPO))
    return env


def _enforce(url: str) -> None:
    request = urllib.request.Request(f"{url}/moto-api/reset-auth", data=b"0", method="POST",
                                     headers={"Content-Type": "text/plain"})
    urllib.request.urlopen(request).read()


def test_a_user_with_only_the_printed_policy_can_setup_and_teardown_and_one_statement_less_fails(enforced_moto):
    url = enforced_moto
    admin_iam, ec2 = _client(url, "iam"), _client(url, "ec2")
    # bootstrap while enforcement is off: an admin (to look at the state), a worker instance, the operators
    admin = _user_with_policy(admin_iam, "admin", {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": "*", "Resource": "*"}]})
    instance = ec2.run_instances(ImageId="ami-12345678", MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
    policy = printed_policy("--instance-id", instance, "--region", REGION)
    operator = _user_with_policy(admin_iam, "operator", as_moto_sees_it(policy))
    no_profiles = _user_with_policy(admin_iam, "no-profiles", as_moto_sees_it(policy, without="ManageInstanceProfile"))
    no_association = _user_with_policy(admin_iam, "no-association", as_moto_sees_it(policy, without="AssociateProfile"))
    _enforce(url)
    iam, ec2 = _client(url, "iam", admin), _client(url, "ec2", admin)
    with pytest.raises(Exception, match="InvalidClientTokenId|not valid|AccessDenied"):
        _client(url, "iam").list_roles()  # enforcement is on: unknown keys are refused
    args = ["--only", "aws", "--account-id", ACCOUNT, "--instance-id", instance, "--region", REGION]

    # one statement less: setup stops on that statement's call
    denied = cli("setup", "--yes", *args, env=_env(url, no_profiles))
    assert denied.returncode != 0
    assert "InstanceProfile" in denied.stderr and "AccessDenied" in denied.stderr, denied.stderr
    assert iam.list_instance_profiles()["InstanceProfiles"] == []

    # the whole policy: setup and teardown complete
    setup = cli("setup", "--yes", *args, env=_env(url, operator))
    assert setup.returncode == 0, setup.stdout + setup.stderr
    assert {r["RoleName"] for r in iam.list_roles()["Roles"]} == {"nettech-s3-read-only", "nettech-s3-read-write",
                                                                   "nettech-pod-default"}
    associations = ec2.describe_iam_instance_profile_associations()["IamInstanceProfileAssociations"]
    assert [(a["InstanceId"], a["IamInstanceProfile"]["Arn"].rsplit("/", 1)[1]) for a in associations
            if a["State"] == "associated"] == [(instance, "nettech-instance-profile")]

    teardown = cli("teardown", "--yes", *args, env=_env(url, operator))
    assert teardown.returncode == 0, teardown.stdout + teardown.stderr
    assert iam.list_roles()["Roles"] == [] and iam.list_policies(Scope="Local")["Policies"] == []
    assert iam.list_instance_profiles()["InstanceProfiles"] == []

    # without the association statement, the IAM part is done and the association call is refused
    partial = cli("setup", "--yes", *args, env=_env(url, no_association))
    assert partial.returncode != 0
    assert "AssociateIamInstanceProfile" in partial.stderr and ("AccessDenied" in partial.stderr or "UnauthorizedOperation" in partial.stderr), partial.stderr
    assert [a for a in ec2.describe_iam_instance_profile_associations()["IamInstanceProfileAssociations"]
            if a["State"] == "associated"] == []


# --- every call's resource and conditions, evaluated against the printed policy ------------------


def resource_of(service: str, operation: str, params: dict, instance: str) -> str:
    """The resource AWS authorizes the call on (Service Authorization Reference)."""
    iam = f"arn:aws:iam::{ACCOUNT}"
    if service == "sts" or operation.startswith("Describe"):
        return "*"
    if service == "ec2":
        return f"arn:aws:ec2:{REGION}:{ACCOUNT}:instance/{instance}"  # the one instance of the test
    if operation in ("AttachRolePolicy", "DetachRolePolicy"):
        return f"{iam}:role/{params['RoleName']}"
    if "PolicyArn" in params:
        return params["PolicyArn"]
    if operation == "CreatePolicy":
        return f"{iam}:policy/{params['PolicyName']}"
    if "InstanceProfileName" in params:
        return f"{iam}:instance-profile/{params['InstanceProfileName']}"
    return f"{iam}:role/{params['RoleName']}"


def condition_context(operation: str, params: dict) -> dict[str, list[str]]:
    if operation == "AttachRolePolicy":
        return {"iam:PolicyARN": [params["PolicyArn"]]}
    if operation in ("CreateTags", "DeleteTags"):
        return {"aws:TagKeys": [t["Key"] for t in params.get("Tags", [])]}
    if operation == "PassRole":
        return {"iam:PassedToService": ["ec2.amazonaws.com"]}
    return {}


def _matches(operator: str, value: str, wanted: list) -> bool:
    from fnmatch import fnmatchcase

    if operator.endswith("StringLike"):
        return any(fnmatchcase(value, w) for w in wanted)
    if operator.endswith("NumericEquals"):
        return any(float(value) == float(w) for w in wanted)
    if operator.endswith(("StringEquals", "ArnEquals")):
        return value in [str(w) for w in wanted]
    raise AssertionError(f"condition operator {operator} not understood by this test")


def conditions_hold(condition: dict, context: dict[str, list[str]]) -> bool:
    for operator, keys in condition.items():
        for key, wanted in keys.items():
            wanted = wanted if isinstance(wanted, list) else [wanted]
            values = context.get(key)
            if operator == "Null":
                if (values is None) != (wanted == ["true"]):
                    return False
            elif operator.startswith("ForAllValues:"):
                if not all(_matches(operator, v, wanted) for v in values or []):
                    return False
            elif operator.startswith("ForAnyValue:"):
                if not any(_matches(operator, v, wanted) for v in values or []):
                    return False
            elif not values or not all(_matches(operator, v, wanted) for v in values):
                return False
    return True


def decide(policy: dict, action: str, resource: str, context: dict) -> policy_eval.Decision:
    usable = [dict({k: v for k, v in s.items() if k != "Condition"}) for s in policy["Statement"]
              if "Condition" not in s or conditions_hold(s["Condition"], context)]
    return policy_eval.evaluate([{"Statement": usable}], action, resource)


class KmsSeen:
    """The KMS side as AWS would authorize it, replayed from the calls in order: which key an alias names
    and which aliases and tags each key has at the time of each call (KMS authorizes key operations on the
    key, with kms:ResourceAliases and aws:ResourceTag/* from its state then)."""

    def __init__(self):
        self.alias_target: dict[str, str] = {}  # alias -> key ARN
        self.tags: dict[str, dict[str, str]] = {}
        self.new_key = f"arn:aws:kms:{REGION}:{ACCOUNT}:key/created-by-this-call"

    def key(self, key_id: str) -> str | None:
        if key_id.startswith("alias/"):
            return self.alias_target.get(key_id)
        return key_id if key_id.startswith("arn:") else f"arn:aws:kms:{REGION}:{ACCOUNT}:key/{key_id}"

    def context(self, key: str) -> dict[str, list[str]]:
        out = {"kms:ResourceAliases": sorted(a for a, k in self.alias_target.items() if k == key)}
        out.update({f"aws:ResourceTag/{k}": [v] for k, v in self.tags.get(key, {}).items()})
        return out

    def requests(self, operation: str, params: dict, response_key: str | None):
        action = f"kms:{operation}"
        if operation == "CreateKey":
            tags = {t["TagKey"]: t["TagValue"] for t in params.get("Tags", [])}
            requested = {f"aws:RequestTag/{k}": [v] for k, v in tags.items()} | {"aws:TagKeys": list(tags)}
            yield action, "*", {"kms:KeySpec": [params["KeySpec"]], "kms:KeyUsage": [params["KeyUsage"]], **requested}
            yield "kms:TagResource", self.new_key, requested  # Tags on CreateKey need kms:TagResource too
            return
        if operation in ("CreateAlias", "DeleteAlias"):
            alias = params["AliasName"]
            key = self.key(params["TargetKeyId"]) if operation == "CreateAlias" else self.alias_target.get(alias)
            if operation == "CreateAlias" and key not in self.tags:
                self.tags[key] = getattr(self, "created_tags", {})
            yield action, f"arn:aws:kms:{REGION}:{ACCOUNT}:{alias}", {}
            yield action, key, self.context(key)
            return
        key = self.key(params["KeyId"])
        if key is None:
            return  # an alias that does not exist (yet): KMS answers NotFound, nothing is authorized
        context = self.context(key)
        if operation == "Sign":
            context.update({"kms:SigningAlgorithm": [params["SigningAlgorithm"]], "kms:MessageType": [params["MessageType"]]})
        elif operation == "TagResource":
            context.update({"aws:TagKeys": [t["TagKey"] for t in params["Tags"]]})
            context.update({f"aws:RequestTag/{t['TagKey']}": [t["TagValue"]] for t in params["Tags"]})
        elif operation == "UntagResource":
            context["aws:TagKeys"] = list(params["TagKeys"])
        elif operation == "ScheduleKeyDeletion":
            context["kms:ScheduleKeyDeletionPendingWindowInDays"] = [str(params["PendingWindowInDays"])]
        yield action, key, context

    def after(self, operation: str, params: dict) -> None:
        if operation == "CreateKey":  # its ARN first shows in the CreateAlias that follows
            self.created_tags = {t["TagKey"]: t["TagValue"] for t in params.get("Tags", [])}
        elif operation == "CreateAlias":
            self.alias_target[params["AliasName"]] = self.key(params["TargetKeyId"])
        elif operation == "DeleteAlias":
            self.alias_target.pop(params["AliasName"], None)


def requests(calls: list[tuple[str, str, dict]], profile_roles: dict[str, str], instance: str):
    """(action, resource, context) of every call, with the iam:PassRole AWS implies for associations and the
    kms:TagResource CreateKey's tags imply."""
    kms = KmsSeen()
    for service, operation, params in calls:
        if service == "kms":
            yield from kms.requests(operation, params, None)
            kms.after(operation, params)
            continue
        yield f"{service}:{operation}", resource_of(service, operation, params, instance), condition_context(operation, params)
        if operation in ("AssociateIamInstanceProfile", "ReplaceIamInstanceProfileAssociation"):
            spec = params["IamInstanceProfile"]
            profile = spec.get("Name") or spec["Arn"].rsplit("/", 1)[1]
            yield "iam:PassRole", f"arn:aws:iam::{ACCOUNT}:role/{profile_roles[profile]}", condition_context("PassRole", {})


def test_every_call_of_setup_teardown_and_verify_is_allowed_by_the_scoped_policy(sandbox, tmp_path):
    iam = sandbox.client("iam")
    # the node had a profile before setup: setup replaces it, teardown gives it back (PassRole on its role)
    iam.create_role(RoleName="legacy-node-role", AssumeRolePolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}]}))
    instance = sandbox.new_instance(previous_profile="legacy-profile")
    iam.add_role_to_instance_profile(InstanceProfileName="legacy-profile", RoleName="legacy-node-role")
    config = sandbox.config(instance_ids=(instance,), region=REGION)

    ctx = sandbox.context(config)
    assert planner.run(ctx, planner.plan_setup(ctx)).ok
    from rbacbridge.sandbox import live_documents  # what verify reads for its diagnostics

    live_documents(ctx.gateways["aws"].client("iam"), [config.node_role, config.pod_role, config.effective_default_role])
    ctx = sandbox.context(config)
    assert planner.run(ctx, planner.plan_teardown(ctx), teardown=True).ok
    assert sandbox.client("ec2").describe_iam_instance_profile_associations()["IamInstanceProfileAssociations"][0][
        "IamInstanceProfile"]["Arn"].endswith("/legacy-profile")

    roles = {"nettech-instance-profile": config.node_role, "legacy-profile": "legacy-node-role"}
    calls = list(requests(sandbox.calls, roles, instance))
    operations = {action for action, _, _ in calls}
    assert {"iam:CreateRole", "iam:AttachRolePolicy", "ec2:ReplaceIamInstanceProfileAssociation", "kms:CreateKey", "kms:CreateAlias",
            "kms:Sign", "kms:TagResource", "kms:GetPublicKey", "kms:ScheduleKeyDeletion", "kms:DeleteAlias",
            "iam:PassRole", "iam:DeleteInstanceProfile", "iam:ListRolePolicies", "iam:GetPolicyVersion"} - operations == set()
    policy = printed_policy("--instance-id", instance, "--restore-role", "legacy-node-role")
    denied = [(a, r, str(decide(policy, a, r, c))) for a, r, c in calls if not decide(policy, a, r, c).allowed]
    assert denied == []

    # the scoping is real: another instance, another account, a foreign policy or tag, no restore role
    other = printed_policy("--instance-id", "i-0000000000000000f", "--restore-role", "legacy-node-role")
    assert not decide(other, "ec2:ReplaceIamInstanceProfileAssociation", resource_of("ec2", "Replace", {}, instance), {}).allowed
    assert not decide(policy, "iam:CreateRole", "arn:aws:iam::210987654321:role/nettech-s3-read-only", {}).allowed
    assert not decide(policy, "iam:CreateRole", f"arn:aws:iam::{ACCOUNT}:role/admin", {}).allowed
    assert not decide(policy, "iam:AttachRolePolicy", f"arn:aws:iam::{ACCOUNT}:role/nettech-s3-read-only",
                      {"iam:PolicyARN": ["arn:aws:iam::aws:policy/AdministratorAccess"]}).allowed
    assert not decide(policy, "ec2:DeleteTags", resource_of("ec2", "DeleteTags", {}, instance), {"aws:TagKeys": ["Name"]}).allowed
    assert not decide(policy, "ec2:DeleteTags", resource_of("ec2", "DeleteTags", {}, instance), {}).allowed  # all tags
    # the record's key: only the key behind this install's alias, only the record's tags, only ECDSA over RAW
    key = f"arn:aws:kms:{REGION}:{ACCOUNT}:key/0b3e2f1c-1234-4abc-8def-0123456789ab"
    ours = {"kms:ResourceAliases": ["alias/rbacbridge/nettech-instance-profile"]}
    assert decide(policy, "kms:Sign", key, {**ours, "kms:SigningAlgorithm": ["ECDSA_SHA_256"], "kms:MessageType": ["RAW"]}).allowed
    assert not decide(policy, "kms:Sign", key, {"kms:ResourceAliases": ["alias/payments"], "kms:SigningAlgorithm": ["ECDSA_SHA_256"],
                                                "kms:MessageType": ["RAW"]}).allowed
    assert not decide(policy, "kms:Sign", key, {**ours, "kms:SigningAlgorithm": ["ECDSA_SHA_256"], "kms:MessageType": ["DIGEST"]}).allowed
    assert not decide(policy, "kms:TagResource", key, {**ours, "aws:TagKeys": ["rbacbridge:record:other-install:1"]}).allowed
    assert not decide(policy, "kms:ScheduleKeyDeletion", key, {"kms:ResourceAliases": ["alias/payments"],
                                                               "kms:ScheduleKeyDeletionPendingWindowInDays": ["7"]}).allowed
    assert not decide(policy, "kms:CreateKey", "*", {"kms:KeySpec": ["SYMMETRIC_DEFAULT"], "kms:KeyUsage": ["ENCRYPT_DECRYPT"],
                                                     "aws:RequestTag/managed-by": ["rbacbridge"], "aws:TagKeys": ["managed-by"]}).allowed
    (tmp_path / "pinned.yaml").write_text(f"record:\n  kms_key: {key}\n")
    pinned = printed_policy("--instance-id", instance, "-c", str(tmp_path / "pinned.yaml"))
    assert not {"CreateRecordKey", "DeleteRecordKey", "AliasRecordKey"} & {s["Sid"] for s in pinned["Statement"]}
    assert decide(pinned, "kms:Sign", key, {"kms:SigningAlgorithm": ["ECDSA_SHA_256"], "kms:MessageType": ["RAW"]}).allowed
    assert not decide(pinned, "kms:Sign", key.replace("0b3e2f1c", "0b3e2f1d"), {"kms:SigningAlgorithm": ["ECDSA_SHA_256"],
                                                                             "kms:MessageType": ["RAW"]}).allowed
    without_restore = printed_policy("--instance-id", instance)
    assert not decide(without_restore, "iam:PassRole", f"arn:aws:iam::{ACCOUNT}:role/legacy-node-role",
                      condition_context("PassRole", {})).allowed


def test_permissions_is_offline_data_and_refuses_bad_input():
    policy = operator_policy(Config(account_id=ACCOUNT, node_role="n", pod_role="p", pod_default_role="d",
                                    instance_profile="ip"), ACCOUNT)
    assert {s["Sid"] for s in policy["Statement"]} >= {"ManageRoles", "PassNodeRoleToEc2", "AssociateProfile"}
    roles = next(s for s in policy["Statement"] if s["Sid"] == "ManageRoles")["Resource"]
    assert roles == [f"arn:aws:iam::{ACCOUNT}:role/{name}" for name in ("n", "p", "d")]
    assert next(s for s in policy["Statement"] if s["Sid"] == "AssociateProfile")["Resource"] == [
        f"arn:aws:ec2:us-east-1:{ACCOUNT}:instance/*"]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    for args, needle in ((["permissions"], "--account-id"), (["permissions", "--account-id", ACCOUNT, "--restore-role", "a b"], "restore-role")):
        result = cli(*args, env=env)
        assert result.returncode == 2 and needle in result.stderr and len(result.stderr.splitlines()) == 1


TENANTS_YAML = """\
tenants:
  - {name: client-a, namespaces: [client-a], role: client-a-s3, read: [nettech-helm-test]}
  - {name: client-c, namespaces: [client-c], role: client-c-s3, policy: client-c-policy, write: [client-c-data]}
  - {name: client-e, namespaces: [client-e], role: {existing: "arn:aws:iam::111122223333:role/team/e"}}
"""


def test_permissions_cover_every_tenant_and_no_existing_role(sandbox, tmp_path):
    """Setup of three tenants, then removing one, then teardown: every call is allowed by the policy
    `permissions` prints for the config that has them all; an existing tenant role is only readable."""
    from rbacbridge.config import load

    path = tmp_path / "rbacbridge.yaml"
    path.write_text(TENANTS_YAML)
    config = load(path)
    policy = printed_policy("-c", str(path))
    statements = {s["Sid"]: s for s in policy["Statement"]}
    role = lambda n: f"arn:aws:iam::{ACCOUNT}:role/{n}"  # noqa: E731
    assert statements["ManageRoles"]["Resource"] == [role(n) for n in ("nettech-s3-read-only", "client-a-s3", "client-c-s3",
                                                                     "nettech-pod-default")]
    assert "arn:aws:iam::111122223333:role/team/e" in statements["ReadRolesForVerify"]["Resource"]
    assert f"arn:aws:iam::{ACCOUNT}:policy/client-c-policy" in statements["ManagePolicies"]["Resource"]
    instance = sandbox.new_instance()
    ctx = sandbox.context(sandbox.config(tenants=config.tenants, instance_ids=(instance,)))
    assert planner.run(ctx, planner.plan_setup(ctx)).ok
    fewer = sandbox.config(tenants=config.tenants[:1] + config.tenants[2:], instance_ids=(instance,))
    ctx = sandbox.context(fewer)
    assert planner.run(ctx, planner.plan_setup(ctx)).ok
    ctx = sandbox.context(fewer)
    assert planner.run(ctx, planner.plan_teardown(ctx), teardown=True).ok
    calls = list(requests(sandbox.calls, {"nettech-instance-profile": config.node_role}, instance))
    assert {"iam:DeleteRole", "iam:DetachRolePolicy", "kms:TagResource", "kms:Sign",
            "iam:CreatePolicy", "iam:DeletePolicy"} <= {a for a, _, _ in calls}
    policy = printed_policy("-c", str(path), "--instance-id", instance)
    denied = [(a, r) for a, r, c in calls if not decide(policy, a, r, c).allowed]
    assert denied == []
    assert not decide(policy, "iam:DeleteRole", "arn:aws:iam::111122223333:role/team/e", {}).allowed


def test_verify_may_explain_with_the_policy_simulator():
    """The optional statement verify's explanations use (tests/test_verify_explain.py: verify works without it)."""
    policy = printed_policy()
    explain = next(s for s in policy["Statement"] if s["Sid"] == "ExplainForVerify")
    assert explain["Action"] == ["iam:SimulatePrincipalPolicy", "s3:GetBucketPolicy"]
    assert f"arn:aws:iam::{ACCOUNT}:role/nettech-s3-read-write" in explain["Resource"]
    assert {"arn:aws:s3:::nettech-helm-test", "arn:aws:s3:::lanre.k8s.dev"} <= set(explain["Resource"])
    assert not any(r.endswith("*") for r in explain["Resource"])
