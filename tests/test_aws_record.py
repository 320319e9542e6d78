"""The signed record (issue 22; before it, issue 10's unsigned one), against moto: what it holds, its
limits, what teardown gives back from it, and the way up from an unsigned record of an earlier version.

The record lives in the tags of the install's KMS key, signed by it. Teardown touches only instances the
record names while they hold the install's profile; tags anywhere else (the instance profile's, EC2's)
never grant a profile. The attacks themselves are in test_aws_ownership.py.
"""

from __future__ import annotations

import json

from rbacbridge import planner
from rbacbridge.aws.record import KMS_TAG_VALUE_MAX, Owned, Record, Replaced, encode
from rbacbridge.plan import CONFLICT, DELETE, LEFT_ALONE, RESTORE, UPDATE
from tests.fixtures_aws import ACCOUNT, ALIAS, key_tags, kms_state, moto_url, record_key, sandbox, signed_record  # noqa: F401
from tests.test_aws_setup import PROFILE, RO, RW, _setup, _teardown, recorded

OLD_TAG = "rbacbridge:previous-instance-profile"
ADMIN = "admin-profile"
ADMIN_ARN = f"arn:aws:iam::{ACCOUNT}:instance-profile/{ADMIN}"


def _profile_of(sandbox, instance: str) -> str | None:
    found = sandbox.client("ec2").describe_iam_instance_profile_associations(
        Filters=[{"Name": "instance-id", "Values": [instance]}, {"Name": "state", "Values": ["associated"]}])
    names = [a["IamInstanceProfile"]["Arn"].rsplit("/", 1)[1] for a in found["IamInstanceProfileAssociations"]]
    assert len(names) <= 1
    return names[0] if names else None


def _instance_tags(sandbox, instance: str) -> dict[str, str]:
    found = sandbox.client("ec2").describe_instances(InstanceIds=[instance])
    return {t["Key"]: t["Value"] for r in found["Reservations"] for i in r["Instances"] for t in i.get("Tags", [])}


def _admin_profile(sandbox) -> str:
    return sandbox.client("iam").create_instance_profile(InstanceProfileName=ADMIN)["InstanceProfile"]["InstanceProfileId"]


def _reported(plan, *words: str) -> list:
    return [s for s in plan.steps if s.action == LEFT_ALONE and all(w in s.message + " " + s.reason for w in words)]


def as_left_by_an_unsigned_version(sandbox, profile_tags: dict[str, str] = {}, ec2_tags: dict[str, str] = {}) -> None:
    """What an install made by rbacbridge before the signed record looks like: the same resources, tagged
    managed-by=rbacbridge only, no KMS key; its record (if any) unsigned, in profile or EC2 tags."""
    iam, kms, ec2 = sandbox.client("iam"), sandbox.client("kms"), sandbox.client("ec2")
    key = record_key(sandbox)
    kms.schedule_key_deletion(KeyId=key["KeyId"], PendingWindowInDays=7)
    kms.delete_alias(AliasName=ALIAS)
    for role in iam.list_roles()["Roles"]:
        iam.untag_role(RoleName=role["RoleName"], TagKeys=["rbacbridge:install"])
    for policy in iam.list_policies(Scope="Local")["Policies"]:
        iam.untag_policy(PolicyArn=policy["Arn"], TagKeys=["rbacbridge:install"])
    iam.untag_instance_profile(InstanceProfileName=PROFILE, TagKeys=["rbacbridge:install"])
    if profile_tags:
        iam.tag_instance_profile(InstanceProfileName=PROFILE, Tags=[{"Key": k, "Value": v} for k, v in profile_tags.items()])
    for instance, value in ec2_tags.items():
        ec2.create_tags(Resources=[instance], Tags=[{"Key": OLD_TAG, "Value": value}])


