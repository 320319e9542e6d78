"""Deleting one role, policy or instance profile: what teardown (and the removal of a tenant) plans for it.

Only what is provably this install's (signed record) or `--force`; whatever is still attached elsewhere
stays, and says why (the record then keeps naming it, and the KMS key stays).
"""

from __future__ import annotations

from rbacbridge.aws.client import AwsGateway
from rbacbridge.aws.iam import _attached_policies
from rbacbridge.aws.ownership import _left_alone, claim
from rbacbridge.aws.record_store import Draft
from rbacbridge.aws.resources import SYSTEM, InstanceProfile, ManagedPolicy, Role, _step
from rbacbridge.config import iam_key
from rbacbridge.plan import DELETE, Step


def _plan_role_teardown(ctx, gw: AwsGateway, role: Role, draft: Draft, own_profiles: set[str], kept_profiles: set[str],
                        live: dict | None = None) -> list[Step]:
    name = draft.key.recorded_name("role", role.name)
    live = live or gw.get_or_none("iam", "get_role", ("NoSuchEntity",), RoleName=name)
    if live is None:
        return []
    found = claim(draft, "role", name, live["Role"])
    if not found.ours and not ctx.force:
        return [_left_alone(role, f"{found.why} (--force deletes it anyway)")]
    name = live["Role"]["RoleName"]
    profiles = gw.call("iam", "list_instance_profiles_for_role", RoleName=name)["InstanceProfiles"]
    kept = [p["InstanceProfileName"] for p in profiles if iam_key(p["InstanceProfileName"]) in kept_profiles]
    if kept:
        draft.kept.append(f"role {name}")
        return [_left_alone(role, f"still in instance profile {', '.join(kept)}, which stays (see above)")]
    steps = []
    for policy in _attached_policies(gw, name):
        steps.append(Step(SYSTEM, DELETE, "iam-attachment", f"{name}/{policy['PolicyName']}",
                          f"detach policy {policy['PolicyName']} from role {name}",
                          run=lambda arn=policy["PolicyArn"]: gw.call("iam", "detach_role_policy", RoleName=name, PolicyArn=arn)))
    for inline in gw.call("iam", "list_role_policies", RoleName=name)["PolicyNames"]:
        steps.append(_step(DELETE, role, f"delete inline policy {inline} of role {name}",
                           run=lambda inline=inline: gw.call("iam", "delete_role_policy", RoleName=name, PolicyName=inline)))
    for profile in profiles:
        if iam_key(profile["InstanceProfileName"]) in own_profiles:
            continue  # the profile's own teardown takes the role out
        steps.append(_step(DELETE, role, f"take role {name} out of instance profile {profile['InstanceProfileName']}",
                           run=lambda p=profile["InstanceProfileName"]: gw.call(
                               "iam", "remove_role_from_instance_profile", InstanceProfileName=p, RoleName=name)))
    steps.append(_step(DELETE, role, f"delete role {name}", "this install's (signed record)" if found.ours else "--force",
                       run=lambda: gw.call("iam", "delete_role", RoleName=name)))
    return steps


def _plan_policy_teardown(ctx, gw: AwsGateway, account: str, policy: ManagedPolicy, draft: Draft, roles_deleted: set[str],
                          detach_roles: set[str] = frozenset(), live: dict | None = None) -> list[Step]:
    """Delete the policy. `roles_deleted` detach it themselves (their steps come first); `detach_roles`
    are the install's roles that stay (a tenant's role keeps, its policy goes): detached here (iam_key names)."""
    name = draft.key.recorded_name("policy", policy.name)
    arn = ctx.config.policy_arn(account, name)
    live = live or gw.get_or_none("iam", "get_policy", ("NoSuchEntity",), PolicyArn=arn)
    if live is None:
        return []
    found = claim(draft, "policy", name, live["Policy"])
    if not found.ours and not ctx.force:
        return [_left_alone(policy, f"{found.why} (--force deletes it anyway)")]
    entities = gw.call("iam", "list_entities_for_policy", PolicyArn=arn)
    roles = [r["RoleName"] for r in entities["PolicyRoles"] if iam_key(r["RoleName"]) not in roles_deleted]
    others = [("role", r) for r in roles if iam_key(r) not in detach_roles]
    others += [("user", u["UserName"]) for u in entities["PolicyUsers"]]
    others += [("group", g["GroupName"]) for g in entities["PolicyGroups"]]
    steps: list[Step] = [
        Step(SYSTEM, DELETE, "iam-attachment", f"{r}/{name}", f"detach policy {name} from role {r}",
             run=lambda r=r: gw.call("iam", "detach_role_policy", RoleName=r, PolicyArn=arn))
        for r in roles if iam_key(r) in detach_roles]
    if others:
        names = ", ".join(f"{k} {n}" for k, n in others)
        if not ctx.force:
            draft.kept.append(f"policy {name}")
            return [_left_alone(policy, f"still attached to {names} (--force detaches and deletes)")]
        detach = {"role": ("detach_role_policy", "RoleName"), "user": ("detach_user_policy", "UserName"),
                  "group": ("detach_group_policy", "GroupName")}
        for kind, other in others:
            operation, key = detach[kind]
            steps.append(_step(DELETE, policy, f"detach policy {name} from {kind} {other}", "--force",
                               lambda op=operation, k=key, n=other: gw.call("iam", op, PolicyArn=arn, **{k: n})))
    for version in gw.call("iam", "list_policy_versions", PolicyArn=arn)["Versions"]:
        if not version["IsDefaultVersion"]:
            steps.append(_step(DELETE, policy, f"delete version {version['VersionId']} of policy {name}",
                               run=lambda v=version["VersionId"]: gw.call("iam", "delete_policy_version", PolicyArn=arn, VersionId=v)))
    steps.append(_step(DELETE, policy, f"delete policy {name}", "this install's (signed record)" if found.ours else "--force",
                       run=lambda: gw.call("iam", "delete_policy", PolicyArn=arn)))
    return steps


def _plan_profile_teardown(ctx, gw: AwsGateway, profile: InstanceProfile, live: dict | None, keep: str | None,
                           draft: Draft) -> list[Step]:
    if live is None:
        return []
    found = claim(draft, "profile", profile.name, live["InstanceProfile"])
    if not found.ours and not ctx.force:
        return [_left_alone(profile, f"{found.why} (--force deletes it anyway)")]
    if keep:
        draft.kept.append(f"instance profile {profile.name}")
        return [_left_alone(profile, keep)]
    name = live["InstanceProfile"]["InstanceProfileName"]
    steps = [_step(DELETE, profile, f"take role {r['RoleName']} out of instance profile {name}",
                   run=lambda r=r["RoleName"]: gw.call("iam", "remove_role_from_instance_profile",
                                                      InstanceProfileName=name, RoleName=r))
             for r in live["InstanceProfile"].get("Roles", [])]
    steps.append(_step(DELETE, profile, f"delete instance profile {name}",
                       run=lambda: gw.call("iam", "delete_instance_profile", InstanceProfileName=name)))
    return steps
