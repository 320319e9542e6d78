"""From per-pod roles (kube2iam) to per-ServiceAccount roles (IRSA, Pod Identity).

A workload keeps its ServiceAccount only when the role can go on it without any pod gaining access: the
ServiceAccount is not the namespace's `default` (every pod without serviceAccountName runs as it, today's
and tomorrow's) and every workload running as it is carried over with that same role. Otherwise each role
gets a dedicated ServiceAccount per (namespace, role), named `<role name>-<hash>` (DNS-1123, at most 63
characters; the hash is of the role's full ARN, so two roles never share a name), and each workload a change
to use it. Pure functions.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Any

from rbacbridge import MANAGED_BY_KEY, MANAGED_BY_VALUE
from rbacbridge.migrate.trust import IRSA

IRSA_ANNOTATION = "eks.amazonaws.com/role-arn"
MAX_NAME = 63


def dedicated_name(role_arn: str) -> str:
    """`arn:aws:iam::1:role/team/Alpha_App.v2` -> `alpha-app-v2-<8 hex>`: a valid DNS-1123 label."""
    role = role_arn.rsplit("/", 1)[-1]
    slug = re.sub(r"-{2,}", "-", re.sub(r"[^a-z0-9-]+", "-", role.lower())).strip("-")
    digest = hashlib.sha256(role_arn.encode()).hexdigest()[:8]
    return f"{slug[:MAX_NAME - 9].strip('-') or 'role'}-{digest}"


@dataclass
class ServiceAccountPlan:
    namespace: str
    name: str
    role_arn: str
    action: str  # create | annotate | unchanged | keep (pod-identity: the object is not changed) | taken (a blocker)
    dedicated: bool
    reason: str
    workloads: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"namespace": self.namespace, "name": self.name, "role_arn": self.role_arn, "action": self.action,
                "dedicated": self.dedicated, "reason": self.reason, "workloads": sorted(self.workloads)}


@dataclass(frozen=True)
class WorkloadChange:
    kind: str
    namespace: str
    name: str
    from_service_account: str
    to_service_account: str

    @property
    def how(self) -> str:
        if self.kind == "Pod":
            return f"recreate the pod with serviceAccountName {self.to_service_account} (a pod's ServiceAccount cannot change)"
        field_path = "spec.jobTemplate.spec.template.spec" if self.kind == "CronJob" else "spec.template.spec"
        return f"set {field_path}.serviceAccountName: {self.from_service_account} -> {self.to_service_account}"

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "namespace": self.namespace, "name": self.name,
                "from_service_account": self.from_service_account, "to_service_account": self.to_service_account,
                "how": self.how}


@dataclass
class Mapping:
    service_accounts: list[ServiceAccountPlan]
    changes: list[WorkloadChange]
    pairs: dict[str, list[tuple[str, str]]]  # role ARN -> the (namespace, ServiceAccount) pairs that will use it
    problems: list[tuple[str, str, str]]  # (kind, object, reason): ServiceAccounts in the way


def map_service_accounts(inventory, target: str) -> Mapping:
    carried = [w for w in inventory.workloads if w.carried]
    by_account: dict[tuple[str, str], list] = {}
    for w in carried:
        by_account.setdefault((w.namespace, w.service_account), []).append(w)
    plans: dict[tuple[str, str], ServiceAccountPlan] = {}
    changes: list[WorkloadChange] = []
    problems: list[tuple[str, str, str]] = []
    for (namespace, account), rows in sorted(by_account.items()):
        roles = sorted({w.role_arn for w in rows})
        users = inventory.users.get((namespace, account), set())
        others = sorted(users - {w.ref for w in rows})
        if account != "default" and len(roles) == 1 and not others:
            plan = _plan_for(inventory, target, namespace, account, roles[0], False,
                             f"every workload running as {account} gets {roles[0]}", problems)
            plan.workloads += [w.ref for w in rows]
            plans.setdefault((namespace, account), plan)
            continue
        if account == "default":
            why = "the namespace's default ServiceAccount: every pod without serviceAccountName would get the role"
        elif len(roles) > 1:
            why = f"ServiceAccount {account} serves {len(roles)} roles"
        else:
            why = f"ServiceAccount {account} also serves {', '.join(others)}"
        for w in rows:
            name = dedicated_name(w.role_arn)
            key = (namespace, name)
            if key not in plans:
                plans[key] = _plan_for(inventory, target, namespace, name, w.role_arn, True, why, problems)
            elif why not in plans[key].reason:
                plans[key].reason += f"; {why}"
            plans[key].workloads.append(w.ref)
            changes.append(WorkloadChange(w.kind, namespace, w.name, account, name))
    pairs: dict[str, list[tuple[str, str]]] = {}
    for plan in plans.values():
        pairs.setdefault(plan.role_arn, []).append((plan.namespace, plan.name))
    return Mapping(sorted(plans.values(), key=lambda p: (p.namespace, p.name)), changes,
                   {role: sorted(p) for role, p in sorted(pairs.items())}, problems)


def _plan_for(inventory, target: str, namespace: str, name: str, role_arn: str, dedicated: bool, reason: str,
              problems: list) -> ServiceAccountPlan:
    live = inventory.service_accounts.get((namespace, name))
    meta = (live or {}).get("metadata") or {}
    annotations = meta.get("annotations") or {}
    current = annotations.get(IRSA_ANNOTATION)
    ref = f"ServiceAccount {namespace}/{name}"
    if live is None:
        action = "create"
    elif dedicated and (meta.get("labels") or {}).get(MANAGED_BY_KEY) != MANAGED_BY_VALUE:
        problems.append(("service-account", ref, f"the dedicated ServiceAccount's name is taken by one rbacbridge "
                                                 f"did not create (no label {MANAGED_BY_KEY}={MANAGED_BY_VALUE})"))
        action = "taken"
    elif target != IRSA:
        action = "keep"
    elif current == role_arn:
        action = "unchanged"
    else:
        action = "annotate"
    if current and current != role_arn:
        problems.append(("service-account", ref, f"already annotated {IRSA_ANNOTATION}={current}: its pods may use that "
                                                 f"role, not {role_arn.rsplit('/', 1)[-1]}, once they restart"))
    return ServiceAccountPlan(namespace, name, role_arn, action, dedicated, reason)
