"""`rbacbridge permissions`: the operator's least-privilege IAM policy, for what rbacbridge itself
calls (plan, setup, teardown, verify). The document is data (`templates/operator-policy.json.j2`,
whose header says which command needs which statement); this module only fills in the ARNs from
the configuration: rbacbridge's policies, roles and instance profile in the account, and the worker
instances (the configured ids, else every instance of the account in the region).
"""

from __future__ import annotations

from typing import Any

from rbacbridge.config import Config
from rbacbridge.errors import UsageError
from rbacbridge.templating import render_json

TEMPLATE = "operator-policy.json.j2"


def _role_name(text: str) -> str:
    """A role given as a name or an ARN (`--restore-role`)."""
    name = text.rsplit("/", 1)[-1] if text.startswith("arn:") else text
    from rbacbridge.config import role_name

    return role_name("--restore-role", name)


def operator_policy(config: Config, account: str, restore_roles: tuple[str, ...] = (), migrate: bool = False,
                    pod_roles: tuple[str, ...] = ()) -> dict[str, Any]:
    """The policy document; `restore_roles`: roles of instance profiles the nodes had before setup,
    which teardown gives back (that passes their role to EC2 too). `migrate`: also what `migrate` needs
    (templates/operator-policy-migrate.json.j2) on the tenants' roles and `pod_roles`."""
    if not account:
        raise UsageError("permissions needs --account-id (or account_id in the config): the policy names the account's ARNs")
    partition = config.partition
    iam = f"arn:{partition.name}:iam::{account}"
    # The dedicated default role is listed even when kube2iam.default_role no longer uses it: teardown
    # still removes the one an earlier setup made (aws.desired_resources(teardown=True)).
    # Every tenant's role rbacbridge creates; an existing tenant role is only read (verify's diagnostics).
    tenant_roles = [t.role for t in config.tenants if t.managed]
    managed_roles = list(dict.fromkeys([config.node_role, *tenant_roles, config.pod_default_role]))
    read_roles = list(dict.fromkeys(managed_roles + [config.effective_default_role]))
    existing = list(dict.fromkeys(t.existing_role_arn for t in config.tenants if t.existing_role_arn))
    instances = config.instance_ids or ("*",)
    from rbacbridge.verify.expected import buckets_of
    from rbacbridge.config import grant_bucket

    buckets = list(dict.fromkeys(grant_bucket(location) for location in buckets_of(config)))
    policy = render_json(
        TEMPLATE,
        policy_arns=[config.policy_arn(account, name) for name in
                     dict.fromkeys((config.node_policy, config.kube2iam_policy, *(t.policy for t in config.tenants if t.policy)))],
        managed_role_arns=[config.role_arn(account, name) for name in managed_roles],
        read_role_arns=list(dict.fromkeys([config.role_arn(account, name) for name in read_roles] + existing)),
        explain_arns=list(dict.fromkeys([config.role_arn(account, name) for name in read_roles] + existing))
        + [f"arn:{partition.name}:s3:::{bucket}" for bucket in buckets],
        instance_profile_arn=f"{iam}:instance-profile/{config.instance_profile}",
        any_instance_profile_arn=f"{iam}:instance-profile/*",
        pass_role_arns=[config.role_arn(account, name) for name in
                        dict.fromkeys([config.node_role] + [_role_name(r) for r in restore_roles])],
        instance_arns=[partition.arn("ec2", config.region, account, f"instance/{i}") for i in instances],
        passed_to_ec2=partition.passed_to_ec2,
    )
    policy["Statement"] += record_key_statements(config, account, migrate or bool(pod_roles))
    if migrate or pod_roles:
        roles = [t.existing_role_arn or config.role_arn(account, t.role) for t in config.tenants]
        roles += [r if r.startswith("arn:") else config.role_arn(account, _role_name(r)) for r in pod_roles]
        policy["Statement"] += render_json("operator-policy-migrate.json.j2", pod_role_arns=list(dict.fromkeys(roles)),
                                           any_provider_arn=f"{iam}:oidc-provider/*",
                                           eks_arns=[partition.arn("eks", config.region, account, f"{kind}/*")
                                                     for kind in ("cluster", "addon", "podidentityassociation")])
    return policy


def record_key_statements(config: Config, account: str, migrate: bool = False) -> list[dict[str, Any]]:
    """The KMS statements: the key behind alias/rbacbridge/<install id>, or the pinned record.kms_key."""
    install = config.effective_install_id
    kms = f"arn:{config.partition.name}:kms:{config.region}:{account}"
    alias = f"alias/rbacbridge/{install}"
    pinned = config.record_kms_key
    key_arn, by_alias = f"{kms}:key/*", True
    if pinned is not None:
        if ":key/" in pinned:
            key_arn, by_alias = pinned, False
        elif pinned.startswith(("alias/", "arn:")):
            alias = "alias/" + pinned.split(":alias/", 1)[-1].removeprefix("alias/")
        else:  # a bare key id
            key_arn, by_alias = f"{kms}:key/{pinned}", False
    return render_json("operator-policy-kms.json.j2", creates_key=pinned is None, install_id=install, alias=alias,
                       alias_arn=f"{kms}:{alias}", any_key_arn=f"{kms}:key/*", key_arn=key_arn, by_alias=by_alias,
                       record_tags=[f"rbacbridge:record:{install}:*"] + ([f"rbacbridge:migration:{install}:*"] if migrate else []))
