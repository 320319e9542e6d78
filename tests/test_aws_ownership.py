"""Issue 22's attacks on AWS ownership, each against a moto server (over HTTP), asserting the state left
in moto — associations, roles, policies, trust documents, the KMS key and its tags — not messages:

1. a forged restore record (IAM tags on the instance profile; or the signed record itself rewritten)
5. two installs in one account: each keeps to its own, and a forged tenant tag moves nothing
6. iam:TagRole on a production role with a tenant role's name: still a conflict, never deleted
7. IAM names that differ only by case are the same name

The attacker holds iam:Tag*/iam:Untag* (and, in the tests of the signed record itself, kms:TagResource /
kms:UntagResource on the install's key, more than the threat model grants) but never kms:Sign.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import zlib

import pytest

from rbacbridge import planner
from rbacbridge.config import Tenant
from rbacbridge.plan import LEFT_ALONE
from tests.fixtures_aws import ACCOUNT, INSTALL, key_tags, kms_state, moto_url, record_key, sandbox  # noqa: F401
from tests.test_aws_setup import PROFILE, RW, _setup, _teardown

ADMIN = "admin-profile"
ADMIN_ARN = f"arn:aws:iam::{ACCOUNT}:instance-profile/{ADMIN}"
ADMIN_POLICY = json.dumps({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]})
EC2_TRUST = json.dumps({"Version": "2012-10-17", "Statement": [
    {"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}]})


def cli(sandbox, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rbacbridge", *args], capture_output=True, text=True, env=sandbox.env(),
                          timeout=120, stdin=subprocess.DEVNULL)


def _profile_of(sandbox, instance: str) -> str | None:
    found = sandbox.client("ec2").describe_iam_instance_profile_associations(
        Filters=[{"Name": "instance-id", "Values": [instance]}, {"Name": "state", "Values": ["associated"]}])
    names = [a["IamInstanceProfile"]["Arn"].rsplit("/", 1)[1] for a in found["IamInstanceProfileAssociations"]]
    return names[0] if names else None


def _admin(sandbox) -> str:
    """An instance profile holding an administrator role: what the attacker wants on every node."""
    iam = sandbox.client("iam")
    iam.create_role(RoleName="admin", AssumeRolePolicyDocument=EC2_TRUST)
    iam.put_role_policy(RoleName="admin", PolicyName="all", PolicyDocument=ADMIN_POLICY)
    profile = iam.create_instance_profile(InstanceProfileName=ADMIN)["InstanceProfile"]
    iam.add_role_to_instance_profile(InstanceProfileName=ADMIN, RoleName="admin")
    return profile["InstanceProfileId"]


def everything(sandbox) -> dict:
    """IAM, EC2 and the KMS keys with their tags: "nothing changed" compares this before and after."""
    kms = sandbox.client("kms")
    return {**sandbox.snapshot(), **kms_state(sandbox),
            "key_tags": {k["KeyId"]: key_tags(sandbox, k["KeyId"]) for k in kms.list_keys()["Keys"]}}


def _one_error_line(done: subprocess.CompletedProcess, code: int = 1) -> str:
    assert done.returncode == code, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    return lines[0]


# --- 1. a forged restore record --------------------------------------------------------------------


def test_the_issues_forgery_of_the_instance_profile_tags_grants_nothing(sandbox):
    """Issue 22 item 1, as reported: one TagInstanceProfile rewrites the (then unsigned) record to name an
    invented association id and the admin profile. The record now lives signed on the KMS key: the
    profile's tags are not read, and teardown gives back exactly what the instance had (nothing)."""
    instance = sandbox.new_instance()
    admin_id = _admin(sandbox)
    before = sandbox.snapshot()
    _setup(sandbox, sandbox.config(instance_ids=(instance,)))
    iam = sandbox.client("iam")
    iam.tag_instance_profile(InstanceProfileName=PROFILE, Tags=[
        {"Key": "rbacbridge:record:1", "Value": f"{instance}=iip-assoc-0123456789abcdef0={admin_id}"},
        {"Key": f"rbacbridge:profile:{admin_id}", "Value": ADMIN_ARN}])
    sandbox.calls.clear()
    done = cli(sandbox, "teardown", "--only", "aws", "--yes")
    assert done.returncode == 0, done.stderr
    assert _profile_of(sandbox, instance) is None
    associations = sandbox.client("ec2").describe_iam_instance_profile_associations()["IamInstanceProfileAssociations"]
    assert not [a for a in associations if a["IamInstanceProfile"]["Arn"] == ADMIN_ARN]
    assert sandbox.snapshot() == before


