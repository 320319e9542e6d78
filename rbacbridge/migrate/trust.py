"""The trust statements each target needs in a pod role, and the size IAM counts.

- IRSA (docs.aws.amazon.com/eks/latest/userguide/associate-service-account-role.html): the cluster's IAM OIDC
  provider as `Federated` principal, `sts:AssumeRoleWithWebIdentity`, `StringEquals` on `<issuer>:sub` =
  `system:serviceaccount:NS:SA` (a list when several ServiceAccounts use the role) and `<issuer>:aud` =
  `sts.amazonaws.com`. One statement per role.
- EKS Pod Identity (docs.aws.amazon.com/eks/latest/userguide/pod-id-role.html): `Service`
  `pods.eks.amazonaws.com`, `sts:AssumeRole` + `sts:TagSession`, `StringEquals` on the session tags
  `aws:RequestTag/kubernetes-namespace` and `aws:RequestTag/kubernetes-service-account`. One statement per
  (namespace, ServiceAccount): the two tags must match together, which lists in one statement cannot say.

Each statement carries a `Sid` starting `Rbacbridge` (a later phase finds its own statements by it).
Size: IAM does not count white space (IAM and STS quotas), so the compact JSON's length is what counts
against the role trust policy limit (2048 characters by default, raisable to 4096). Pure functions.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

TRUST_LIMIT = 2048  # IAM's default "role trust policy length" quota
IRSA, POD_IDENTITY = "irsa", "pod-identity"
TARGETS = (IRSA, POD_IDENTITY)
SID_PREFIX = "Rbacbridge"
POD_IDENTITY_SERVICE = "pods.eks.amazonaws.com"


def issuer_host(issuer: str) -> str:
    """`https://oidc.eks.us-east-1.amazonaws.com/id/ABC` -> `oidc.eks.us-east-1.amazonaws.com/id/ABC` (the
    form IAM uses in provider ARNs and condition keys)."""
    text = issuer.strip()
    for scheme in ("https://", "http://"):
        if text.lower().startswith(scheme):
            text = text[len(scheme):]
    return text.rstrip("/")


def provider_arn(account: str, issuer: str, partition: str = "aws") -> str:
    return f"arn:{partition}:iam::{account}:oidc-provider/{issuer_host(issuer)}"


def subject(namespace: str, service_account: str) -> str:
    return f"system:serviceaccount:{namespace}:{service_account}"


def irsa_statement(provider: str, issuer: str, subjects: list[str]) -> dict[str, Any]:
    host = issuer_host(issuer)
    subs = sorted(set(subjects))
    return {"Sid": f"{SID_PREFIX}Irsa", "Effect": "Allow", "Principal": {"Federated": provider},
            "Action": "sts:AssumeRoleWithWebIdentity",
            "Condition": {"StringEquals": {f"{host}:sub": subs[0] if len(subs) == 1 else subs,
                                           f"{host}:aud": "sts.amazonaws.com"}}}


def pod_identity_statement(namespace: str, service_account: str) -> dict[str, Any]:
    digest = hashlib.sha256(f"{namespace}/{service_account}".encode()).hexdigest()[:8]
    return {"Sid": f"{SID_PREFIX}PodIdentity{digest}", "Effect": "Allow", "Principal": {"Service": POD_IDENTITY_SERVICE},
            "Action": ["sts:AssumeRole", "sts:TagSession"],
            "Condition": {"StringEquals": {"aws:RequestTag/kubernetes-namespace": namespace,
                                           "aws:RequestTag/kubernetes-service-account": service_account}}}


def statements_for(target: str, pairs: list[tuple[str, str]], provider: str | None, issuer: str | None) -> list[dict[str, Any]]:
    """What the dual phase adds to one role's trust for these (namespace, ServiceAccount) pairs."""
    if target == IRSA:
        return [irsa_statement(provider or "", issuer or "", [subject(ns, sa) for ns, sa in pairs])]
    return [pod_identity_statement(ns, sa) for ns, sa in sorted(set(pairs))]


def policy_size(document: dict[str, Any]) -> int:
    """The length IAM counts: the document without white space outside strings."""
    return len(json.dumps(document, separators=(",", ":"), ensure_ascii=False))


def _canonical(statement: dict[str, Any]) -> str:
    def norm(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: norm(v) for k, v in value.items()}
        if isinstance(value, list):
            items = sorted((norm(v) for v in value), key=lambda v: json.dumps(v, sort_keys=True))
            return items[0] if len(items) == 1 else items
        return value

    return json.dumps(norm({k: v for k, v in statement.items() if k != "Sid"}), sort_keys=True)


def merged_trust(live: dict[str, Any], wanted: list[dict[str, Any]]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The trust after the dual phase: the live statements (an earlier run's own, by Sid, replaced) plus the
    wanted ones not already there (same content, Sid aside). Returns (document, the statements to add)."""
    statements = live.get("Statement") or []
    if isinstance(statements, dict):
        statements = [statements]
    present = {_canonical(s) for s in statements}
    missing = [s for s in wanted if _canonical(s) not in present]
    if not missing:
        return live, []
    wanted_sids = {s["Sid"] for s in missing}
    kept = [s for s in statements if s.get("Sid") not in wanted_sids]
    return {**live, "Statement": kept + missing}, missing
