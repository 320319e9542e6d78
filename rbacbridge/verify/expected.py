"""The expected matrix: which role each principal should get and what that role may do, from the
configuration and policy evaluation only (never from the live state being checked).

Principals come from the tenants: the host node, the default-role pod (nginx-vanilla, unannotated, in
kubernetes.namespace) and every tenant's workloads (in the tenant's first namespace, annotated with its
role). Locations are buckets.shared and every tenant's read and write grants ("bucket" or
"bucket/prefix/*"): every principal is checked against every location, so a tenant's pods meet every
other tenant's grants (the cross-tenant cells). After kube2iam, pods also get a chain cell per role
(can it sts:AssumeRole that role itself?) and tenant pods an annotation cell per other tenant's role
(would kube2iam hand it that role if it asked?). Both must say no.
"""

from __future__ import annotations

import re
import uuid
from collections import Counter

from rbacbridge import policy_eval as pe
from rbacbridge.config import Config, grant_bucket
from rbacbridge.errors import UsageError
from rbacbridge.verify.model import (ALLOWED_ROLES_ANNOTATION, CHAIN_SESSION, HOST, PROBE_PREFIX, READ, ROLE_ANNOTATION,
                                     STAGES, VANILLA, WRITE, Documents, Expected, Principal)


def configured_principals(config: Config, tenant: str | None = None) -> list[Principal]:
    """Who verify checks, as setup deploys them: the host, the default-role pod, each tenant's workloads.
    `tenant`: that tenant's workloads only (an unknown name is a UsageError)."""
    from rbacbridge.kube import role_reference

    chosen = (config.tenant(tenant),) if tenant is not None else config.tenants
    uses = Counter([VANILLA] + [w for t in config.tenants for w in t.workloads])
    out = [] if tenant is not None else [Principal(HOST, "host"),
                                         Principal(VANILLA, "pod", namespace=config.namespace, workload=VANILLA)]
    for item in chosen:
        for workload in item.workloads:
            name = workload if uses[workload] == 1 else f"{item.namespace}/{workload}"  # unique among principals
            out.append(Principal(name, "pod", namespace=item.namespace, role_annotation=role_reference(item),
                                 tenant=item.name, workload=workload))
    return out


default_principals = configured_principals  # the name earlier versions used

PROBE_POD_NAME = "probe-pod"  # principal names: probe-pod:<tenant>, probe-pod:default-role (then @node on several nodes)


def probe_principal(config: Config, tenant: str | None, node: str | None = None) -> Principal:
    """The principal of a probe pod for `tenant` (None: kube2iam's default role): in the tenant's first
    namespace, annotated as setup annotates the tenant's workloads (the default role: unannotated, in
    kubernetes.namespace). It stands in for a tenant with no running pod (issue 28)."""
    from rbacbridge.kube import role_reference

    if tenant is None:
        return Principal(f"{PROBE_POD_NAME}:default-role", "pod", namespace=config.namespace, node=node,
                         workload=PROBE_POD_NAME, probe_pod=True)
    item = config.tenant(tenant)
    return Principal(f"{PROBE_POD_NAME}:{item.name}", "pod", namespace=item.namespaces[0], role_annotation=role_reference(item),
                     tenant=item.name, node=node, workload=PROBE_POD_NAME, probe_pod=True)


def with_probe_pods(config: Config, principals: list[Principal], tenant: str | None = None) -> list[Principal]:
    """`principals` plus a probe pod for every tenant of the run that has no pod among them (the sandbox:
    a tenant without workloads is checked from a probe pod, as the live verify does)."""
    chosen = (config.tenant(tenant),) if tenant is not None else config.tenants
    has = {p.tenant for p in principals if p.kind == "pod"}
    return principals + [probe_principal(config, t.name) for t in chosen if t.name not in has]


def managed_documents(config: Config, account: str) -> Documents:
    """The documents setup wants: trust and attached policies of every role the AWS part creates
    (`rbacbridge.aws.desired_resources`, the same models `plan` and `setup` use)."""
    from rbacbridge import aws

    resources = aws.desired_resources(config, account, [])
    policies = {r.name: r.document for r in resources if isinstance(r, aws.ManagedPolicy)}
    docs = Documents()
    for role in (r for r in resources if isinstance(r, aws.Role)):
        docs.trust[role.name] = role.trust
        docs.policies[role.name] = [policies[name] for name in role.policies if name in policies]
    return docs