def _rewrite(sandbox, change, install: str = INSTALL) -> None:
    """Edit the key's record tags the way someone with kms:TagResource / kms:UntagResource (never kms:Sign) could."""
    kms = sandbox.client("kms")
    key = record_key(sandbox, f"alias/rbacbridge/{install}")["KeyId"]
    prefix = f"rbacbridge:record:{install}:"
    tags = {k[len(prefix):]: v for k, v in key_tags(sandbox, key).items() if k.startswith(prefix)}
    new = change(dict(tags))
    gone = [prefix + k for k in tags if k not in new]
    if gone:
        kms.untag_resource(KeyId=key, TagKeys=gone)
    changed = [{"TagKey": prefix + k, "TagValue": v} for k, v in new.items() if tags.get(k) != v]
    if changed:
        kms.tag_resource(KeyId=key, Tags=changed)


def _chunks(tags: dict[str, str]) -> tuple[int, str]:
    count = int(tags["sig"].split(" ")[0])
    return count, "".join(tags[str(n)] for n in range(1, count + 1))


def _reencoded(tags: dict[str, str], edit) -> dict[str, str]:
    """The record decoded, edited, encoded again in the same format, with the old signature kept."""
    count, payload = _chunks(tags)
    body = json.loads(zlib.decompress(base64.b64decode(payload)))
    edit(body)
    payload = base64.b64encode(zlib.compress(json.dumps(body, sort_keys=True, separators=(",", ":")).encode(), 9)).decode()
    pieces = [payload[n:n + 256] for n in range(0, len(payload), 256)]
    out = {k: v for k, v in tags.items() if k == "sig" or int(k) > len(pieces)}
    out.update({str(n): p for n, p in enumerate(pieces, 1)})
    out["sig"] = f"{len(pieces)} {tags['sig'].split(' ')[1]}"
    return out


def _grant_admin(sandbox, instance: str, admin_id: str):
    def edit(body):
        body["replaced"][instance] = ["iip-assoc-0123456789abcdef0", admin_id, ADMIN_ARN]
    return lambda tags: _reencoded(tags, edit)


def _flip_one_character(tags):
    first = tags["1"]
    return {**tags, "1": first[:100] + ("A" if first[100] != "A" else "B") + first[101:]}


def _other_signature(tags):
    count, signature = tags["sig"].split(" ")
    raw = bytearray(base64.b64decode(signature))
    raw[-1] ^= 1
    return {**tags, "sig": f"{count} {base64.b64encode(bytes(raw)).decode()}"}


def _drop_a_chunk(tags):
    assert int(tags["sig"].split(" ")[0]) >= 2
    return {k: v for k, v in tags.items() if k != "2"}


def _drop_the_signature(tags):
    return {k: v for k, v in tags.items() if k != "sig"}


def _fewer_chunks_claimed(tags):
    count, signature = tags["sig"].split(" ")
    return {**tags, "sig": f"{int(count) - 1} {signature}"}


@pytest.mark.parametrize("tamper", ["grant admin", "one character", "signature", "missing chunk", "missing signature",
                                    "chunk count"])
