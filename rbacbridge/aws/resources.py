"""The desired AWS resources as small models, built from the configuration (article steps 1-7).

`desired_resources` lists everything the part owns in the order it must be created; the planners
(`iam`, `associations`, `teardown`) compare each with live state and return steps (`_step`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from rbacbridge import MANAGED_BY_KEY, MANAGED_BY_VALUE
from rbacbridge.aws.record import INSTALL_TAG
from rbacbridge.config import Config, Tenant, grant_bucket, grant_objects_arn
from rbacbridge.plan import Step
from rbacbridge.templating import render_json

SYSTEM = "aws"
OWNED_TAG = {"Key": MANAGED_BY_KEY, "Value": MANAGED_BY_VALUE}
TENANT_TAG = "rbacbridge:tenant"  # on a tenant's role and policy: which tenant they serve


@dataclass(frozen=True)
class ManagedPolicy:
    name: str
    document: dict
    description: str
    tenant: str | None = None  # the tenant it serves (tagged rbacbridge:tenant=<name>)
    kind = "iam-policy"


@dataclass(frozen=True)
class Role:
    name: str
    trust: dict
    policies: tuple[str, ...]  # managed policy names to attach
    description: str
    trusts_itself: bool = False  # must be created first, then trust its own ARN
    tenant: str | None = None  # the tenant it serves (tagged rbacbridge:tenant=<name>)
    kind = "iam-role"


def resource_tags(resource: Any, install: str) -> list[dict[str, str]]:
    """The tags setup gives a resource: managed-by, the install, and the tenant of a tenant's role or
    policy. They say whose it is meant to be; they are never evidence that it is (the record is)."""
    tenant = getattr(resource, "tenant", None)
    return [OWNED_TAG, {"Key": INSTALL_TAG, "Value": install}] + ([{"Key": TENANT_TAG, "Value": tenant}] if tenant else [])


@dataclass(frozen=True)
class InstanceProfile:
    name: str
    role: str
    kind = "iam-instance-profile"


@dataclass(frozen=True)
class ProfileAssociation:
    instance_id: str
    profile: str
    kind = "profile-association"

    @property
    def name(self) -> str:
        return self.instance_id


def assumable_role_arns(config: Config, account: str) -> list[str]:
    """The roles kube2iam (the node role) may assume: every tenant's role (existing ones included) and
    the role unannotated pods get. The node role's own ARN only when that default is the node role
    (kube2iam.default_role node/auto)."""
    arns = {config.tenant_role_arn(t, account) for t in config.tenants} | {config.role_arn(account, config.effective_default_role)}
    return sorted(arns)


def tenant_policy_document(tenant: Tenant, partition: str) -> dict:
    """Least privilege for a tenant's grants: s3:ListBucket on each bucket, GetObject on bucket/* or the
    prefix, Put/DeleteObject on the write grants only. Order as configured (read first), no repeats."""
    grants = tenant.read + tenant.write
    return render_json("tenant-policy.json.j2",
                       bucket_arns=list(dict.fromkeys(f"arn:{partition}:s3:::{grant_bucket(g)}" for g in grants)),
                       read_arns=list(dict.fromkeys(grant_objects_arn(g, partition) for g in grants)),
                       write_arns=list(dict.fromkeys(grant_objects_arn(g, partition) for g in tenant.write)))


def tenant_resources(config: Config, account: str, tenant: Tenant) -> list[Any]:
    """A managed tenant's policy (when it has grants) and role, trusting the node role's exact ARN."""
    if not tenant.managed:
        return []
    node_role_arn = config.role_arn(account, config.node_role)
    if tenant.legacy:  # the descriptions earlier versions gave (IAM cannot change them in place)
        policy_text = "rbacbridge: pod role reads both buckets, writes the tenant bucket (step 4)"
        role_text = "rbacbridge: role kube2iam hands annotated pods (steps 4-5)"
    else:
        policy_text = f"rbacbridge: S3 access of tenant {tenant.name}"
        role_text = f"rbacbridge: role kube2iam hands the pods of tenant {tenant.name}"
    out: list[Any] = []
    if tenant.policy:
        out.append(ManagedPolicy(tenant.policy, tenant_policy_document(tenant, config.partition.name), policy_text, tenant.name))
    out.append(Role(tenant.role, render_json("pod-trust.json.j2", node_role_arn=node_role_arn),
                    (tenant.policy,) if tenant.policy else (), role_text, tenant=tenant.name))
    return out


def desired_resources(config: Config, account: str, instance_ids: list[str], teardown: bool = False) -> list[Any]:
    """Everything the AWS part owns, in the order it must be created.

    `teardown=True` also lists the dedicated default role when the configuration no longer uses it,
    so that a teardown after switching kube2iam.default_role still removes the role setup made
    (it is deleted only if it carries rbacbridge's tag)."""
    node_role_arn = config.role_arn(account, config.node_role)
    trusts_itself = config.default_is_node_role
    buckets = {"shared_bucket": config.shared_bucket}
    resources: list[Any] = [
        ManagedPolicy(config.node_policy, render_json("node-policy.json.j2", partition=config.partition.name, **buckets),
                      "rbacbridge: node role reads the shared bucket (kube2iam article step 1)"),
        ManagedPolicy(config.kube2iam_policy, render_json(
            "kube2iam-node-policy.json.j2", assumable_role_arns=assumable_role_arns(config, account)),
            "rbacbridge: kube2iam on the node may assume the pod roles"),
        Role(config.node_role,
             render_json("node-trust.json.j2", self_trust=trusts_itself, node_role_arn=node_role_arn,
                         ec2_principal=config.partition.ec2_principal),
             (config.node_policy, config.kube2iam_policy),
             "rbacbridge: Kubernetes worker node role (kube2iam article step 2)", trusts_itself),
        InstanceProfile(config.instance_profile, config.node_role),
    ]
    for tenant in config.tenants:
        resources += tenant_resources(config, account, tenant)
    if config.manages_default_role or teardown:
        # Unannotated pods get this role, not the node role: the article's read-only access without
        # the node role's sts:AssumeRole on the pod roles (no sts:* at all).
        resources.append(Role(config.pod_default_role, render_json("pod-trust.json.j2", node_role_arn=node_role_arn),
                              (config.node_policy,), "rbacbridge: role kube2iam hands unannotated pods (read-only S3, no sts)"))
    resources += [ProfileAssociation(i, config.instance_profile) for i in instance_ids]
    return resources


def _step(action: str, resource: Any, message: str, reason: str = "", run: Callable | None = None, **details) -> Step:
    return Step(SYSTEM, action, resource.kind, resource.name, message, reason, run, details)