def intended_allowed_roles(config: Config) -> dict[str, list[str]]:
    """What setup grants per namespace under namespace restrictions: each tenant's namespaces, its role."""
    from rbacbridge.kube import role_reference

    return {ns: [role_reference(t)] for t in config.tenants for ns in t.namespaces}


def _role_name(value: str) -> str:
    return pe.role_name_of(value) or value.rsplit("/", 1)[-1]


def role_arns(config: Config, account: str) -> dict[str, str]:
    """Role name -> ARN for every role verify names: the tenants' (an existing role keeps its own ARN),
    the default role and the node role."""
    out = {t.role: config.tenant_role_arn(t, account) for t in config.tenants}
    for role in (config.effective_default_role, config.node_role):
        out.setdefault(role, config.role_arn(account, role))
    return out


def role_owners(config: Config) -> dict[str, str]:
    """Role name -> the tenant it serves."""
    return {t.role: t.name for t in config.tenants}


def role_allowed_in_namespace(role: str, account: str, patterns: list[str] | None, arn: str | None = None,
                              partition: str = "aws") -> bool:
    """kube2iam's glob namespace restriction: role name or ARN matched against the annotation's list."""
    if patterns is None:
        return False
    arn = arn or f"arn:{partition}:iam::{account}:role/{role}"
    return any(pe.wildcard_match(p, role) or pe.wildcard_match(p, arn) for p in patterns)


def buckets_of(config: Config) -> list[str]:
    """The locations every principal is checked against: buckets.shared, then each tenant's read and
    write grants in configuration order ("bucket" or "bucket/prefix/*"), each once."""
    return list(dict.fromkeys([config.shared_bucket] + [g for t in config.tenants for g in t.read + t.write]))


def location_owners(config: Config) -> dict[str, tuple[str, ...]]:
    """Location -> the tenants granted it. buckets.shared has none: the node role and the default role read
    it too, so it is everyone's, whichever tenants also list it."""
    out: dict[str, tuple[str, ...]] = {}
    for item in config.tenants:
        for grant in item.read + item.write:
            out[grant] = tuple(dict.fromkeys(out.get(grant, ()) + (item.name,)))
    out.pop(config.shared_bucket, None)
    return out


def location_prefix(location: str) -> str:
    """The key prefix a location covers: "" for a bucket, "prefix/" for bucket/prefix/*."""
    rest = location.partition("/")[2]
    return rest[:-1] if rest.endswith("*") else rest


