"""What no single setting shows: roles, policies, buckets, namespaces and workloads that collide.

Run on every Config built (`Config.check_consistency`), from the file and after the flags.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from rbacbridge.config.validators import AUTO, NODE, iam_key
from rbacbridge.config.values import _fail, _quote
from rbacbridge.errors import UsageError

if TYPE_CHECKING:
    from rbacbridge.config.model import Config


def check_config(config: Config) -> None:
    """The settings together: roles, policies and buckets that must differ, then the tenants."""
    # IAM names are compared as IAM does (not distinguished by case): Client-C-S3 is client-c-s3.
    if config.legacy_tenants:
        _check_legacy(config)
        return
    if iam_key(config.pod_default_role) == iam_key(config.node_role):
        raise UsageError(f"invalid iam.default_role {_quote(config.pod_default_role)}: the pods' default role must differ "
                         "from the node role (kube2iam.default_role: node hands pods the node role; IAM names ignore case)")
    if iam_key(config.node_policy) == iam_key(config.kube2iam_policy):
        raise UsageError("invalid iam policies: node_policy and kube2iam_policy must differ (IAM names ignore case)")
    check_tenants(config)


def _check_legacy(config: Config) -> None:
    node, pod = iam_key(config.node_role), iam_key(config.pod_role)
    if node == pod:
        raise UsageError(f"invalid iam.pod_role {_quote(config.pod_role)}: the pod role must differ from the node role "
                         "(IAM names ignore case)")
    if iam_key(config.pod_default_role) in (node, pod):
        raise UsageError(f"invalid iam.default_role {_quote(config.pod_default_role)}: the pods' default role must differ "
                         "from the node role and the pod role (kube2iam.default_role: node hands pods the node role; "
                         "IAM names ignore case)")
    if iam_key(config.default_role) == pod:
        raise UsageError(f"invalid kube2iam.default_role {_quote(config.default_role)}: every unannotated pod would get "
                         "the pod role; use dedicated (iam.default_role) or another role")
    if config.shared_bucket == config.tenant_bucket:
        raise UsageError("invalid buckets: buckets.shared and buckets.tenant must differ")
    names = [iam_key(n) for n in (config.node_policy, config.kube2iam_policy, config.pod_policy)]
    if len(set(names)) != len(names):
        raise UsageError("invalid iam policies: node_policy, kube2iam_policy and pod_policy must differ (IAM names ignore case)")


def check_tenants(config: Config) -> None:
    """What no single tenant entry shows: names, namespaces, roles, policies and workloads that collide."""
    names: dict[str, int] = {}
    namespaces: dict[str, str] = {}
    roles: dict[str, str] = {}
    policies: dict[str, str] = {}
    workloads: dict[tuple[str, str], str] = {("nginx-vanilla", config.namespace): "rbacbridge's nginx-vanilla"}
    # Keyed by iam_key: IAM does not distinguish names by case (NetTech-Pod-Default is nettech-pod-default).
    reserved_roles = {iam_key(config.node_role): "the node role (iam.node_role)"}
    if config.manages_default_role:
        reserved_roles[iam_key(config.pod_default_role)] = "the pods' default role (iam.default_role)"
    elif config.default_role not in (NODE, AUTO):
        reserved_roles[iam_key(config.default_role)] = "the role unannotated pods get (kube2iam.default_role)"
    reserved_policies = {iam_key(config.node_policy): "iam.node_policy", iam_key(config.kube2iam_policy): "iam.kube2iam_policy"}
    for index, item in enumerate(config.tenants):
        where = f"tenants[{index}]"
        if item.name in names:
            raise _fail(f"{where}.name", item.name, f"tenants[{names[item.name]}] has the same name (names are unique)")
        names[item.name] = index
        for namespace in item.namespaces:
            if namespace in namespaces:
                raise _fail(f"{where}.namespaces", namespace, f"already a namespace of tenant {namespaces[namespace]}: kube2iam's "
                            "iam.amazonaws.com/allowed-roles is per namespace, so two tenants there could take each other's roles")
            namespaces[namespace] = item.name
        same_account = item.existing_role_arn is None or config.account_id in (None, item.existing_role_arn.split(":")[4])
        role = iam_key(item.role)
        if same_account and role in reserved_roles:
            raise _fail(f"{where}.role", item.existing_role_arn or item.role,
                        f"that is {reserved_roles[role]} (IAM names ignore case); a tenant needs a role of its own")
        if role in roles:
            raise _fail(f"{where}.role", item.role, f"already the role of tenant {roles[role]} (a role serves one tenant; "
                        "IAM names ignore case)")
        roles[role] = item.name
        if item.policy is not None:
            policy = iam_key(item.policy)
            if policy in reserved_policies:
                raise _fail(f"{where}.policy", item.policy, f"that is {reserved_policies[policy]} (IAM names ignore case)")
            if policy in policies:
                raise _fail(f"{where}.policy", item.policy, f"already the policy of tenant {policies[policy]} (IAM names ignore case)")
            policies[policy] = item.name
        for workload in item.workloads:
            key = (workload, item.namespace)
            if key in workloads:
                raise _fail(f"{where}.workloads", workload, f"{workloads[key]} has that name in namespace {item.namespace}")
            workloads[key] = f"tenant {item.name}"
