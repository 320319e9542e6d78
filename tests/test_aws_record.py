"""Associations by record only, and a record nobody else can forge (issue 10), against moto.

The record of what setup replaced lives in IAM tags on rbacbridge's own instance profile. Teardown
touches only instances it recorded while they hold that profile; EC2 tags on the instance (what
versions up to 0.1 wrote, and what anyone with ec2:CreateTags can write) never grant a profile.
"""

from __future__ import annotations

import pytest

from rbacbridge import planner
from rbacbridge.aws import PROFILE_PREFIX, RECORD_PREFIX, Previous, Record, parse_record, record_changes
from rbacbridge.plan import LEFT_ALONE, RESTORE
from tests.fixtures_aws import ACCOUNT, moto_url, sandbox  # noqa: F401
from tests.test_aws_setup import PROFILE, RO, _setup, _teardown, recorded

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


def _record_tags(sandbox) -> dict[str, str]:
    tags = sandbox.client("iam").get_instance_profile(InstanceProfileName=PROFILE)["InstanceProfile"]["Tags"]
    return {t["Key"]: t["Value"] for t in tags if t["Key"].startswith(("rbacbridge:record:", "rbacbridge:profile:"))}


def _rewrite_record(sandbox, change) -> None:
    """Edit the record the way someone with iam:TagInstanceProfile could."""
    iam = sandbox.client("iam")
    tags = _record_tags(sandbox)
    iam.untag_instance_profile(InstanceProfileName=PROFILE, TagKeys=list(tags))
    new = change(dict(tags))
    if new:
        iam.tag_instance_profile(InstanceProfileName=PROFILE, Tags=[{"Key": k, "Value": v} for k, v in new.items()])


def _admin_profile(sandbox) -> None:
    sandbox.client("iam").create_instance_profile(InstanceProfileName=ADMIN)


def _reported(plan, *words: str) -> list:
    return [s for s in plan.steps if s.action == LEFT_ALONE and all(w in s.message + " " + s.reason for w in words)]


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
    [step] = _reported(plan, instance, "not rbacbridge's")
    assert step.kind == "profile-association"
    assert {(s.kind, s.name) for s in plan.steps if s.action == LEFT_ALONE} >= {("iam-instance-profile", PROFILE), ("iam-role", RO)}


def test_forged_ec2_tag_never_grants_a_profile(sandbox):
    instance = sandbox.new_instance()
    _admin_profile(sandbox)
    _setup(sandbox, sandbox.config(instance_ids=(instance,)))
    sandbox.client("ec2").create_tags(Resources=[instance], Tags=[{"Key": OLD_TAG, "Value": ADMIN_ARN}])
    plan, _ = _teardown(sandbox)
    assert _profile_of(sandbox, instance) is None  # it had none: the IAM record decides
    assert _reported(plan, "ignore EC2 tag", instance, "not rbacbridge's record")
    assert not [s for s in plan.steps if s.action == RESTORE]


def test_old_style_record_naming_a_profile_is_refused(sandbox):
    """A version 0.1 setup left only the EC2 tag: an ARN in it cannot be told from a forgery."""
    instance = sandbox.new_instance()
    _admin_profile(sandbox)
    _setup(sandbox, sandbox.config(instance_ids=(instance,)))
    _rewrite_record(sandbox, lambda tags: {})  # as an old version would have left it: no IAM record
    sandbox.client("ec2").create_tags(Resources=[instance], Tags=[{"Key": OLD_TAG, "Value": ADMIN_ARN}])
    plan = planner.plan_setup(sandbox.context(sandbox.config(instance_ids=(instance,))))
    assert _reported(plan, "old-style record", instance, "not trusted")
    assert not plan.changes  # setup does not launder it into the record
    plan, _ = _teardown(sandbox)
    [step] = _reported(plan, "refuse the old-style record", instance)
    assert ADMIN_ARN in step.message and "nothing is restored" in step.reason
    assert _profile_of(sandbox, instance) is None
    assert _instance_tags(sandbox, instance) == {OLD_TAG: ADMIN_ARN}  # left for the user to judge
    assert "instance-profile" not in " ".join(s.message for s in plan.steps if s.action == RESTORE)