def test_foreign_same_named_profile_and_its_association_survive_teardown(sandbox):
    iam, ec2 = sandbox.client("iam"), sandbox.client("ec2")
    iam.create_role(RoleName=RO, AssumeRolePolicyDocument='{"Version":"2012-10-17","Statement":[]}')
    iam.create_instance_profile(InstanceProfileName=PROFILE)  # someone else's, same names, no tag
    iam.add_role_to_instance_profile(InstanceProfileName=PROFILE, RoleName=RO)
    instance = ec2.run_instances(ImageId="ami-12345678", MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
    ec2.associate_iam_instance_profile(InstanceId=instance, IamInstanceProfile={"Name": PROFILE})
    before = sandbox.snapshot()
    sandbox.calls.clear()
    plan, _ = _teardown(sandbox)
    assert sandbox.mutating_calls == []
    assert sandbox.snapshot() == before
    assert _profile_of(sandbox, instance) == PROFILE
    [step] = _reported(plan, instance, "not this install's")
    assert step.kind == "profile-association"
    assert {(s.kind, s.name) for s in plan.steps if s.action == LEFT_ALONE} >= {("iam-instance-profile", PROFILE), ("iam-role", RO)}


def test_the_record_names_what_setup_made_by_unique_id_and_what_each_instance_had(sandbox):
    iam, ec2 = sandbox.client("iam"), sandbox.client("ec2")
    had_one, had_none = sandbox.new_instance(previous_profile="legacy"), sandbox.new_instance()
    legacy = iam.get_instance_profile(InstanceProfileName="legacy")["InstanceProfile"]
    legacy_association = ec2.describe_iam_instance_profile_associations(
        Filters=[{"Name": "instance-id", "Values": [had_one]}])["IamInstanceProfileAssociations"][0]["AssociationId"]
    _setup(sandbox, sandbox.config(instance_ids=(had_one, had_none)))
    record = signed_record(sandbox)  # signature checked by KMS (kms:Verify), content decoded by hand
    key = record_key(sandbox)
    assert (record["install"], record["account"], record["key"], record["pending"]) == (
        "nettech-instance-profile", ACCOUNT, key["Arn"], [])
    roles = {r["RoleName"]: r["RoleId"] for r in iam.list_roles()["Roles"]}
    assert record["roles"] == {roles[n]: [n, ""] for n in (RO, "nettech-pod-default")} | {
        roles["nettech-s3-read-write"]: ["nettech-s3-read-write", "nginx-annotated"]}
    assert {v[0] for v in record["policies"].values()} == {RO, "nettech-kube2iam-node", "nettech-s3-read-write"}
    profile_id = iam.get_instance_profile(InstanceProfileName=PROFILE)["InstanceProfile"]["InstanceProfileId"]
    assert record["profiles"] == {profile_id: [PROFILE, ""]}
    assert record["replaced"] == {had_one: [legacy_association, legacy["InstanceProfileId"], legacy["Arn"]], had_none: []}
    live = {a["InstanceId"]: a["AssociationId"] for a in ec2.describe_iam_instance_profile_associations()[
        "IamInstanceProfileAssociations"] if a["State"] == "associated"}
    assert record["associations"] == {had_one: live[had_one], had_none: live[had_none]}
    # the key: ECC_NIST_P256 for signing, tagged for this install; every tag value within KMS's limit
    assert (key["KeySpec"], key["KeyUsage"], key["KeyState"]) == ("ECC_NIST_P256", "SIGN_VERIFY", "Enabled")
    tags = key_tags(sandbox, key["KeyId"])
    assert tags["managed-by"] == "rbacbridge" and tags["rbacbridge:install"] == "nettech-instance-profile"
    assert all(len(v) <= KMS_TAG_VALUE_MAX for v in tags.values()) and len(tags) <= 50
    assert json.loads(sandbox.client("kms").get_key_policy(KeyId=key["KeyId"], PolicyName="default")["Policy"])["Statement"] == [
        {"Sid": "DelegateToIam", "Effect": "Allow", "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT}:root"},
         "Action": "kms:*", "Resource": "*"}]


