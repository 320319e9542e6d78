"""What the record names that the configuration no longer has: a removed or renamed tenant's role and
policy (setup), and on teardown every recorded role and policy the configured walk does not cover."""

from __future__ import annotations

from rbacbridge.aws.client import AwsGateway
from rbacbridge.aws.iam_teardown import _plan_policy_teardown, _plan_role_teardown
from rbacbridge.aws.ownership import _left_alone
from rbacbridge.aws.record_store import Draft
from rbacbridge.aws.resources import ManagedPolicy, Role
from rbacbridge.config import Config, iam_key
from rbacbridge.plan import DELETE, Step


def _label(owned_tenant: str, config: Config, teardown: bool) -> str:
    if not owned_tenant:
        return "teardown" if teardown else "no longer in the config"
    gone = teardown or all(t.name != owned_tenant for t in config.tenants)
    return f"tenant {owned_tenant} ({'teardown' if teardown else 'no longer in the config' if gone else 'renamed resource'})"


def _plan_removed(ctx, gw: AwsGateway, account: str, draft: Draft, keep_roles: set[str], keep_policies: set[str],
                  teardown: bool, own_profiles: set[str] = frozenset(), kept_profiles: set[str] = frozenset()) -> list[Step]:
    """Delete what the record names that the configuration no longer has: a removed (or renamed) tenant's
    role and policy on setup; on teardown every recorded role and policy the configured walk does not
    cover. Only by unique id: a same-named resource with another id is not the recorded one."""
    record = draft.key.record
    if record is None:
        return []
    steps: list[Step] = []
    deleted_roles: set[str] = set()
    for unique_id, owned in sorted(record.owned["role"].items(), key=lambda item: item[1].name):
        if iam_key(owned.name) in keep_roles or not (teardown or owned.tenant):
            continue
        live = gw.get_or_none("iam", "get_role", ("NoSuchEntity",), RoleName=owned.name)
        label = _label(owned.tenant, ctx.config, teardown)
        if live is None or live["Role"]["RoleId"] != unique_id:
            draft.removed.append(("role", unique_id))
            if live is not None:
                steps.append(_named(_left_alone(Role(owned.name, {}, (), ""), f"the recorded role (id {unique_id}) is gone; "
                                                f"this one (id {live['Role']['RoleId']}) is another"), label))
            continue
        part = _plan_role_teardown(ctx, gw, Role(owned.name, {}, (), "", tenant=owned.tenant or None), draft, own_profiles,
                                   kept_profiles, live)
        if part and part[-1].action == DELETE:
            deleted_roles.add(iam_key(owned.name))
            draft.removed.append(("role", unique_id))
        steps += [_named(s, label) for s in part]
    kept_roles = {iam_key(o.name) for o in record.owned["role"].values() if iam_key(o.name) in keep_roles}
    for unique_id, owned in sorted(record.owned["policy"].items(), key=lambda item: item[1].name):
        if iam_key(owned.name) in keep_policies or not (teardown or owned.tenant):
            continue
        live = gw.get_or_none("iam", "get_policy", ("NoSuchEntity",), PolicyArn=ctx.config.policy_arn(account, owned.name))
        label = _label(owned.tenant, ctx.config, teardown)
        if live is None or live["Policy"]["PolicyId"] != unique_id:
            draft.removed.append(("policy", unique_id))
            if live is not None:
                steps.append(_named(_left_alone(ManagedPolicy(owned.name, {}, ""), f"the recorded policy (id {unique_id}) is "
                                                f"gone; this one (id {live['Policy']['PolicyId']}) is another"), label))
            continue
        part = _plan_policy_teardown(ctx, gw, account, ManagedPolicy(owned.name, {}, "", owned.tenant or None), draft,
                                     deleted_roles, detach_roles=kept_roles, live=live)
        if part and part[-1].action == DELETE:
            draft.removed.append(("policy", unique_id))
        steps += [_named(s, label) for s in part]
    return steps


def _named(step: Step, label: str) -> Step:
    step.message = f"{label}: {step.message}"
    if label.startswith("tenant "):
        step.details = {**step.details, "tenant": label.split(" ")[1]}
    return step
