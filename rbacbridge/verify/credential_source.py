"""Which path served a principal's credentials: kube2iam, IRSA's web identity, EKS Pod Identity, the node
role, or none. Decided from the environment the pod's spec gives its container (what the injecting webhooks
add) in the order the AWS SDKs and CLI look (botocore's default chain: environment keys, web identity, then
the container endpoint, then the instance metadata service), and from the role the pod observed.

Pure functions; no I/O. The pod's environment is an observation (the spec as the API server returns it after
admission), never the configuration."""

from __future__ import annotations

from collections.abc import Iterable

KUBE2IAM = "kube2iam"  # the instance metadata path, intercepted by kube2iam: a role other than the node's
WEB_IDENTITY = "web-identity"  # IRSA: AWS_ROLE_ARN + AWS_WEB_IDENTITY_TOKEN_FILE
POD_IDENTITY = "pod-identity"  # EKS Pod Identity: the agent's container-credentials endpoint
CONTAINER = "container-endpoint"  # another container-credentials endpoint (ECS-style, a sidecar)
ENVIRONMENT = "environment"  # static keys in the pod's environment (AWS_ACCESS_KEY_ID)
NODE_ROLE = "node-role"  # the instance metadata path, not intercepted: the node's own role
NONE = "none"  # no credentials at all
SOURCES = (KUBE2IAM, WEB_IDENTITY, POD_IDENTITY, CONTAINER, ENVIRONMENT, NODE_ROLE, NONE)

# The EKS Pod Identity agent's link-local addresses (IPv4 and IPv6), as the webhook injects them.
POD_IDENTITY_HOSTS = ("169.254.170.23", "[fd00:ec2::23]")
CREDENTIAL_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE",
                  "AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
                  "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE")


def credential_variables(env: Iterable[tuple[str, str | None]]) -> tuple[tuple[str, str], ...]:
    """The (name, value) pairs of CREDENTIAL_ENV among a container's env entries, sorted ('' when the value comes
    from a reference)."""
    return tuple(sorted((name, value or "") for name, value in env if name in CREDENTIAL_ENV))


def credential_source(env: dict[str, str] | None, observed_role: str | None, node_role: str | None) -> str:
    """The path that served the credentials the principal observed. `env`: container_credential_env (None: not
    known, e.g. a host node or the sandbox's principals: the metadata path)."""
    if observed_role is None:
        return NONE
    env = env or {}
    if "AWS_ACCESS_KEY_ID" in env and "AWS_SECRET_ACCESS_KEY" in env:
        return ENVIRONMENT
    if "AWS_ROLE_ARN" in env and "AWS_WEB_IDENTITY_TOKEN_FILE" in env:
        return WEB_IDENTITY
    full_uri = env.get("AWS_CONTAINER_CREDENTIALS_FULL_URI")
    if full_uri is not None:
        return POD_IDENTITY if _host_of(full_uri) in POD_IDENTITY_HOSTS else CONTAINER
    if "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI" in env:
        return CONTAINER
    return NODE_ROLE if node_role is not None and observed_role == node_role else KUBE2IAM


def _host_of(uri: str) -> str:
    rest = uri.split("://", 1)[-1]
    host = rest.split("/", 1)[0]
    if host.startswith("["):
        return host.split("]", 1)[0] + "]"
    return host.rsplit(":", 1)[0] if ":" in host else host


def summary(sources: Iterable[str | None]) -> str:
    """'kube2iam 4, web-identity 2' in SOURCES order."""
    counts: dict[str, int] = {}
    for source in sources:
        if source:
            counts[source] = counts.get(source, 0) + 1
    return ", ".join(f"{s} {counts[s]}" for s in SOURCES if s in counts)