def test_a_tampered_signed_record_stops_teardown_and_setup_and_changes_nothing(sandbox, tamper):
    instance = sandbox.new_instance()
    admin_id = _admin(sandbox)
    others = [sandbox.new_instance(previous_profile=f"previous-{n}") for n in range(6)]  # a record of several chunks
    config_args = ["--only", "aws", "--yes", "--account-id", ACCOUNT] + [
        arg for i in [instance, *others] for arg in ("--instance-id", i)]
    done = cli(sandbox, "setup", *config_args)
    assert done.returncode == 0, done.stderr
    change = {"grant admin": _grant_admin(sandbox, instance, admin_id), "one character": _flip_one_character,
              "signature": _other_signature, "missing chunk": _drop_a_chunk, "missing signature": _drop_the_signature,
              "chunk count": _fewer_chunks_claimed}[tamper]
    _rewrite(sandbox, change)
    state = everything(sandbox)
    line = _one_error_line(cli(sandbox, "teardown", "--only", "aws", "--yes"))
    assert "does not verify" in line
    assert everything(sandbox) == state
    assert _profile_of(sandbox, instance) == PROFILE  # nothing given back, nothing taken away
    _one_error_line(cli(sandbox, "setup", *config_args))
    _one_error_line(cli(sandbox, "plan", "--only", "aws", "--account-id", ACCOUNT))
    assert everything(sandbox) == state


def test_another_installs_record_replayed_onto_this_key_does_not_verify(sandbox):
    """Install B's valid, signed record copied into install A's place (on A's key): signed by another key."""
    a_instance, b_instance = sandbox.new_instance(), sandbox.new_instance(previous_profile="b-legacy")
    _admin(sandbox)
    a, b = _install(sandbox, "a", instance_ids=(a_instance,)), _install(sandbox, "b", instance_ids=(b_instance,))
    _setup(sandbox, a)
    _setup(sandbox, b)
    b_key = record_key(sandbox, "alias/rbacbridge/b-profile")["KeyId"]
    b_tags = {k.split(":")[-1]: v for k, v in key_tags(sandbox, b_key).items() if k.startswith("rbacbridge:record:b-profile:")}
    _rewrite(sandbox, lambda tags: b_tags, install="a-profile")
    state = everything(sandbox)
    for run in (planner.plan_teardown, planner.plan_setup):
        with pytest.raises(Exception, match="does not verify"):
            run(sandbox.context(a))
    assert everything(sandbox) == state


def test_a_record_replayed_between_installs_sharing_a_pinned_key_does_not_verify(sandbox):
    """Both installs pin one key (record.kms_key): each keeps its record under its install id, and the
    signed statement names the install, so B's record in A's place fails even with the same key."""
    key = sandbox.client("kms").create_key(KeySpec="ECC_NIST_P256", KeyUsage="SIGN_VERIFY")["KeyMetadata"]["Arn"]
    a = _install(sandbox, "a", record_kms_key=key)
    b = _install(sandbox, "b", record_kms_key=key)
    _setup(sandbox, a)
    _setup(sandbox, b)
    tags = key_tags(sandbox, key)
    assert {k.split(":")[2] for k in tags if k.startswith("rbacbridge:record:")} == {"a-profile", "b-profile"}
    b_tags = {k: v for k, v in tags.items() if k.startswith("rbacbridge:record:b-profile:")}
    kms = sandbox.client("kms")
    kms.untag_resource(KeyId=key, TagKeys=[k for k in tags if k.startswith("rbacbridge:record:a-profile:")])
    kms.tag_resource(KeyId=key, Tags=[{"TagKey": k.replace(":b-profile:", ":a-profile:"), "TagValue": v} for k, v in b_tags.items()])
    with pytest.raises(Exception, match="does not verify"):
        planner.plan_teardown(sandbox.context(a))


# --- 5. two installs in one account ----------------------------------------------------------------


