"""Tenants and their grants: the `tenants:` list of rbacbridge.yaml, one entry at a time.

Checks across tenants (names, namespaces, roles that collide) are in `checks.check_tenants`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from rbacbridge.config.validators import bucket_name, k8s_name, policy_name, role_name
from rbacbridge.config.values import _fail, _is_null, _key, _kind, _piece, _text
from rbacbridge.errors import UsageError

if TYPE_CHECKING:
    from rbacbridge.config.model import Config

# `tenants:` is a list of mappings, not dotted settings: it is read by `tenants()` below. Without
# the key the article's single tenant is built from the legacy keys (iam.pod_role, iam.pod_policy,
# buckets.tenant, kubernetes.namespace), producing exactly the resources of earlier versions.

# For `rbacbridge config-reference`: (path, default, help), after SCHEMA.
TENANT_REFERENCE: tuple[tuple[str, str, str], ...] = (
    ("tenants", "(the article's one)", "list of tenants; without it: one tenant nginx-annotated from iam.pod_role, iam.pod_policy, buckets.tenant, kubernetes.namespace"),
    ("tenants[].name", "required", "tenant name (Kubernetes name rules), unique; in messages, tags rbacbridge:tenant, labels"),
    ("tenants[].namespaces", "required", "its namespaces (one or more); a namespace belongs to one tenant (allowed-roles is per namespace)"),
    ("tenants[].role", "required", "role NAME rbacbridge creates, or {existing: ARN}: a role rbacbridge only links, never changes"),
    ("tenants[].policy", "the role name", "name of the created role's S3 policy (only with read or write)"),
    ("tenants[].read", "-", "buckets (bucket or bucket/prefix/*) it may list and read"),
    ("tenants[].write", "-", "buckets (bucket or bucket/prefix/*) it may list, read, write and delete in"),
    ("tenants[].workloads", "-", "nginx Deployments setup creates in its first namespace, annotated with its role (for verify)"),
)
LEGACY_TENANT = "nginx-annotated"
LEGACY_KEYS = ("iam.pod_role", "iam.pod_policy", "buckets.tenant")
TENANT_KEYS = ("name", "namespaces", "role", "policy", "read", "write", "workloads")
_ROLE_ARN = re.compile(r"arn:aws[a-z-]*:iam::([0-9]{12}):role/(?:[A-Za-z0-9_+=,.@-]+/)*([A-Za-z0-9_+=,.@-]{1,64})")
_S3_KEY_PART = re.compile(r"[A-Za-z0-9!_.'()-]+")


@dataclass(frozen=True)
class Tenant:
    """One tenant: its namespaces, the role kube2iam hands its pods, what that role may do in S3."""

    name: str  # DNS label, unique among tenants; used in messages, tags, JSON keys
    namespaces: tuple[str, ...]  # >= 1; a namespace belongs to at most one tenant
    role: str  # IAM role name kube2iam hands this tenant's pods
    existing_role_arn: str | None = None  # `role: {existing: ARN}`: linked only, never created/changed/deleted
    policy: str | None = None  # policy of a created role (default: the role name); None: existing role or no grants
    read: tuple[str, ...] = ()  # "bucket" or "bucket/prefix/*"
    write: tuple[str, ...] = ()  # same forms; write includes read
    workloads: tuple[str, ...] = ()  # nginx Deployments setup creates in namespaces[0], annotated with the role
    legacy: bool = field(default=False, compare=False)  # built from the legacy keys (no `tenants:` in the file)

    @property
    def managed(self) -> bool:
        """rbacbridge creates, updates and deletes this tenant's role (and policy)."""
        return self.existing_role_arn is None

    @property
    def namespace(self) -> str:
        """Where the tenant's workloads run."""
        return self.namespaces[0]

    def role_arn(self, account: str, partition: str) -> str:
        return self.existing_role_arn or f"arn:{partition}:iam::{account}:role/{self.role}"


def bucket_grant(key: str, value: Any) -> str:
    """"bucket" or "bucket/prefix/*" (object keys under the prefix); "bucket/*" is the bucket."""
    text = _text(key, value)
    bucket, slash, rest = text.partition("/")
    bucket_name(key, _piece(value, bucket))
    if not slash or rest == "*":
        return bucket
    if not rest.endswith("/*") or not all(_S3_KEY_PART.fullmatch(p) for p in rest[:-2].split("/")):
        raise _fail(key, value, "expected a bucket name or bucket/prefix/* (prefix parts of letters, digits and !_.'()-)")
    return text


def grant_bucket(grant: str) -> str:
    return grant.split("/", 1)[0]


