"""The expected matrix: which role each principal should get and what that role may do, from the
configuration and policy evaluation only (never from the live state being checked)."""

from __future__ import annotations

import re
import uuid

from rbacbridge import policy_eval as pe
from rbacbridge.config import Config
from rbacbridge.errors import UsageError
from rbacbridge.verify.model import (ALLOWED_ROLES_ANNOTATION, ANNOTATED, CHAIN_SESSION, HOST, PROBE_PREFIX, READ,
                                     ROLE_ANNOTATION, STAGES, VANILLA, WRITE, Documents, Expected, Principal)


def default_principals(config: Config) -> list[Principal]:
    """The article's three principals, as setup deploys them."""
    return [
        Principal(HOST, "host"),
        Principal(VANILLA, "pod", namespace=config.namespace),
        Principal(ANNOTATED, "pod", namespace=config.namespace, role_annotation=config.pod_role),
    ]



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
    """What setup grants per namespace under namespace restrictions: the pod role in config.namespace."""
    return {config.namespace: [config.pod_role]}



def _role_name(value: str) -> str:
    return pe.role_name_of(value) or value.rsplit("/", 1)[-1]


def role_allowed_in_namespace(role: str, account: str, patterns: list[str] | None) -> bool:
    """kube2iam's glob namespace restriction: role name or ARN matched against the annotation's list."""
    if patterns is None:
        return False
    arn = f"arn:aws:iam::{account}:role/{role}"
    return any(pe.wildcard_match(p, role) or pe.wildcard_match(p, arn) for p in patterns)


def probe_key(principal: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9._-]", "-", principal)  # e.g. nginx-vanilla@node-a: '@' is signed differently by some S3s
    return f"{PROBE_PREFIX}{safe}-{uuid.uuid4().hex[:12]}"


def buckets_of(config: Config) -> list[str]:
    return [config.shared_bucket, config.tenant_bucket]


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
    if config.namespace_restrictions:
        patterns = (allowed_roles if allowed_roles is not None else intended_allowed_roles(config)).get(principal.namespace or "")
        if not role_allowed_in_namespace(role, account, patterns):
            return None, f"namespace {principal.namespace} does not allow role {role} ({ALLOWED_ROLES_ANNOTATION})"
    node_arn = config.role_arn(account, node)
    trust = documents.trust.get(role)
    if trust is not None and not pe.trust_allows(trust, node_arn):
        return None, f"role {role} does not trust the node role {node_arn}"
    node_policies = documents.policies.get(node)
    if node_policies is not None and not pe.is_allowed(node_policies, "sts:AssumeRole", config.role_arn(account, role)):
        return None, f"the node role's policies do not allow sts:AssumeRole on {role}"
    return role, f"annotated {ROLE_ANNOTATION}: {role}"


def chain_targets(config: Config) -> list[str]:
    """The managed roles a chain cell asks about: the pod role, kube2iam's default role, the node role."""
    return list(dict.fromkeys([config.pod_role, config.effective_default_role, config.node_role]))


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
    session = f"arn:aws:sts::{account}:assumed-role/{held}/{CHAIN_SESSION}"
    return pe.is_allowed(policies, "sts:AssumeRole", config.role_arn(account, target)) and pe.trust_allows(trust, session)


def chain_path(principal: str, held: str | None, target: str) -> str:
    return f"{principal} → {held or '?'} → sts:AssumeRole → {target}"


def has_chain_cells(stage: str, principal: Principal) -> bool:
    """Every principal except the host, once kube2iam runs (before it, every pod has the node role by design)."""
    return stage == "after" and principal.kind != "host"


def expected_matrix(config: Config, account: str, stage: str = "after", principals: list[Principal] | None = None,
                    allowed_roles: dict[str, list[str]] | None = None, documents: Documents | None = None) -> list[Expected]:
    if stage not in STAGES:
        raise UsageError(f"invalid --stage {stage!r}: choose from {', '.join(STAGES)}")
    documents = documents or managed_documents(config, account)
    out = []
    for principal in principals or default_principals(config):
        role, why = expected_role(config, account, stage, principal, allowed_roles, documents)
        access: dict[tuple[str, str], bool | None] = {}
        policies = documents.policies.get(role) if role else []
        for bucket in buckets_of(config):
            if policies is None:  # a role rbacbridge does not manage: no expectation
                access[(bucket, READ)] = access[(bucket, WRITE)] = None
                continue
            access[(bucket, READ)] = pe.can_read(policies, bucket)
            access[(bucket, WRITE)] = pe.can_write(policies, bucket, probe_key(principal.name))
        chains = {}
        if has_chain_cells(stage, principal):
            chains = {target: chain_prediction(config, account, role, target, documents) for target in chain_targets(config)}
        out.append(Expected(principal, role, why, access, chains))
    return out