def test_tags_outside_the_key_never_grant_a_profile(sandbox):
    """The unsigned places earlier versions read (EC2 tags, the profile's tags) are ignored once a record exists."""
    instance = sandbox.new_instance()
    admin_id = _admin_profile(sandbox)
    before = sandbox.snapshot()
    _setup(sandbox, sandbox.config(instance_ids=(instance,)))
    sandbox.client("ec2").create_tags(Resources=[instance], Tags=[{"Key": OLD_TAG, "Value": ADMIN_ARN}])
    sandbox.client("iam").tag_instance_profile(InstanceProfileName=PROFILE, Tags=[
        {"Key": "rbacbridge:record:1", "Value": f"{instance}=iip-assoc-0123456789abcdef0={admin_id}"},
        {"Key": f"rbacbridge:profile:{admin_id}", "Value": ADMIN_ARN}])
    plan, _ = _teardown(sandbox)
    assert _profile_of(sandbox, instance) is None  # it had none: the signed record decides
    assert not [s for s in plan.steps if s.action == RESTORE]
    assert sandbox.snapshot() == {**before, "instance_tags": [(instance, OLD_TAG, ADMIN_ARN)]}


def test_an_unsigned_record_of_an_earlier_version_is_never_trusted_and_adopt_is_the_way_up(sandbox):
    """Upgrading: setup refuses (conflicts) until `setup --adopt` records what exists now, signed; an
    instance that already held the profile is recorded as `unknown`: teardown disassociates it, gives
    nothing back, and quotes the unsigned claim for the operator to judge."""
    iam = sandbox.client("iam")
    claimed_admin, claimed_none = sandbox.new_instance(), sandbox.new_instance()
    _admin_profile(sandbox)
    config = sandbox.config(instance_ids=(claimed_admin, claimed_none))
    _setup(sandbox, config)
    as_left_by_an_unsigned_version(sandbox, profile_tags={"rbacbridge:tenant:nginx-annotated": "role=nettech-s3-read-write"},
                                   ec2_tags={claimed_admin: ADMIN_ARN, claimed_none: "none"})
    plan = planner.plan_setup(sandbox.context(config))
    assert {s.name for s in plan.conflicts} == {RO, "nettech-s3-read-write", "nettech-pod-default", "nettech-kube2iam-node", PROFILE}
    assert all("managed-by=rbacbridge but not in this install's signed record" in s.reason for s in plan.conflicts)
    sandbox.calls.clear()
    plan, _ = _teardown(sandbox, config)  # no record yet: nothing is this install's, nothing deleted or given back
    assert sandbox.mutating_calls == [] and not plan.changes
    assert _profile_of(sandbox, claimed_admin) == PROFILE
    plan, _ = _setup(sandbox, config, adopt=True)
    adopted = {s.name for s in plan.steps if s.action == UPDATE and s.message.startswith(("adopt", "record instance"))}
    assert adopted == {RO, "nettech-s3-read-write", "nettech-pod-default", "nettech-kube2iam-node", RO, PROFILE,
                       claimed_admin, claimed_none}
    assert _reported(plan, "unsigned record", PROFILE)
    assert recorded(sandbox) == {claimed_admin: "unknown", claimed_none: "unknown"}
    assert {t["Key"]: t["Value"] for t in iam.get_role(RoleName=RO)["Role"]["Tags"]}["rbacbridge:install"] == PROFILE
    assert planner.plan_setup(sandbox.context(config)).changes == []
    plan, _ = _teardown(sandbox, config)
    assert not [s for s in plan.steps if s.action == RESTORE]
    [step] = [s for s in plan.steps if s.action == DELETE and s.name == claimed_admin]
    assert "what it had before is unknown" in step.reason and ADMIN_ARN in step.reason and "associate-iam-instance-profile" in step.reason
    assert _profile_of(sandbox, claimed_admin) is None and _profile_of(sandbox, claimed_none) is None
    assert _instance_tags(sandbox, claimed_admin) == {OLD_TAG: ADMIN_ARN}  # left for the operator to judge
    assert sandbox.snapshot()["roles"] == {} and sandbox.snapshot()["profiles"] == {ADMIN: []}


