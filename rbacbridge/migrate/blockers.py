"""What stops the migration before anything changes: each a kind, the object, and one line of reason.

kinds: issuer, oidc-provider, provider-quota (irsa); unknown (the EKS API unreadable), pod-identity-agent,
association-quota, association (pod-identity);
trust-size, role-missing, cross-account, host-network, service-account (both). Pure functions.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

from rbacbridge.migrate.trust import TRUST_LIMIT, issuer_host

OIDC_PROVIDER_QUOTA = 100  # IAM: OpenID Connect providers per account (not adjustable)
_PRIVATE_SUFFIXES = (".svc", ".local", ".internal", ".cluster.local", ".localdomain")


@dataclass(frozen=True)
class Blocker:
    kind: str
    object: str
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "object": self.object, "reason": self.reason}


def issuer_blockers(issuer: str | None, error: str | None) -> list[Blocker]:
    """IRSA needs an https issuer that AWS STS can reach to fetch its keys."""
    if not issuer:
        return [Blocker("issuer", "service-account issuer", f"cannot read it: {error or 'unknown'} (pass --issuer)")]
    host = issuer_host(issuer).split("/", 1)[0].split(":", 1)[0].lower()
    if not issuer.lower().startswith("https://"):
        return [Blocker("issuer", f"issuer {issuer}", "not an https URL: IAM OIDC providers need https")]
    if _private_host(host):
        return [Blocker("issuer", f"issuer {issuer}", f"{host} is not a public name: AWS STS could not fetch the "
                                                      "issuer's keys (serve the discovery document publicly)")]
    return []


def _private_host(host: str) -> bool:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return "." not in host or host.endswith(_PRIVATE_SUFFIXES)
    return not address.is_global


def provider_blockers(issuer: str, provider: str, providers: list[str]) -> list[Blocker]:
    if provider in providers:
        return []
    blockers = [Blocker("oidc-provider", f"OIDC provider {issuer_host(issuer)}",
                        "no IAM OIDC provider for the cluster's issuer: create it (aws iam create-open-id-connect-provider; "
                        "or let `migrate apply --phase dual` create it)")]
    if len(providers) >= OIDC_PROVIDER_QUOTA:
        blockers.append(Blocker("provider-quota", "IAM OIDC providers",
                                f"the account has {len(providers)} of {OIDC_PROVIDER_QUOTA}: no room for the cluster's"))
    return blockers


POD_IDENTITY_AGENT = "eks-pod-identity-agent"
ASSOCIATION_QUOTA = 5000  # EKS: Pod Identity associations per cluster


def pod_identity_blockers(cluster_name: str, agent: dict | None, error: str | None) -> list[Blocker]:
    """`agent`: DescribeAddon's addon for the Pod Identity agent (None: not installed); `error`: the EKS API
    could not be read (nothing else is then known)."""
    if error:
        return [Blocker("unknown", f"EKS cluster {cluster_name}", f"cannot check: EKS API: {error}")]
    if agent is None:
        return [Blocker("pod-identity-agent", f"EKS cluster {cluster_name}", f"the {POD_IDENTITY_AGENT} add-on is not "
                        "installed: no pod could get credentials through an association")]
    if agent.get("status") != "ACTIVE":
        return [Blocker("pod-identity-agent", f"EKS cluster {cluster_name}",
                        f"the {POD_IDENTITY_AGENT} add-on is {agent.get('status')}, not ACTIVE")]
    return []


def association_quota_blocker(cluster_name: str, existing: int, new: int) -> list[Blocker]:
    if existing + new <= ASSOCIATION_QUOTA:
        return []
    return [Blocker("association-quota", f"EKS cluster {cluster_name}", f"{existing} associations and {new} to make: "
                    f"over EKS's {ASSOCIATION_QUOTA} per cluster")]


def workload_blockers(inventory, account: str) -> list[Blocker]:
    from rbacbridge.policy_eval import account_of

    blockers: list[Blocker] = []
    foreign: dict[str, list[str]] = {}
    for w in inventory.workloads:
        if not w.carried:
            continue
        if w.host_network:
            blockers.append(Blocker("host-network", w.ref, "hostNetwork: its pods reach the node's metadata service "
                                                           "directly (the node role), whatever the migration does"))
        owner = account_of(w.role_arn)
        if owner is None:
            blockers.append(Blocker("role-missing", w.ref, f"role {w.role_arn} is not an ARN (kube2iam has no base role ARN)"))
        elif owner != account:
            foreign.setdefault(w.role_arn, []).append(w.ref)
    for role, refs in sorted(foreign.items()):
        blockers.append(Blocker("cross-account", f"Role {role}",
                                f"not in the cluster's account {account}: its trust cannot be changed from here "
                                f"(used by {', '.join(refs)})"))
    return blockers


def trust_blocker(role_arn: str, before: int, after: int, added: int) -> Blocker | None:
    if after <= TRUST_LIMIT:
        return None
    return Blocker("trust-size", f"Role {role_arn}",
                   f"its trust policy would be {after} characters after adding {added} statement(s) "
                   f"(today {before}; IAM's default limit {TRUST_LIMIT})")