def test_old_style_none_record_is_migrated_by_setup(sandbox):
    instance = sandbox.new_instance()
    before = sandbox.snapshot()
    _setup(sandbox, sandbox.config(instance_ids=(instance,)))
    _rewrite_record(sandbox, lambda tags: {})
    sandbox.client("ec2").create_tags(Resources=[instance], Tags=[{"Key": OLD_TAG, "Value": "none"}])
    sandbox.calls.clear()
    plan, _ = _setup(sandbox, sandbox.config(instance_ids=(instance,)))
    assert [op for _, op, _ in sandbox.mutating_calls] == ["TagInstanceProfile", "DeleteTags"]
    assert recorded(sandbox) == {instance: "none"}
    assert _instance_tags(sandbox, instance) == {}
    _teardown(sandbox)
    assert sandbox.snapshot() == before


def test_old_style_none_record_is_honoured_by_teardown(sandbox):
    instance = sandbox.new_instance()
    before = sandbox.snapshot()
    _setup(sandbox, sandbox.config(instance_ids=(instance,)))
    _rewrite_record(sandbox, lambda tags: {})
    sandbox.client("ec2").create_tags(Resources=[instance], Tags=[{"Key": OLD_TAG, "Value": "none"}])
    _teardown(sandbox)
    assert sandbox.snapshot() == before


def _swap_arn(tags):
    [key] = [k for k in tags if k.startswith("rbacbridge:profile:")]
    return {**tags, key: ADMIN_ARN}


def _duplicate_entry(tags):
    [key] = [k for k in tags if k.startswith("rbacbridge:record:")]
    return {**tags, "rbacbridge:record:2": tags[key]}


def _malformed(tags):
    [key] = [k for k in tags if k.startswith("rbacbridge:record:")]
    return {**tags, key: tags[key] + "=x"}


def _drop_profile_table(tags):
    return {k: v for k, v in tags.items() if not k.startswith("rbacbridge:profile:")}


def _other_instance_association(sandbox):
    def change(tags):
        [key] = [k for k in tags if k.startswith("rbacbridge:record:")]
        instance, _, profile_id = tags[key].split("=")
        return {**tags, key: f"{instance}={sandbox.other_association}={profile_id}"}
    return change


@pytest.mark.parametrize("tamper, why", [
    (lambda sb: _swap_arn, "not the recorded one"),
    (lambda sb: _duplicate_entry, "more than once"),
    (lambda sb: _malformed, "malformed entry"),
    (lambda sb: _drop_profile_table, "does not list"),
    (_other_instance_association, "belongs to instance"),
])
def test_tampered_record_restores_nothing_and_is_reported(sandbox, tamper, why):
    instance = sandbox.new_instance(previous_profile="legacy")
    other = sandbox.new_instance(previous_profile="bystander")
    sandbox.other_association = sandbox.client("ec2").describe_iam_instance_profile_associations(
        Filters=[{"Name": "instance-id", "Values": [other]}])["IamInstanceProfileAssociations"][0]["AssociationId"]
    _admin_profile(sandbox)
    _setup(sandbox, sandbox.config(instance_ids=(instance,)))
    _rewrite_record(sandbox, tamper(sandbox))
    plan, _ = _teardown(sandbox)
    assert _reported(plan, instance, why), [s.message for s in plan.steps]
    assert not [s for s in plan.steps if s.action == RESTORE]
    assert _profile_of(sandbox, instance) is None  # rbacbridge's own profile gone, nothing given back
    assert _profile_of(sandbox, other) == "bystander"


def test_instance_holding_our_profile_without_a_record_is_left_with_it(sandbox):
    recorded_instance, stranger = sandbox.new_instance(previous_profile="legacy"), sandbox.new_instance()
    _setup(sandbox, sandbox.config(instance_ids=(recorded_instance,)))
    sandbox.client("ec2").associate_iam_instance_profile(InstanceId=stranger, IamInstanceProfile={"Name": PROFILE})
    plan, _ = _teardown(sandbox)
    assert _reported(plan, stranger, "no record")
    assert _profile_of(sandbox, recorded_instance) == "legacy"
    assert _profile_of(sandbox, stranger) == PROFILE  # its credentials keep working
    assert sandbox.client("iam").get_instance_profile(InstanceProfileName=PROFILE)  # kept, with its role
    assert _reported(plan, PROFILE, stranger) and _reported(plan, RO, "stays")
    plan, _ = _teardown(sandbox, force=True)
    assert _profile_of(sandbox, stranger) is None and sandbox.snapshot()["profiles"] == {"legacy": []}


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
    values = [v for k, v in _record_tags(sandbox).items() if k.startswith("rbacbridge:record:")]
    assert len(values) >= 2 and all(len(v) <= 256 for v in values)  # several entries a tag, several tags
    plan = planner.plan_teardown(sandbox.context())
    restores = {s.name: s.details["restore"] for s in plan.steps if s.action == RESTORE}
    assert restores == {i: arn for i, arn in expected.items() if arn != "none"}  # the plan names each profile
    _teardown(sandbox)
    assert sandbox.snapshot() == before


