"""The Config: every setting's value (defaults are the article's), and what follows from them."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from rbacbridge.config.checks import check_config
from rbacbridge.config.schema import _BY_FIELD
from rbacbridge.config.tenancy import LEGACY_KEYS, Tenant, legacy_tenant
from rbacbridge.config.validators import AUTO, DEDICATED, NODE, derived_install_id
from rbacbridge.errors import UsageError, shown

if TYPE_CHECKING:
    from rbacbridge.config.partitions import Partition


@dataclass(frozen=True)
class Config:
    account_id: str | None = None
    region: str = "us-east-1"
    profile: str | None = None
    endpoint_url: str | None = None
    node_policy: str = "nettech-s3-read-only"
    node_role: str = "nettech-s3-read-only"
    instance_profile: str = "nettech-instance-profile"
    node_role_extra_policies: tuple[str, ...] = ()
    kube2iam_policy: str = "nettech-kube2iam-node"
    pod_policy: str = "nettech-s3-read-write"
    pod_role: str = "nettech-s3-read-write"
    pod_default_role: str = "nettech-pod-default"
    shared_bucket: str = "nettech-helm-test"
    tenant_bucket: str = "lanre.k8s.dev"
    instance_ids: tuple[str, ...] = ()
    kubeconfig: str | None = None
    context: str | None = None
    namespace: str = "default"
    nginx_image: str = "nginx:1.27"
    rollout_timeout: float = 300.0
    node_selector: str | None = None
    kube2iam_namespace: str = "kube-system"
    kube2iam_image: str = "jtblin/kube2iam:0.13.0"
    kube2iam_port: int = 8282
    host_interface: str = "auto"
    default_role: str = DEDICATED
    namespace_restrictions: bool = True
    kube2iam_tolerations: tuple[dict[str, Any], ...] = ({"operator": "Exists"},)
    kube2iam_debug: bool = False
    node_hosts: tuple[str, ...] = ()
    ssh_user: str | None = None
    ssh_key: str | None = None
    ssh_port: int | None = None
    known_hosts: str | None = None
    ssh_config: str | None = None
    accept_new_host_keys: bool = False
    host_ip: str | None = None
    add_missing: bool = False
    node_stale_ports: tuple[int, ...] = ()
    ssh_connect_timeout: float = 10.0
    ssh_command_timeout: float = 60.0
    node_parallelism: int = 64
    node_via: str = "auto"
    node_pod_image: str | None = None
    node_pod_namespace: str | None = None
    probe_image: str = "amazon/aws-cli:2.22.0"
    install_id: str | None = None  # None: derived from instance_profile (see effective_install_id)
    record_kms_key: str | None = None  # None: setup creates the key behind alias/rbacbridge/<install id>
    # None: no `tenants:` in the file, the article's one tenant from the legacy keys (recomputed on
    # every replace(), so --namespace and friends reach it).
    tenants: tuple[Tenant, ...] | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False)
    # Fields set by the config file or a flag (not defaults): the region falls back to the
    # environment and the AWS profile only when it is not set here.
    explicit: frozenset = field(default=frozenset(), compare=False)

    def __post_init__(self) -> None:
        if self.tenants is None or (len(self.tenants) == 1 and self.tenants[0].legacy):
            object.__setattr__(self, "tenants", (legacy_tenant(self),))
        else:
            object.__setattr__(self, "tenants", tuple(self.tenants))

    @property
    def legacy_tenants(self) -> bool:
        """No `tenants:` in the file: the one tenant comes from iam.pod_role, iam.pod_policy, buckets.tenant."""
        return len(self.tenants) == 1 and self.tenants[0].legacy

    def tenant(self, name: str) -> Tenant:
        for candidate in self.tenants:
            if candidate.name == name:
                return candidate
        known = ", ".join(t.name for t in self.tenants) or "none"
        raise UsageError(f"unknown tenant {shown(name)} (tenants: {known})")

    def tenant_of_namespace(self, namespace: str) -> Tenant | None:
        for candidate in self.tenants:
            if namespace in candidate.namespaces:
                return candidate
        return None

    @property
    def effective_install_id(self) -> str:
        return self.install_id or derived_install_id(self.instance_profile)

    @property
    def effective_default_role(self) -> str:
        """The role name kube2iam hands unannotated pods (auto-discovery finds the node role)."""
        if self.default_role == DEDICATED:
            return self.pod_default_role
        if self.default_role in (NODE, AUTO):
            return self.node_role
        return self.default_role

    @property
    def default_is_node_role(self) -> bool:
        """Unannotated pods get the node role: it may assume the pod roles, so every pod can chain into them."""
        return self.effective_default_role == self.node_role

    @property
    def manages_default_role(self) -> bool:
        """Setup creates (and teardown removes) the dedicated default role iam.default_role."""
        return self.default_role == DEDICATED

    def default_role_warning(self) -> str | None:
        """The escalation path of handing pods the node role, in one line (None when pods do not get it)."""
        if not self.default_is_node_role:
            return None
        roles = ", ".join(t.role for t in self.tenants) or "no tenant role"
        return (f"kube2iam.default_role={self.default_role} hands every unannotated pod the node role {self.node_role}, "
                f"which may sts:AssumeRole {roles}: any pod can chain into it "
                f"(the default, kube2iam.default_role=dedicated, gives them {self.pod_default_role} instead)")

    @property
    def partition(self) -> "Partition":
        """The AWS partition of the region (botocore's data): aws, aws-cn, aws-us-gov, ..."""
        from rbacbridge.config.partitions import partition_for, warn_if_unknown

        warn_if_unknown("region", self.region)
        return partition_for(self.region)

    def role_arn(self, account: str, name: str) -> str:
        return self.partition.iam_arn(account, f"role/{name}")

    def policy_arn(self, account: str, name: str) -> str:
        return self.partition.iam_arn(account, f"policy/{name}")

    def tenant_role_arn(self, tenant: Tenant, account: str) -> str:
        return tenant.role_arn(account, self.partition.name)

    def with_overrides(self, flags: dict[str, str] | None = None, **values: Any) -> "Config":
        """`values` by Config field; `flags` names the option each came from (for messages)."""
        cleaned = {}
        for name, value in values.items():
            if value is None or value == ():
                continue
            option = _BY_FIELD[name]
            label = (flags or {}).get(name) or option.path
            cleaned[name] = option.check(label, value)
        if not self.legacy_tenants:
            for name in cleaned:
                if _BY_FIELD[name].path in LEGACY_KEYS:
                    label = (flags or {}).get(name) or _BY_FIELD[name].path
                    raise UsageError(f"{label} is a legacy setting and the config has tenants: set the tenant's role, "
                                     "policy or write in tenants: instead")
        config = replace(self, explicit=self.explicit | frozenset(cleaned), **cleaned)
        config.check_consistency()
        return config

    def check_consistency(self) -> None:
        """What no single setting shows (names that collide); `checks.check_config`."""
        check_config(self)
