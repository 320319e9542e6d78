"""Planning setup's IAM resources: each managed policy, role and the instance profile against live IAM.

Missing: created (the intent is signed into the record first). Present and this install's: brought up to
date (document, trust, attachments, tags, the role's whole permission set). Present and not provably
this install's: a conflict, or with --adopt an adoption.
"""

from __future__ import annotations

import json

from rbacbridge.aws import permission_set
from rbacbridge.aws.client import AwsGateway, _iam_list, retry_eventual_consistency
from rbacbridge.aws.documents import _as_list, _decode, _principals, describe_difference, documents_equal
from rbacbridge.aws.ownership import _created_id, _ownership_steps
from rbacbridge.aws.record_store import Draft
from rbacbridge.aws.resources import SYSTEM, InstanceProfile, ManagedPolicy, Role, _step, resource_tags
from rbacbridge.aws.unsigned_records import has_old_record
from rbacbridge.config import Config, iam_key
from rbacbridge.plan import CREATE, DELETE, LEFT_ALONE, UNCHANGED, UPDATE, Step


def _plan_policy(ctx, gw: AwsGateway, account: str, policy: ManagedPolicy, draft: Draft) -> list[Step]:
    name = draft.key.recorded_name("policy", policy.name)
    arn = ctx.config.policy_arn(account, name)
    live = gw.get_or_none("iam", "get_policy", ("NoSuchEntity",), PolicyArn=arn)
    document = json.dumps(policy.document)
    install = draft.key.install
    if live is None:
        draft.intend("policy", policy.name, policy.tenant)
        return [_step(CREATE, policy, f"create policy {policy.name}", run=lambda: _created_id(draft, policy, "policy", gw.call(
            "iam", "create_policy", PolicyName=policy.name, PolicyDocument=document,
            Description=policy.description, Tags=resource_tags(policy, install))))]
    steps: list[Step] = []
    tag = lambda: gw.call("iam", "tag_policy", PolicyArn=arn, Tags=resource_tags(policy, install))  # noqa: E731
    owned, conflict = _ownership_steps(ctx, draft, policy, live["Policy"], tag)
    steps += owned
    if conflict:
        return steps
    default = live["Policy"]["DefaultVersionId"]
    current = _decode(gw.call("iam", "get_policy_version", PolicyArn=arn, VersionId=default)["PolicyVersion"]["Document"])
    if documents_equal(policy.document, current):
        steps.append(_step(UNCHANGED, policy, f"policy {policy.name} is up to date"))
        return steps
    versions = gw.call("iam", "list_policy_versions", PolicyArn=arn)["Versions"]
    if len(versions) >= 5:  # IAM keeps at most 5: make room, oldest first
        oldest = min((v for v in versions if not v["IsDefaultVersion"]), key=lambda v: v["CreateDate"])
        steps.append(_step(DELETE, policy, f"delete old version {oldest['VersionId']} of policy {policy.name}",
                           "IAM keeps at most 5 versions", lambda v=oldest["VersionId"]: gw.call(
                               "iam", "delete_policy_version", PolicyArn=arn, VersionId=v)))
    steps.append(_step(UPDATE, policy, f"update policy {policy.name} (new default version)",
                       describe_difference("policy document", policy.document, current),
                       lambda: gw.call("iam", "create_policy_version", PolicyArn=arn,
                                       PolicyDocument=document, SetAsDefault=True)))
    return steps


def _trust_without_self(role: Role, account: str, config: Config) -> dict:
    own_arn = config.role_arn(account, role.name)
    statements = [s for s in role.trust["Statement"]
                  if own_arn not in _as_list((s.get("Principal") or {}).get("AWS", []))]
    return {**role.trust, "Statement": statements}