def test_instance_holding_our_profile_without_a_record_is_left_with_it(sandbox):
    recorded_instance, stranger = sandbox.new_instance(previous_profile="legacy"), sandbox.new_instance()
    _setup(sandbox, sandbox.config(instance_ids=(recorded_instance,)))
    sandbox.client("ec2").associate_iam_instance_profile(InstanceId=stranger, IamInstanceProfile={"Name": PROFILE})
    plan, _ = _teardown(sandbox)
    assert _reported(plan, stranger, "record does not name it")
    assert _profile_of(sandbox, recorded_instance) == "legacy"
    assert _profile_of(sandbox, stranger) == PROFILE  # its credentials keep working
    assert sandbox.client("iam").get_instance_profile(InstanceProfileName=PROFILE)  # kept, with its role
    assert _reported(plan, PROFILE, stranger) and _reported(plan, RO, "stays")
    assert _reported(plan, "keep KMS key") and kms_state(sandbox)["aliases"] == [ALIAS]  # the record is still needed
    plan, _ = _teardown(sandbox, force=True)
    assert _profile_of(sandbox, stranger) is None and sandbox.snapshot()["profiles"] == {"legacy": []}
    assert kms_state(sandbox)["aliases"] == [] and list(kms_state(sandbox)["keys"].values()) == ["PendingDeletion"]


def test_many_instances_each_get_back_exactly_what_they_had(sandbox):
    previous = ["p0", None, "p1", "p0-shared", None, "p2", "p3"]
    instances = []
    for name in previous:
        if name == "p0-shared":
            instance = sandbox.new_instance()
            sandbox.client("ec2").associate_iam_instance_profile(InstanceId=instance, IamInstanceProfile={"Name": "p0"})
        else:
            instance = sandbox.new_instance(previous_profile=name)
        instances.append(instance)
    before = sandbox.snapshot()
    _setup(sandbox, sandbox.config(instance_ids=tuple(instances)))
    expected = {i: (f"arn:aws:iam::{ACCOUNT}:instance-profile/{(p or 'none').replace('-shared', '')}" if p else "none")
                for i, p in zip(instances, previous)}
    assert recorded(sandbox) == expected
    plan = planner.plan_teardown(sandbox.context())
    restores = {s.name: s.details["restore"] for s in plan.steps if s.action == RESTORE}
    assert restores == {i: arn for i, arn in expected.items() if arn != "none"}  # the plan names each profile
    _teardown(sandbox)
    assert sandbox.snapshot() == before


def test_a_recorded_profile_deleted_and_recreated_is_not_given_back(sandbox):
    iam = sandbox.client("iam")
    instance = sandbox.new_instance(previous_profile="legacy")
    _setup(sandbox, sandbox.config(instance_ids=(instance,)))
    iam.delete_instance_profile(InstanceProfileName="legacy")
    iam.create_instance_profile(InstanceProfileName="legacy")  # same name and ARN, another id
    plan, _ = _teardown(sandbox)
    assert _reported(plan, "do not give instance", "not the recorded one")
    assert _profile_of(sandbox, instance) is None


def test_record_capacity_is_checked_before_anything_changes(sandbox):
    """The record takes at most 47 tag values of 256 characters on the key setup creates (50 tags, minus
    managed-by, rbacbridge:install and the signature): setup stops with a conflict when it would not fit."""
    ec2, iam = sandbox.client("ec2"), sandbox.client("iam")
    iam.create_instance_profile(InstanceProfileName="legacy")
    ids = sorted(i["InstanceId"] for i in ec2.run_instances(ImageId="ami-12345678", MinCount=300, MaxCount=300)["Instances"])
    for instance in ids[::2]:
        ec2.associate_iam_instance_profile(InstanceId=instance, IamInstanceProfile={"Name": "legacy"})
    sandbox.calls.clear()
    plan = planner.plan_setup(sandbox.context(sandbox.config(instance_ids=tuple(ids))))
    [conflict] = plan.conflicts
    assert conflict.kind == "record" and "room for 47" in conflict.message
    assert sandbox.mutating_calls == []
    plan = planner.plan_setup(sandbox.context(sandbox.config(instance_ids=tuple(ids[:150]))))
    assert plan.conflicts == []


