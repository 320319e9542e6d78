"""Which path served a pod's AWS credentials (issue 26, item 3): kube2iam, web identity (IRSA), EKS Pod Identity,
the node role, or none — read from the identity the pod observed (its `sts get-caller-identity` ARN) and the
environment its containers were given (what the injecting webhook wrote). Pure: no I/O, no SDK.

The SDK picks a source by precedence (botocore / the AWS CLI: static keys in the environment, then web identity
from AWS_ROLE_ARN + AWS_WEB_IDENTITY_TOKEN_FILE, ..., then container credentials from
AWS_CONTAINER_CREDENTIALS_FULL_URI, then the instance metadata address that kube2iam intercepts). The environment
says which path the SDK will try first; the session ARN confirms it:

- web identity: the assumed role is the one AWS_ROLE_ARN names;
- Pod Identity: EKS Auth names its sessions `eks-<cluster>-<pod>-...`;
- the node role (the article's leak) wins over everything: a pod that observed a node role got it, whatever its
  environment says;
- otherwise a role reached through the metadata address is kube2iam's answer.

A combination that does not fit (the environment says web identity, the ARN is another role) is `unknown`, with
the reason, never guessed.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

KUBE2IAM, WEB_IDENTITY, POD_IDENTITY, NODE_ROLE, STATIC_KEYS, NONE, UNKNOWN = (
    "kube2iam", "web-identity", "pod-identity", "node-role", "static-keys", "none", "unknown")

_ASSUMED = re.compile(r"^arn:aws[\w-]*:sts::(\d{12}):assumed-role/([\w+=,.@-]+)/([\w+=,.@-]+)$")
_ROLE = re.compile(r"^arn:aws[\w-]*:iam::(\d{12}):role/(?:[\w+=,.@-]+/)*([\w+=,.@-]+)$")
POD_IDENTITY_SESSION_PREFIX = "eks-"


@dataclass(frozen=True)
class CredentialSource:
    path: str  # one of the constants above
    reason: str  # one line: why this path

    def __str__(self) -> str:
        return self.path


def expected_path(env: Mapping[str, str]) -> str:
    """The path the SDK will try first given this environment (the precedence the SDKs document)."""
    if env.get("AWS_ACCESS_KEY_ID") and env.get("AWS_SECRET_ACCESS_KEY"):
        return STATIC_KEYS
    if env.get("AWS_ROLE_ARN") and env.get("AWS_WEB_IDENTITY_TOKEN_FILE"):
        return WEB_IDENTITY
    if env.get("AWS_CONTAINER_CREDENTIALS_FULL_URI") or env.get("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"):
        return POD_IDENTITY
    return KUBE2IAM  # the instance metadata address, which kube2iam intercepts (or not: then the node role)


def _role_name(arn: str) -> str | None:
    match = _ROLE.match(arn or "")
    return match.group(2) if match else None


def credential_source(session_arn: str | None, env: Mapping[str, str], node_roles: Iterable[str] = ()) -> CredentialSource:
    """The path that served `session_arn` to a pod whose containers were given `env`. `node_roles`: the names
    (or ARNs) of the node roles — a session of one of them is `node-role` whatever the environment."""
    if not session_arn:
        return CredentialSource(NONE, "no credentials")
    match = _ASSUMED.match(session_arn)
    if match is None:
        return CredentialSource(UNKNOWN, f"{session_arn} is not an assumed-role session")
    role, session = match.group(2), match.group(3)
    nodes = {(_role_name(n) or n) for n in node_roles}
    if role in nodes:
        return CredentialSource(NODE_ROLE, f"the session is of the node role {role}")
    wanted = expected_path(env)
    if wanted == STATIC_KEYS:
        return CredentialSource(STATIC_KEYS, "access keys in the environment come first")
    if wanted == WEB_IDENTITY:
        named = _role_name(env["AWS_ROLE_ARN"])
        if named == role:
            return CredentialSource(WEB_IDENTITY, f"AWS_ROLE_ARN names {role}, the assumed role")
        return CredentialSource(UNKNOWN, f"AWS_ROLE_ARN names {named}, but the session is of {role}")
    if wanted == POD_IDENTITY:
        if session.startswith(POD_IDENTITY_SESSION_PREFIX):
            return CredentialSource(POD_IDENTITY, f"container credentials, an EKS Auth session ({session})")
        return CredentialSource(UNKNOWN, f"container credentials in the environment, but session {session} is not EKS Auth's")
    if session.startswith(POD_IDENTITY_SESSION_PREFIX):
        return CredentialSource(UNKNOWN, f"an EKS Auth session ({session}) without container credentials in the environment")
    return CredentialSource(KUBE2IAM, f"no injected credentials: {role} came through the metadata address")