def probe_key(principal: str, location: str = "") -> str:
    """A fresh object key for one write probe, under the location's prefix."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "-", principal)  # e.g. nginx-vanilla@node-a: '@' is signed differently by some S3s
    return f"{location_prefix(location)}{PROBE_PREFIX}{safe}-{uuid.uuid4().hex[:12]}"


def kube2iam_hands(config: Config, account: str, namespace: str | None, role: str, arn: str,
                   allowed_roles: dict[str, list[str]] | None, documents: Documents) -> tuple[bool | None, str]:
    """Would kube2iam hand a pod in `namespace` annotated with `role` that role? From the configuration:
    namespace restrictions (the allowed-roles setup writes, or `allowed_roles`), then the node role's side
    (the role must trust it, its policies must allow sts:AssumeRole on the role). None: cannot tell."""
    if config.namespace_restrictions:
        patterns = (allowed_roles if allowed_roles is not None else intended_allowed_roles(config)).get(namespace or "")
        if not role_allowed_in_namespace(role, account, patterns, arn):
            return False, f"namespace {namespace} does not allow role {role} ({ALLOWED_ROLES_ANNOTATION})"
    node_arn = config.role_arn(account, config.node_role)
    trust = documents.trust.get(role)
    if trust is not None and not pe.trust_allows(trust, node_arn):
        return False, f"role {role} does not trust the node role {node_arn}"
    node_policies = documents.policies.get(config.node_role)
    if node_policies is not None and not pe.is_allowed(node_policies, "sts:AssumeRole", arn):
        return False, f"the node role's policies do not allow sts:AssumeRole on {role}"
    if trust is None:
        return None, f"role {role} is not rbacbridge's: its trust policy is not known"
    restricted = "" if config.namespace_restrictions else " (kube2iam.namespace_restrictions is off: any namespace may ask)"
    return True, f"annotated {ROLE_ANNOTATION}: {role}{restricted}"


def expected_role(config: Config, account: str, stage: str, principal: Principal,
                  allowed_roles: dict[str, list[str]] | None, documents: Documents) -> tuple[str | None, str]:
    node = config.node_role
    if stage == "before":
        return node, "before kube2iam every principal has the node role (instance profile)"
    if principal.kind == "host":
        return node, "the host node uses its instance profile; kube2iam never intercepts host traffic"
    if principal.host_network:
        return node, "a hostNetwork pod shares the node's network: kube2iam never intercepts it"
    if not principal.role_annotation:
        return config.effective_default_role, "no role annotation: kube2iam's default role"
    role = _role_name(principal.role_annotation)
    if role == config.effective_default_role:
        return role, "annotated with kube2iam's default role"
    arn = principal.role_annotation if principal.role_annotation.startswith("arn:") else config.role_arn(account, role)
    handed, why = kube2iam_hands(config, account, principal.namespace, role, arn, allowed_roles, documents)
    return (None if handed is False else role), why


def chain_targets(config: Config) -> list[str]:
    """The roles a chain cell asks about: every tenant's role, kube2iam's default role, the node role."""
    return list(dict.fromkeys([t.role for t in config.tenants] + [config.effective_default_role, config.node_role]))


def chain_prediction(config: Config, account: str, held: str | None, target: str, documents: Documents) -> bool | None:
    """Would a session of role `held` be allowed to assume `target` under these documents?

    Both sides, as AWS decides: the caller's identity policies must allow sts:AssumeRole on the
    target, and the target's trust policy must trust the caller (a trusted role ARN covers its sessions).
    """
    if held is None:
        return False  # kube2iam refuses it: no credentials to call anything with
    policies, trust = documents.policies.get(held), documents.trust.get(target)
    if policies is None or trust is None:
        return None
    session = f"arn:{config.partition.name}:sts::{account}:assumed-role/{held}/{CHAIN_SESSION}"
    arn = role_arns(config, account).get(target) or config.role_arn(account, target)
    return pe.is_allowed(policies, "sts:AssumeRole", arn) and pe.trust_allows(trust, session)


def chain_path(principal: str, held: str | None, target: str) -> str:
    return f"{principal} → {held or '?'} → sts:AssumeRole → {target}"


def has_chain_cells(stage: str, principal: Principal) -> bool:
    """Every principal except the host, once kube2iam runs (before it, every pod has the node role by design)."""
    return stage == "after" and principal.kind != "host"


def annotation_targets(config: Config, principal: Principal, stage: str) -> list[str]:
    """Other tenants' roles a tenant's pod must not get by asking kube2iam for them (after kube2iam;
    a hostNetwork pod bypasses kube2iam altogether, which a finding reports)."""
    if stage != "after" or principal.kind != "pod" or principal.tenant is None or principal.host_network:
        return []
    own = next((t.role for t in config.tenants if t.name == principal.tenant), None)
    return [t.role for t in config.tenants if t.name != principal.tenant and t.role != own]


def expected_access(policies: list | None, location: str, principal: str, partition: str = "aws") -> dict[str, bool | None]:
    """read: s3:ListBucket on the bucket; write: s3:PutObject + s3:DeleteObject on a key under the location."""
    if policies is None:  # a role rbacbridge does not manage: no expectation
        return {READ: None, WRITE: None}
    bucket = grant_bucket(location)
    return {READ: pe.can_read(policies, bucket, partition),
            WRITE: pe.can_write(policies, bucket, probe_key(principal, location), partition)}


def expected_matrix(config: Config, account: str, stage: str = "after", principals: list[Principal] | None = None,
                    allowed_roles: dict[str, list[str]] | None = None, documents: Documents | None = None) -> list[Expected]:
    if stage not in STAGES:
        raise UsageError(f"invalid --stage {stage!r}: choose from {', '.join(STAGES)}")
    documents = documents or managed_documents(config, account)
    arns = role_arns(config, account)
    out = []
    for principal in principals if principals is not None else configured_principals(config):
        role, why = expected_role(config, account, stage, principal, allowed_roles, documents)
        policies = documents.policies.get(role) if role else []
        access = {(loc, op): allowed for loc in buckets_of(config)
                  for op, allowed in expected_access(policies, loc, principal.name, config.partition.name).items()}
        chains = {}
        if has_chain_cells(stage, principal):
            chains = {target: chain_prediction(config, account, role, target, documents) for target in chain_targets(config)}
        annotations = {target: kube2iam_hands(config, account, principal.namespace, target, arns[target], allowed_roles,
                                              documents)[0]
                       for target in annotation_targets(config, principal, stage)}
        out.append(Expected(principal, role, why, access, chains, annotations))
    return out