def test_documented_capacity():
    """docs/ownership.md's figures: instances with AWS-shaped ids, half of them with a previous profile (one of
    5), the article's 3 roles, 3 policies and profile, and N tenants (a role and a policy each)."""
    import random

    def fill(instances: int, tenants: int, with_previous: float) -> int:
        rng = random.Random(instances * 1000 + tenants)
        hexid = lambda n: "".join(rng.choice("0123456789abcdef") for _ in range(n))  # noqa: E731
        upper = lambda prefix: prefix + "".join(rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567") for _ in range(17))  # noqa: E731
        record = Record("nettech-instance-profile", ACCOUNT, f"arn:aws:kms:us-east-1:{ACCOUNT}:key/{hexid(8)}-{hexid(4)}-{hexid(4)}-{hexid(4)}-{hexid(12)}")
        for n in range(3 + tenants):
            record.owned["role"][upper("AROA")] = Owned(f"role-{n}", f"tenant-{n}" if n >= 3 else "")
            record.owned["policy"][upper("ANPA")] = Owned(f"policy-{n}", f"tenant-{n}" if n >= 3 else "")
        record.owned["profile"][upper("AIPA")] = Owned("nettech-instance-profile")
        previous = [(upper("AIPA"), f"arn:aws:iam::{ACCOUNT}:instance-profile/previous-{n}") for n in range(5)]
        for n in range(instances):
            instance = f"i-{hexid(17)}"
            record.associations[instance] = f"iip-assoc-{hexid(17)}"
            profile = previous[n % 5]
            record.replaced[instance] = Replaced(f"iip-assoc-{hexid(17)}", *profile) if rng.random() < with_previous else Replaced()
        return len(encode(record)[0])

    assert fill(190, 0, 1.0) <= 47 and fill(230, 0, 0.5) <= 47 and fill(300, 0, 0.0) <= 47
    assert fill(140, 50, 1.0) <= 47 and fill(0, 230, 0.0) <= 47
    assert fill(220, 0, 1.0) > 47 and fill(330, 0, 0.0) > 47


def test_setup_and_teardown_calls_on_the_key(sandbox):
    """Figures for docs/ownership.md: the key's calls per fresh setup, no-op setup and teardown."""
    instance = sandbox.new_instance(previous_profile="legacy")
    config = sandbox.config(instance_ids=(instance,))
    kms = lambda: [op for service, op, _ in sandbox.calls if service == "kms"]  # noqa: E731
    sandbox.calls.clear()
    _setup(sandbox, config)
    assert kms() == ["DescribeKey", "CreateKey", "CreateAlias", "Sign", "TagResource", "Sign", "TagResource"]
    sandbox.calls.clear()
    plan, _ = _setup(sandbox, config)
    assert kms() == ["DescribeKey", "ListResourceTags", "GetPublicKey"] and plan.changes == []
    sandbox.calls.clear()
    plan, _ = _teardown(sandbox, config)
    assert kms() == ["DescribeKey", "ListResourceTags", "GetPublicKey", "ScheduleKeyDeletion", "DeleteAlias"]
    assert [s.kind for s in plan.changes][-1] == "kms-key"


def test_a_pinned_key_is_used_and_never_deleted(sandbox):
    kms = sandbox.client("kms")
    key = kms.create_key(KeySpec="ECC_NIST_P256", KeyUsage="SIGN_VERIFY", Tags=[{"TagKey": "team", "TagValue": "platform"}])["KeyMetadata"]
    instance = sandbox.new_instance()
    before = sandbox.snapshot()
    config = sandbox.config(instance_ids=(instance,), record_kms_key=key["Arn"])
    sandbox.calls.clear()
    _setup(sandbox, config)
    assert "CreateKey" not in [op for _, op, _ in sandbox.calls] and kms_state(sandbox)["aliases"] == []
    assert signed_record(sandbox, alias=key["Arn"])["key"] == key["Arn"]
    plan, _ = _teardown(sandbox, config)
    assert _reported(plan, "record.kms_key") and sandbox.snapshot() == before
    assert kms.describe_key(KeyId=key["KeyId"])["KeyMetadata"]["KeyState"] == "Enabled"
    # a symmetric key cannot sign: bad input, before anything changes
    symmetric = kms.create_key()["KeyMetadata"]["Arn"]
    import pytest

    from rbacbridge.errors import UsageError

    with pytest.raises(UsageError, match="not an ECC_NIST_P256 SIGN_VERIFY key"):
        planner.plan_setup(sandbox.context(sandbox.config(record_kms_key=symmetric)))


def test_interrupted_teardown_after_scheduling_the_key_finishes(sandbox):
    _setup(sandbox)
    key = record_key(sandbox)
    sandbox.client("kms").schedule_key_deletion(KeyId=key["KeyId"], PendingWindowInDays=7)  # stopped before DeleteAlias
    sandbox.calls.clear()
    plan, _ = _teardown(sandbox)
    assert [op for _, op, _ in sandbox.mutating_calls] == ["DeleteAlias"]
    assert kms_state(sandbox) == {"aliases": [], "keys": {key["KeyId"]: "PendingDeletion"}}
    from rbacbridge.errors import RbacbridgeError

    _setup(sandbox)  # a new key: the old one is gone with its alias
    sandbox.client("kms").schedule_key_deletion(KeyId=record_key(sandbox)["KeyId"], PendingWindowInDays=7)
    try:
        planner.plan_setup(sandbox.context())
    except RbacbridgeError as exc:
        assert "pending deletion" in str(exc) and "teardown" in str(exc)
    else:
        raise AssertionError("setup planned on a key pending deletion")


def test_a_fresh_setup_plans_the_key_then_the_record_before_anything_else(sandbox):
    plan = planner.plan_setup(sandbox.context())
    assert [s.kind for s in plan.steps[:2]] == ["kms-key", "record"] and plan.steps[-1].kind == "record"
    assert not [s for s in plan.steps if s.action == CONFLICT]


def _interrupted_after_the_first_record_write(sandbox, config, monkeypatch, clock_offset):
    """Setup stopped right after it signed its intents (before the first create), its clock off by `clock_offset`."""
    from datetime import datetime, timezone

    import rbacbridge.aws.record_store as record_store

    class Stop(Exception):
        pass

    real_now = record_store.now
    monkeypatch.setattr(record_store, "now", lambda: real_now() + clock_offset)
    session = sandbox.session()

    def stop(model, **_):
        if model.name.startswith("Create") and model.name not in ("CreateKey", "CreateAlias"):
            raise Stop()
    session.events.register("before-call", stop)
    ctx = sandbox.context(config, session=session)
    assert not planner.run(ctx, planner.plan_setup(ctx)).ok
    monkeypatch.setattr(record_store, "now", real_now)
    assert [p[1] for p in signed_record(sandbox)["pending"]][:2] == ["nettech-s3-read-only", "nettech-kube2iam-node"]
    return datetime.now(timezone.utc)


def test_a_pending_create_is_this_installs_only_inside_its_window(sandbox, monkeypatch):
    """Setup signs its intent to create a name before the create; a resource of that name found later is
    the one it created only when AWS's CreateDate is at most 5 minutes before the intent (clock skew) and at
    most an hour after it. Outside that, someone else made it: a conflict, and teardown leaves it."""
    from datetime import timedelta

    iam = sandbox.client("iam")
    config = sandbox.config()
    # the intent was signed two hours ago; the role of that name appeared just now: not this install's
    _interrupted_after_the_first_record_write(sandbox, config, monkeypatch, timedelta(hours=-2))
    iam.create_role(RoleName=RW, AssumeRolePolicyDocument='{"Version":"2012-10-17","Statement":[]}')
    plan = planner.plan_setup(sandbox.context(config))
    [conflict] = plan.conflicts
    assert conflict.name == RW and "signed the intent to create it at" in conflict.reason
    plan, _ = _teardown(sandbox, config)
    assert iam.get_role(RoleName=RW)["Role"] and [s.action for s in plan.steps if s.name == RW and s.kind == "iam-role"] == [LEFT_ALONE]
    iam.delete_role(RoleName=RW)
    # the intent is signed "later" than AWS's CreateDate by more than the skew allowed: not this install's either
    _interrupted_after_the_first_record_write(sandbox, config, monkeypatch, timedelta(minutes=10))
    iam.create_role(RoleName=RW, AssumeRolePolicyDocument='{"Version":"2012-10-17","Statement":[]}')
    assert [s.name for s in planner.plan_setup(sandbox.context(config)).conflicts] == [RW]
    iam.delete_role(RoleName=RW)
    _teardown(sandbox, config)
    # inside the window (a setup stopped between CreateRole and its last record write): it is, and setup records its id
    _interrupted_after_the_first_record_write(sandbox, config, monkeypatch, timedelta(minutes=3))
    role_id = iam.create_role(RoleName=RW, AssumeRolePolicyDocument='{"Version":"2012-10-17","Statement":[]}')["Role"]["RoleId"]
    plan, _ = _setup(sandbox, config)
    assert not plan.conflicts and signed_record(sandbox)["roles"][role_id] == [RW, "nginx-annotated"]
    assert signed_record(sandbox)["pending"] == []


def test_the_record_notes_when_setup_last_changed_iam_for_verifys_settle_window(sandbox, monkeypatch):
    """Record.changed (verify.settle): set by a setup that changed a trust, policy or association, left alone by
    one that changed nothing; read back by an independent reader (kms verify) and by rbacbridge's."""
    from datetime import datetime, timedelta, timezone

    from rbacbridge.aws.record import changed_at, read

    started = datetime.now(timezone.utc).replace(microsecond=0)
    _setup(sandbox)
    first = signed_record(sandbox)["changed"]
    stamp = datetime.strptime(first, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
    assert started - timedelta(seconds=1) <= stamp <= datetime.now(timezone.utc)
    plan, _ = _setup(sandbox)  # nothing to change: no record write, the stamp stays
    assert not plan.changes and signed_record(sandbox)["changed"] == first
    wrong = json.dumps({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole",
                                                               "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT}:root"}}]})
    sandbox.client("iam").update_assume_role_policy(RoleName=RW, PolicyDocument=wrong)
    from rbacbridge.aws import record_store

    later_clock = record_store.now() + timedelta(minutes=2)  # stamps are whole seconds: a clock that moved on
    monkeypatch.setattr(record_store, "now", lambda: later_clock)
    plan, _ = _setup(sandbox)  # repairs the trust: the record notes when
    assert [s.kind for s in plan.changes][-1] == "record"
    later = signed_record(sandbox)["changed"]
    assert later > first and later == later_clock.strftime("%Y-%m-%dT%H:%M:%SZ")
    key = record_key(sandbox)
    tags = key_tags(sandbox, key["KeyId"])
    public = sandbox.client("kms").get_public_key(KeyId=key["KeyId"])["PublicKey"]
    assert changed_at(read(tags, "nettech-instance-profile", ACCOUNT, key["Arn"], public)).strftime(
        "%Y-%m-%dT%H:%M:%SZ") == later