def _install(sandbox, name: str, tenants: tuple[Tenant, ...] = (), **values):
    """An install of its own: its own profile (so its own install id and key), node role and policies."""
    return sandbox.config(instance_profile=f"{name}-profile", node_role=f"{name}-node", node_policy=f"{name}-node-policy",
                          kube2iam_policy=f"{name}-kube2iam", pod_default_role=f"{name}-default",
                          tenants=tenants or (Tenant(f"{name}-tenant", (f"{name}-ns",), f"{name}-tenant-role", None,
                                                     f"{name}-tenant-policy", (f"{name}-bucket",), (), ()),), **values)


def test_two_installs_never_take_each_others_roles(sandbox):
    iam = sandbox.client("iam")
    shared = "shared-tenant-role"
    a = _install(sandbox, "a", (Tenant("alpha", ("alpha",), shared, None, "alpha-policy", ("alpha-bucket",), (), ()),))
    b = _install(sandbox, "b", (Tenant("beta", ("beta",), shared, None, "beta-policy", ("beta-bucket",), (), ()),))
    _setup(sandbox, a)
    role_before = iam.get_role(RoleName=shared)["Role"]
    plan = planner.plan_setup(sandbox.context(b))
    [conflict] = [s for s in plan.conflicts if s.name == shared]
    assert "rbacbridge:install=a-profile" in conflict.reason
    assert not [s for s in plan.changes if s.name == shared]  # never an update of A's role
    state = everything(sandbox)
    done = cli(sandbox, "setup", "--only", "aws", "--yes", "--account-id", ACCOUNT, "-c", str(_write(sandbox, b)))
    assert done.returncode != 0 and "conflict" in done.stderr
    assert everything(sandbox) == state
    # --adopt does not take another install's resources either
    assert [s.name for s in planner.plan_setup(sandbox.context(b, adopt=True)).conflicts] == [shared]
    # B's teardown leaves A's role alone; A's role is as A made it
    _teardown(sandbox, b)
    role = iam.get_role(RoleName=shared)["Role"]
    assert (role["RoleId"], role["AssumeRolePolicyDocument"]) == (role_before["RoleId"], role_before["AssumeRolePolicyDocument"])
    assert [p["PolicyName"] for p in iam.list_attached_role_policies(RoleName=shared)["AttachedPolicies"]] == ["alpha-policy"]


def _write(sandbox, config) -> str:
    """A config file for the CLI with the install's names (tenants as YAML)."""
    import tempfile

    import yaml

    data = {"iam": {"instance_profile": config.instance_profile, "node_role": config.node_role, "node_policy": config.node_policy,
                    "kube2iam_policy": config.kube2iam_policy, "default_role": config.pod_default_role},
            "tenants": [{"name": t.name, "namespaces": list(t.namespaces), "role": t.role, "policy": t.policy,
                         "read": list(t.read)} for t in config.tenants]}
    handle = tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False, dir=sandbox.tmp)
    yaml.safe_dump(data, handle)
    handle.close()
    return handle.name


@pytest.fixture(autouse=True)
def _tmp(sandbox, tmp_path):
    sandbox.tmp = str(tmp_path)


def test_a_forged_tenant_tag_on_one_install_never_deletes_anothers(sandbox):
    """Issue 22 item 5b: `rbacbridge:tenant:beta` written on A's profile (iam:TagInstanceProfile) named B's
    role and policy as A's removed tenant; A's setup deleted them. Now only A's signed record counts."""
    iam = sandbox.client("iam")
    a, b = _install(sandbox, "a"), _install(sandbox, "b")
    _setup(sandbox, a)
    _setup(sandbox, b)
    b_role = iam.get_role(RoleName="b-tenant-role")["Role"]
    iam.tag_instance_profile(InstanceProfileName="a-profile", Tags=[
        {"Key": "rbacbridge:tenant:b-tenant", "Value": "role=b-tenant-role policy=b-tenant-policy"}])
    plan, _ = _setup(sandbox, a)
    assert not [s for s in plan.changes if "b-tenant" in s.name]
    _teardown(sandbox, a)
    role = iam.get_role(RoleName="b-tenant-role")["Role"]
    assert (role["RoleId"], role["AssumeRolePolicyDocument"]) == (b_role["RoleId"], b_role["AssumeRolePolicyDocument"])
    assert [p["PolicyName"] for p in iam.list_attached_role_policies(RoleName="b-tenant-role")["AttachedPolicies"]] == ["b-tenant-policy"]
    assert {r["RoleName"] for r in iam.list_roles()["Roles"]} == {"b-node", "b-default", "b-tenant-role"}
    _teardown(sandbox, b)
    assert iam.list_roles()["Roles"] == [] and iam.list_policies(Scope="Local")["Policies"] == []


