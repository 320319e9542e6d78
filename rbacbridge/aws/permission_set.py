"""A managed role's whole permission set (issue 22, item 8).

A role rbacbridge manages (the node role, each tenant role it creates, the dedicated default role) holds
exactly the managed policies setup attaches to it and no inline policy. Anything else on it is drift:

- another managed policy attached to it (someone else's, or another tenant's, or an AWS managed one):
  planned as "detach policy P from role R". The policy itself is never changed or deleted: it may not be
  rbacbridge's, and whoever else holds it keeps it. Exception: the node role may also hold the policies
  the operator lists in `iam.node_role_extra_policies` (e.g. AmazonSSMManagedInstanceCore): never detached.
- an inline policy on it: planned as "delete inline policy P of role R" (an inline policy lives inside
  rbacbridge's own role, so removing it is the only way to take it off). Its document is kept in the
  step's details (`plan -o json`), so what was removed can be put back by hand.

The steps are ordinary plan steps: `plan` shows them (and `--exit-code` exits 4), setup applies them after
attaching what the role lacks, verify's drift check reports them (layer `permissions`). Reads: the
attached list setup already reads, plus one `iam:ListRolePolicies` per managed role (and one
`iam:GetRolePolicy` per inline policy found). See docs/ownership-drift.md.
"""

from __future__ import annotations

from typing import Any, Callable

from rbacbridge.aws.client import _iam_list
from rbacbridge.plan import DELETE, Step

SYSTEM = "aws"
ATTACHMENT_KIND = "iam-attachment"  # the kind setup's attach steps and teardown's detach steps use
INLINE_KIND = "iam-inline-policy"
EXTRA = "extra"  # details key marking a step of this module


def inline_policy_names(gw: Any, role: str) -> list[str]:
    return _iam_list(gw, "list_role_policies", "PolicyNames", RoleName=role)


def owners_of_policies(config: Any, account: str) -> dict[str, str]:
    """Policy ARN (lower case) -> whose it is in the configuration, for the plan's words."""
    owners = {config.policy_arn(account, config.node_policy): "the node role's read-only policy",
              config.policy_arn(account, config.kube2iam_policy): "kube2iam's node policy"}
    for tenant in config.tenants:
        if tenant.policy:
            owners[config.policy_arn(account, tenant.policy)] = f"tenant {tenant.name}'s policy"
    return {arn.lower(): who for arn, who in owners.items()}


def summary(document: Any, limit: int = 3) -> str:
    """`Allow s3:* on *; ...`: what an inline policy grants, in a few words."""
    statements = document.get("Statement", []) if isinstance(document, dict) else []
    statements = statements if isinstance(statements, list) else [statements]
    parts = []
    for statement in statements:
        if not isinstance(statement, dict):
            continue
        actions = statement.get("Action", statement.get("NotAction", []))
        resources = statement.get("Resource", statement.get("NotResource", []))
        actions = actions if isinstance(actions, list) else [actions]
        resources = resources if isinstance(resources, list) else [resources]
        negated = "NotAction " if "NotAction" in statement else ""
        parts.append(f"{statement.get('Effect', '?')} {negated}{','.join(map(str, actions[:3]))}"
                     f"{'…' if len(actions) > 3 else ''} on {','.join(map(str, resources[:2]))}{'…' if len(resources) > 2 else ''}")
    text = "; ".join(parts[:limit]) + (" …" if len(parts) > limit else "")
    return text or "no statement"


def extra_policy_steps(ctx: Any, gw: Any, account: str, role: Any, live_attached: list[dict],
                       decode: Callable[[Any], dict], live_name: str | None = None) -> list[Step]:
    """Steps that take off role `role` (an rbacbridge model with `.name`, `.policies`, `.tenant`) what setup
    does not give it. `live_attached`: the role's attached policies as IAM lists them (already read);
    `live_name`: the role's name as IAM spells it (IAM names ignore case), else `role.name`."""
    config = ctx.config
    iam_name = live_name or role.name
    wanted = {config.policy_arn(account, name).lower() for name in role.policies}
    allowed = {arn.lower() for arn in getattr(config, "node_role_extra_policies", ())} if role.name == config.node_role else set()
    owners = owners_of_policies(config, account)
    whose = f"tenant {role.tenant}'s role" if role.tenant else "rbacbridge's role"
    steps: list[Step] = []
    for policy in live_attached:
        arn = policy["PolicyArn"]
        if arn.lower() in wanted or arn.lower() in allowed:
            continue
        owner = owners.get(arn.lower())
        named = f" ({owner})" if owner else ""
        steps.append(Step(
            SYSTEM, DELETE, ATTACHMENT_KIND, f"{role.name}/{policy['PolicyName']}",
            f"detach policy {policy['PolicyName']}{named} from role {role.name}",
            f"{arn} is not a policy setup gives {whose}: extra permissions on a managed role are drift; "
            "the policy itself is left as it is (and stays attached wherever else it is)",
            lambda arn=arn: gw.call("iam", "detach_role_policy", RoleName=iam_name, PolicyArn=arn),
            {EXTRA: True, "policy_arn": arn, **({"tenant": role.tenant} if role.tenant else {})}))
    for name in inline_policy_names(gw, iam_name):
        document = decode(gw.call("iam", "get_role_policy", RoleName=iam_name, PolicyName=name)["PolicyDocument"])
        steps.append(Step(
            SYSTEM, DELETE, INLINE_KIND, f"{role.name}/{name}",
            f"delete inline policy {name} of role {role.name}",
            f"{whose} holds no inline policy; this one allows {summary(document)} (its document is in this step's "
            "details, `plan -o json`, to restore by hand if it was meant)",
            lambda name=name: gw.call("iam", "delete_role_policy", RoleName=iam_name, PolicyName=name),
            {EXTRA: True, "document": document, **({"tenant": role.tenant} if role.tenant else {})}))
    return steps


def without_repeats(steps: list[Step]) -> list[Step]:
    """An extra-policy detach that another step of the plan also makes (a removed or renamed tenant policy,
    detached by its removal) is left to that step: the same detach twice would fail the second time."""
    others = {(s.kind, s.name) for s in steps if s.action == DELETE and not s.details.get(EXTRA)}
    return [s for s in steps if not (s.details.get(EXTRA) and (s.kind, s.name) in others)]