def test_a_record_without_the_change_stamp_still_reads():
    record = Record("i", ACCOUNT, "arn:aws:kms:us-east-1:123456789012:key/k", 1, "2026-01-01T00:00:00Z")
    data = record.to_json()
    assert "changed" not in data and Record.from_json(data).changed == ""
    record.changed = "2026-01-01T00:00:05Z"
    assert Record.from_json(record.to_json()).changed == "2026-01-01T00:00:05Z"
    import pytest

    from rbacbridge.aws.record import RecordInvalid

    with pytest.raises(RecordInvalid, match="changed"):
        Record.from_json({**record.to_json(), "changed": "yesterday"})


def test_verify_reads_its_settle_window_from_setups_record(sandbox, monkeypatch):
    """The live run's window (verify.live._settle_window): right after setup, until 60 s after the record's stamp.
    moto stands in for AWS here: the endpoint override that normally turns the default window off is set aside."""
    from datetime import datetime, timedelta, timezone

    from rbacbridge.verify import settle
    from rbacbridge.verify.live import LiveOptions, _settle_window

    ctx = sandbox.context()
    assert _settle_window(ctx, LiveOptions(), ACCOUNT).until is None  # an endpoint override: no default window
    monkeypatch.setattr(settle, "real_aws", lambda endpoint_url: True)
    assert _settle_window(ctx, LiveOptions(), ACCOUNT).why.startswith("setup's record notes no")  # no record yet
    _setup(sandbox)
    stamp = signed_record(sandbox)["changed"]
    changed = datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
    window = _settle_window(sandbox.context(), LiveOptions(), ACCOUNT)
    assert (window.source, window.changed_at, window.until) == ("record", changed, changed + timedelta(seconds=60))
    assert window.until > datetime.now(timezone.utc)
    explicit = _settle_window(sandbox.context(), LiveOptions(settle=0), ACCOUNT)  # --settle wins over the record
    assert (explicit.source, explicit.until) == ("--settle", None)