# --- 6. a tag makes nothing ours ------------------------------------------------------------------


def _production_role(sandbox, name: str) -> dict:
    """A team's role that happens to have a tenant role's name, with grants of its own — and, planted by
    someone holding only iam:TagRole, rbacbridge's tags (this install's id included)."""
    iam = sandbox.client("iam")
    trust = json.dumps({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT}:role/app-server"}, "Action": "sts:AssumeRole"}]})
    role = iam.create_role(RoleName=name, AssumeRolePolicyDocument=trust)["Role"]
    iam.put_role_policy(RoleName=name, PolicyName="data", PolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": ["dynamodb:*", "sqs:*"], "Resource": "*"}]}))
    arn = iam.create_policy(PolicyName="team-queues", PolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": "sqs:*", "Resource": "*"}]}))["Policy"]["Arn"]
    iam.attach_role_policy(RoleName=name, PolicyArn=arn)
    iam.tag_role(RoleName=name, Tags=[{"Key": "managed-by", "Value": "rbacbridge"}, {"Key": "rbacbridge:install", "Value": INSTALL},
                                      {"Key": "rbacbridge:tenant", "Value": "nginx-annotated"}])
    return role


def _role_state(iam, name: str) -> tuple:
    role = iam.get_role(RoleName=name)["Role"]
    return (role["RoleId"], json.dumps(role["AssumeRolePolicyDocument"], sort_keys=True),
            [p["PolicyName"] for p in iam.list_attached_role_policies(RoleName=name)["AttachedPolicies"]],
            iam.list_role_policies(RoleName=name)["PolicyNames"])


def test_a_tagged_production_role_is_a_conflict_and_survives_teardown(sandbox):
    iam = sandbox.client("iam")
    _production_role(sandbox, RW)
    production = _role_state(iam, RW)
    plan = planner.plan_setup(sandbox.context())
    [conflict] = plan.conflicts
    assert conflict.name == RW and "tag proves nothing" in conflict.reason
    assert not [s for s in plan.changes if (s.kind, s.name) == ("iam-role", RW) or s.name.startswith(RW + "/")]  # no retrust, no attach
    state = everything(sandbox)
    done = cli(sandbox, "setup", "--only", "aws", "--yes", "--account-id", ACCOUNT)
    assert done.returncode != 0 and everything(sandbox) == state
    # the rest set up under another tenant role name; then a teardown with the original names
    _setup(sandbox, sandbox.config(pod_role="tenant-role"))
    plan, _ = _teardown(sandbox)
    assert [s.action for s in plan.steps if (s.kind, s.name) == ("iam-role", RW)] == [LEFT_ALONE]
    assert _role_state(iam, RW) == production
    _teardown(sandbox, sandbox.config(pod_role="tenant-role"))
    assert {r["RoleName"] for r in iam.list_roles()["Roles"]} == {RW}
    assert _role_state(iam, RW) == production


# --- 7. names are the same whatever their case -----------------------------------------------------


@pytest.mark.parametrize("yaml_text, needle", [
    ("tenants:\n  - {name: c, namespaces: [c], role: client-c-s3}\n  - {name: d, namespaces: [d], role: Client-C-S3}\n",
     "already the role of tenant c"),
    ("tenants:\n  - {name: c, namespaces: [c], role: NetTech-Pod-Default}\n", "the pods' default role"),
    (f"account_id: '{ACCOUNT}'\ntenants:\n  - name: c\n    namespaces: [c]\n    role: {{existing: 'arn:aws:iam::{ACCOUNT}:role/NETTECH-S3-READ-ONLY'}}\n",
     "the node role"),
    ("tenants:\n  - {name: c, namespaces: [c], role: c-s3, policy: Client-Policy, read: [b-1]}\n"
     "  - {name: d, namespaces: [d], role: d-s3, policy: client-policy, read: [b-2]}\n", "already the policy of tenant c"),
    ("iam:\n  pod_role: NETTECH-S3-READ-ONLY\n", "must differ from the node role"),
    ("iam:\n  kube2iam_policy: NetTech-S3-Read-Only\n", "must differ"),
])
def test_case_variants_of_a_name_are_refused(sandbox, tmp_path, yaml_text, needle):
    path = tmp_path / "rbacbridge.yaml"
    path.write_text(yaml_text)
    line = _one_error_line(cli(sandbox, "plan", "--only", "aws", "-c", str(path)), code=2)
    assert needle in line and "ignore case" in line


def test_a_tenant_role_renamed_only_by_case_is_the_same_role(sandbox):
    """IAM does not distinguish names by case: `client-c-s3` spelled `Client-C-S3` in the config is the role
    the record names, never a removed tenant's role to delete (nor a new one to create)."""
    iam = sandbox.client("iam")
    tenant = Tenant("client-c", ("client-c",), "client-c-s3", None, "client-c-policy", ("c-bucket",), (), ())
    _setup(sandbox, sandbox.config(tenants=(tenant,)))
    role_id = iam.get_role(RoleName="client-c-s3")["Role"]["RoleId"]
    sandbox.calls.clear()
    renamed = Tenant("client-c", ("client-c",), "Client-C-S3", None, "Client-C-Policy", ("c-bucket",), (), ())
    plan, _ = _setup(sandbox, sandbox.config(tenants=(renamed,)))
    ops = [(op, p.get("RoleName") or p.get("PolicyName") or p.get("PolicyArn", "")) for _, op, p in sandbox.mutating_calls]
    assert not [o for o in ops if o[0] in ("DeleteRole", "CreateRole", "DeletePolicy", "CreatePolicy", "DetachRolePolicy")], ops
    assert [r["RoleId"] for r in iam.list_roles()["Roles"] if r["RoleName"].lower() == "client-c-s3"] == [role_id]
    plan, _ = _teardown(sandbox, sandbox.config(tenants=(renamed,)))
    assert iam.list_roles()["Roles"] == [] and iam.list_policies(Scope="Local")["Policies"] == []


@pytest.mark.parametrize("yaml_text, needle", [
    ("record:\n  install_id: Team_A!\n", "invalid record.install_id"),
    ("record:\n  install_id: -a\n", "invalid record.install_id"),
    ("record:\n  kms_key: my-key\n", "invalid record.kms_key"),
    ("record:\n  kms_key: alias/aws/ebs\n", "AWS managed key"),
])
def test_record_settings_are_checked_before_anything(sandbox, tmp_path, yaml_text, needle):
    path = tmp_path / "rbacbridge.yaml"
    path.write_text(yaml_text)
    state = everything(sandbox)
    line = _one_error_line(cli(sandbox, "setup", "--only", "aws", "--yes", "--account-id", ACCOUNT, "-c", str(path)), code=2)
    assert needle in line and everything(sandbox) == state


def test_the_default_install_id_comes_from_the_profile_name_and_never_merges_two():
    from rbacbridge.config import Config, derived_install_id

    assert Config().effective_install_id == "nettech-instance-profile"
    assert derived_install_id("Nodes-Prod") == "nodes-prod"  # IAM names are unique whatever their case
    dotted, dashed = derived_install_id("nodes.prod"), derived_install_id("nodes-prod")
    assert dotted != dashed and dotted.startswith("nodes-prod-") and len(derived_install_id("x" * 128)) <= 64
    assert Config(install_id="team-a").effective_install_id == "team-a"