def _plan_role(ctx, gw: AwsGateway, account: str, role: Role, draft: Draft) -> list[Step]:
    config = ctx.config
    name = draft.key.recorded_name("role", role.name)
    live = gw.get_or_none("iam", "get_role", ("NoSuchEntity",), RoleName=name)
    trust = json.dumps(role.trust)
    update_trust = lambda: retry_eventual_consistency(lambda: gw.call(  # noqa: E731
        "iam", "update_assume_role_policy", RoleName=name, PolicyDocument=trust))
    steps: list[Step] = []
    attached: set[str] = set()
    if live is None:
        first_trust = _trust_without_self(role, account, config) if role.trusts_itself else role.trust
        draft.intend("role", role.name, role.tenant)
        steps.append(_step(CREATE, role, f"create role {role.name} ({_principals(role.trust)})", run=lambda: retry_eventual_consistency(
            lambda: _created_id(draft, role, "role", gw.call(
                "iam", "create_role", RoleName=role.name, AssumeRolePolicyDocument=json.dumps(first_trust),
                Description=role.description, Tags=resource_tags(role, draft.key.install))))))
        if role.trusts_itself:
            steps.append(_step(UPDATE, role, f"let role {role.name} trust its own ARN",
                               "kube2iam's default role is the node role; a role can only name itself once it exists",
                               update_trust))
    else:
        tag = lambda: gw.call("iam", "tag_role", RoleName=name, Tags=resource_tags(role, draft.key.install))  # noqa: E731
        owned, conflict = _ownership_steps(ctx, draft, role, live["Role"], tag)
        steps += owned
        if conflict:
            return steps
        current = _decode(live["Role"]["AssumeRolePolicyDocument"])
        if not documents_equal(role.trust, current):
            steps.append(_step(UPDATE, role, f"update trust policy of role {role.name}",
                               describe_difference("trust policy", role.trust, current), update_trust))
        live_attached = _attached_policies(gw, name)
        attached = {iam_key(p["PolicyName"]) for p in live_attached}
    for policy_name in role.policies:
        if iam_key(policy_name) in attached:
            continue
        arn = config.policy_arn(account, policy_name)
        steps.append(Step(SYSTEM, CREATE, "iam-attachment", f"{role.name}/{policy_name}", f"attach policy {policy_name} to role {role.name}",
                          run=lambda arn=arn: gw.call("iam", "attach_role_policy", RoleName=name, PolicyArn=arn)))
    if live is not None:  # the role's whole permission set: nothing but what setup attaches (issue 22, item 8)
        steps += permission_set.extra_policy_steps(ctx, gw, account, role, live_attached, _decode, live_name=name)
    if not steps:
        steps.append(_step(UNCHANGED, role, f"role {role.name} is up to date"))
    return steps


def _attached_policies(gw: AwsGateway, role: str) -> list[dict]:
    return _iam_list(gw, "list_attached_role_policies", "AttachedPolicies", RoleName=role)


def _plan_profile(ctx, gw: AwsGateway, profile: InstanceProfile, live: dict | None, draft: Draft) -> list[Step]:
    add_role = lambda: gw.call("iam", "add_role_to_instance_profile",  # noqa: E731
                               InstanceProfileName=profile.name, RoleName=profile.role)
    install = draft.key.install
    if live is None:
        draft.intend("profile", profile.name, None)
        return [
            _step(CREATE, profile, f"create instance profile {profile.name}", run=lambda: _created_id(draft, profile, "profile", gw.call(
                "iam", "create_instance_profile", InstanceProfileName=profile.name, Tags=resource_tags(profile, install)))),
            _step(CREATE, profile, f"put role {profile.role} in instance profile {profile.name}", run=add_role),
        ]
    steps: list[Step] = []
    info = live["InstanceProfile"]
    tag = lambda: gw.call("iam", "tag_instance_profile", InstanceProfileName=profile.name, Tags=resource_tags(profile, install))  # noqa: E731
    owned, conflict = _ownership_steps(ctx, draft, profile, info, tag)
    steps += owned
    if conflict:
        return steps
    if has_old_record(info.get("Tags")):
        steps.append(_step(LEFT_ALONE, profile, f"ignore the unsigned record in the tags of instance profile {profile.name}",
                           "written by rbacbridge before the signed record (or by anyone allowed to tag it): "
                           "never trusted; teardown only quotes it"))
    roles = [r["RoleName"] for r in info.get("Roles", [])]
    for other in roles:
        if iam_key(other) != iam_key(profile.role):  # a profile holds one role
            steps.append(_step(UPDATE, profile, f"take role {other} out of instance profile {profile.name}",
                               f"the profile must hold {profile.role}", lambda other=other: gw.call(
                                   "iam", "remove_role_from_instance_profile",
                                   InstanceProfileName=profile.name, RoleName=other)))
    if iam_key(profile.role) not in {iam_key(r) for r in roles}:
        steps.append(_step(UPDATE, profile, f"put role {profile.role} in instance profile {profile.name}", run=add_role))
    return steps or [_step(UNCHANGED, profile, f"instance profile {profile.name} holds role {profile.role}")]


def _live_profile(gw: AwsGateway, name: str) -> dict | None:
    return gw.get_or_none("iam", "get_instance_profile", ("NoSuchEntity",), InstanceProfileName=name)