def test_record_entries_stay_in_place_and_fit_iam_limits():
    record = Record()
    updates = [Previous(f"i-{n:017x}", f"iip-assoc-{n:017x}", f"AIPA{n % 5:017d}",
                        f"arn:aws:iam::{ACCOUNT}:instance-profile/previous-{n % 5}") for n in range(120)]
    changes = record_changes(record, updates)
    assert len(changes) <= 49 and all(len(v) <= 256 for v in changes.values())
    tags = [{"Key": "managed-by", "Value": "rbacbridge"}] + [{"Key": k, "Value": v} for k, v in changes.items()]
    parsed = parse_record(tags, ACCOUNT)
    assert parsed.entries == {u.instance_id: u for u in updates} and not parsed.tampered and not parsed.unreadable
    # A changed entry is rewritten in the tag it is in: one key changes, nothing moves.
    moved = Previous(updates[50].instance_id)
    again = record_changes(parsed, [moved])
    [key] = again
    assert key.startswith(RECORD_PREFIX) and again[key].split(" ").count(moved.token) == 1
    assert parse_record(tags + [{"Key": key, "Value": again[key]}], ACCOUNT).entries[moved.instance_id] == moved
    assert not any(k.startswith(PROFILE_PREFIX) for k in again)


def test_stale_old_style_tag_is_superseded_by_the_record(sandbox):
    """A 0.1 setup interrupted after its tag, before the association: the new setup records what EC2
    reports now, removes the tag (after the record), and teardown gives back the real previous profile."""
    instance = sandbox.new_instance(previous_profile="legacy")
    before = sandbox.snapshot()
    _admin_profile(sandbox)
    sandbox.client("ec2").create_tags(Resources=[instance], Tags=[{"Key": OLD_TAG, "Value": ADMIN_ARN}])
    sandbox.calls.clear()
    _setup(sandbox, sandbox.config(instance_ids=(instance,)))
    ops = [op for _, op, _ in sandbox.mutating_calls]
    assert ops.index("TagInstanceProfile") < ops.index("DeleteTags") < ops.index("ReplaceIamInstanceProfileAssociation")
    assert recorded(sandbox) == {instance: f"arn:aws:iam::{ACCOUNT}:instance-profile/legacy"}
    assert _instance_tags(sandbox, instance) == {}
    _teardown(sandbox)
    sandbox.client("iam").delete_instance_profile(InstanceProfileName=ADMIN)
    assert sandbox.snapshot() == before


def test_adopting_a_profile_drops_a_record_written_while_it_was_not_ours(sandbox):
    iam, ec2 = sandbox.client("iam"), sandbox.client("ec2")
    instance = sandbox.new_instance()
    _admin_profile(sandbox)
    admin_id = iam.get_instance_profile(InstanceProfileName=ADMIN)["InstanceProfile"]["InstanceProfileId"]
    iam.create_instance_profile(InstanceProfileName=PROFILE, Tags=[  # someone else's, with a planted record
        {"Key": "rbacbridge:record:1", "Value": f"{instance}=iip-assoc-0123456789abcdef0={admin_id}"},
        {"Key": f"rbacbridge:profile:{admin_id}", "Value": ADMIN_ARN}])
    ec2.associate_iam_instance_profile(InstanceId=instance, IamInstanceProfile={"Name": PROFILE})
    _setup(sandbox, sandbox.config(instance_ids=(instance,)), adopt=True)
    assert recorded(sandbox) == {}  # the planted record is gone; the instance held this very profile
    assert not [k for k in _record_tags(sandbox) if admin_id in k]
    plan, _ = _teardown(sandbox, force=True)
    assert not [s for s in plan.steps if s.action == RESTORE]
    assert _profile_of(sandbox, instance) is None


def test_a_record_that_would_not_fit_iam_limits_is_refused():
    tags = [{"Key": f"team:{n}", "Value": "x"} for n in range(48)]
    record = parse_record(tags, ACCOUNT)
    updates = [Previous(f"i-{n:017x}", f"iip-assoc-{n:017x}", f"AIPA{n:017d}",
                        f"arn:aws:iam::{ACCOUNT}:instance-profile/p{n}") for n in range(2)]
    from rbacbridge.aws import RecordFull

    with pytest.raises(RecordFull, match="IAM allows 50"):
        record_changes(record, updates)
    assert record_changes(parse_record(tags[:45], ACCOUNT), updates)  # 45 + 1 record + 2 profiles fits