def grant_objects_arn(grant: str, partition: str) -> str:
    """The object ARN a grant covers: arn:PARTITION:s3:::bucket/* or arn:PARTITION:s3:::bucket/prefix/*."""
    return f"arn:{partition}:s3:::{grant}" if "/" in grant else f"arn:{partition}:s3:::{grant}/*"


def _tenant_list(key: str, value: Any, check: Callable[[str, Any], Any], minimum: int = 0) -> tuple:
    if _is_null(value):
        value = []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)):
        raise UsageError(f"invalid {key}: expected a list, not {_kind(value)}")
    items = tuple(check(key, item) for item in value)
    if len(items) < minimum:
        raise UsageError(f"invalid {key}: at least one entry")
    seen: set = set()
    for item in items:
        if item in seen:
            raise _fail(key, item, "listed twice")
        seen.add(item)
    return items


def _tenant_role(key: str, value: Any) -> tuple[str, str | None]:
    """`role: NAME` (rbacbridge's) or `role: {existing: ARN}` (linked only)."""
    if isinstance(value, dict):
        if set(map(str, value)) != {"existing"}:
            raise UsageError(f"invalid {key}: a mapping here is {{existing: ARN}} only, not {', '.join(map(_key, value))}")
        arn = _text(f"{key}.existing", value["existing"])
        match = _ROLE_ARN.fullmatch(arn)
        if not match:
            raise _fail(f"{key}.existing", arn, "an IAM role ARN looks like arn:aws:iam::111122223333:role/NAME")
        return match.group(2), arn
    return role_name(key, value), None


def tenant(index: int, raw: Any) -> Tenant:
    """One entry of `tenants:`, validated on its own (checks across tenants are in check_tenants)."""
    where = f"tenants[{index}]"
    if not isinstance(raw, dict):
        raise UsageError(f"invalid {where}: expected a mapping ({', '.join(TENANT_KEYS)}), not {_kind(raw)}")
    for key in raw:
        if str(key) not in TENANT_KEYS:
            raise UsageError(f"unknown setting {_key(f'{where}.{key}')} (a tenant has {', '.join(TENANT_KEYS)})")
    values = {str(k): v for k, v in raw.items() if not _is_null(v) or str(k) in ("read", "write", "workloads")}
    for required in ("name", "namespaces", "role"):
        if required not in values:
            raise UsageError(f"invalid {where}: {required} is required")
    name = k8s_name(f"{where}.name", values["name"])
    namespaces = _tenant_list(f"{where}.namespaces", values["namespaces"], k8s_name, minimum=1)
    role, existing = _tenant_role(f"{where}.role", values["role"])
    read = _tenant_list(f"{where}.read", values.get("read"), bucket_grant)
    write = _tenant_list(f"{where}.write", values.get("write"), bucket_grant)
    for grant in read:
        if grant in write:
            raise _fail(f"{where}.read", grant, "also under write, which includes read: list it once, under write")
    workloads = _tenant_list(f"{where}.workloads", values.get("workloads"), k8s_name)
    policy = None
    if "policy" in values:
        policy = policy_name(f"{where}.policy", values["policy"])
        if existing:
            raise _fail(f"{where}.policy", policy, "an existing role is never changed: rbacbridge attaches no policy to it")
        if not (read or write):
            raise _fail(f"{where}.policy", policy, "the tenant has no read or write grants, so there is no policy")
    elif not existing and (read or write):
        policy = role
    for label, text in ((f"{where}.role", role if not existing else ""), (f"{where}.policy", policy or "")):
        if "," in text:
            raise _fail(label, text, "rbacbridge records the names it creates in IAM tags, which cannot hold ','")
    return Tenant(name, namespaces, role, existing, policy, read, write, workloads)


def tenants(value: Any) -> tuple[Tenant, ...]:
    if _is_null(value):
        raise UsageError("invalid tenants: empty (write `tenants: []` for no tenants, or remove the key for the article's one)")
    if not isinstance(value, (list, tuple)):
        raise UsageError(f"invalid tenants: expected a list of tenants, not {_kind(value)}")
    return tuple(tenant(i, raw) for i, raw in enumerate(value))


def legacy_tenant(config: "Config") -> Tenant:
    """The article's one tenant, from iam.pod_role / iam.pod_policy / buckets / kubernetes.namespace."""
    return Tenant(LEGACY_TENANT, (config.namespace,), config.pod_role, None, config.pod_policy,
                  (config.shared_bucket,), (config.tenant_bucket,), (LEGACY_TENANT,), legacy=True)
