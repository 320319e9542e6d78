"""Findings over the join's answers (pure). Cluster admins (every verb on every resource, cluster-wide,
or group system:masters) are answered but never a finding: they can do all of this by design."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rbacbridge.audit.findings import LOW, MEDIUM, Finding
from rbacbridge.audit.who_can.join import Join, SubjectAnswer
from rbacbridge.audit.who_can.rbac import GROUP, SERVICE_ACCOUNT

KIND_IDS = ("who-can-other-tenant-role", "who-can-chain-other-tenant-role", "who-can-node-role", "who-can-edit-allowed-roles",
            "allowed-roles-absent", "allowed-roles-broader-than-config", "hostnetwork-admitted-in-tenant-namespace")
TENANT_KINDS = ("who-can-other-tenant-role", "who-can-chain-other-tenant-role", "allowed-roles-broader-than-config")


@dataclass
class Tenancy:
    """Which namespaces and roles are whose (from the configuration)."""

    namespace_tenant: dict[str, str] = field(default_factory=dict)
    role_tenant: dict[str, str] = field(default_factory=dict)  # role ARN -> tenant
    known: bool = False

    @classmethod
    def from_config(cls, config: Any, account: str) -> "Tenancy":
        out = cls(known=True)
        for tenant in config.tenants:
            for namespace in tenant.namespaces:
                out.namespace_tenant[namespace] = tenant.name
            out.role_tenant[config.tenant_role_arn(tenant, account)] = tenant.name
        return out

    def home(self, answer: SubjectAnswer, join: Join) -> set[str]:
        """The tenants a subject belongs to: a service account's (or a namespace's service-account group's)
        namespace decides; anyone else belongs to the tenants whose namespaces its RoleBindings are in."""
        kind, name = answer.subject
        if kind == SERVICE_ACCOUNT:
            tenant = self.namespace_tenant.get(name.split("/", 1)[0])
            return {tenant} if tenant else set()
        if kind == GROUP and name.startswith("system:serviceaccounts:"):
            tenant = self.namespace_tenant.get(name.rsplit(":", 1)[1])
            return {tenant} if tenant else set()
        namespaces = {g.namespace for g in join.world.rbac.effective(answer.subject) if g.namespace}
        return {self.namespace_tenant[n] for n in namespaces if n in self.namespace_tenant}


def _list(items: list[str], limit: int = 4) -> str:
    return ", ".join(items[:limit]) + (f" (+{len(items) - limit} more)" if len(items) > limit else "")


def _name(arn: str) -> str:
    return arn.rsplit("/", 1)[-1]


def findings(join: Join, answers: list[SubjectAnswer], tenancy: Tenancy, intended: dict[str, set[str]] | None) -> list[Finding]:
    """`intended`: namespace -> the role ARNs the configuration gives it (None without a config)."""
    out: list[Finding] = []
    settings = join.world.kube2iam
    restrictions = bool(settings and settings.restrictions)
    chains: dict[tuple[str, ...], list[str]] = {}
    runnable: dict[str, list[str]] = {}
    for answer in answers:
        if answer.admin:
            continue
        who = answer.name
        for namespace in answer.run:
            runnable.setdefault(namespace, []).append(who)
        if tenancy.known:
            home = tenancy.home(answer, join)
            foreign = sorted((arn, tenancy.role_tenant[arn]) for arn in answer.direct
                             if arn in tenancy.role_tenant and tenancy.role_tenant[arn] not in home)
            if foreign:
                evidence = "; ".join(f"{_name(arn)} (tenant {tenant}) in {_list(sorted(answer.direct[arn].namespaces), 3)} "
                                     f"via {_list(answer.direct[arn].how, 2)}" for arn, tenant in foreign)
                out.append(Finding("who-can-other-tenant-role", [who] + [f"Role {_name(a)}" for a, _ in foreign],
                                   f"{evidence}; {who} belongs to {', '.join(sorted(home)) or 'no tenant'}",
                                   f"{who} can obtain {_list([_name(a) for a, _ in foreign])}, of another tenant",
                                   details={"subject": who, "roles": [a for a, _ in foreign], "home": sorted(home)}))
            for target, reach in sorted(answer.chained.items()):
                target_tenant = tenancy.role_tenant.get(target)
                start_tenant = tenancy.role_tenant.get(reach.path[0])
                if target_tenant and target_tenant != start_tenant and target_tenant not in home:
                    chains.setdefault(tuple(reach.path), []).append(who)
        if answer.node_role:
            out.append(Finding("who-can-node-role", [who], _list(answer.node_role, 3),
                               f"{who} can obtain the node role (every role kube2iam hands out, and the node's own access)",
                               details={"subject": who, "how": answer.node_role}))
        if answer.edit_allowed_roles:
            namespaces = sorted(answer.edit_allowed_roles)
            hows = sorted({h for ns in namespaces for h in answer.edit_allowed_roles[ns]})
            consequence = ("and so choose the roles kube2iam hands out there" if restrictions
                           else "(kube2iam runs without --namespace-restrictions: it reads no allowed-roles today)")
            out.append(Finding("who-can-edit-allowed-roles", [who] + [f"Namespace {n}" for n in namespaces[:20]],
                               f"{_list(hows, 3)} in {_list(namespaces)}; bindings: {_list(answer.bindings, 2)}",
                               f"{who} can edit the allowed-roles of {_list(namespaces, 3)} {consequence}",
                               severity="" if restrictions else LOW,
                               details={"subject": who, "namespaces": namespaces, "how": hows}))
    for path, subjects in sorted(chains.items()):
        out.append(Finding("who-can-chain-other-tenant-role", [f"Role {_name(a)}" for a in path],
                           " -> ".join(path) + f"; reachable by {_list(sorted(subjects), 3)}",
                           f"role {_name(path[0])} can chain into {_name(path[-1])} (tenant {tenancy.role_tenant[path[-1]]}) "
                           f"in {len(path) - 1} hop(s)", details={"path": list(path), "subjects": sorted(subjects)}))
    out.extend(_namespace_findings(join, runnable, tenancy, intended, restrictions))
    return out


def _namespace_findings(join: Join, runnable: dict[str, list[str]], tenancy: Tenancy,
                        intended: dict[str, set[str]] | None, restrictions: bool) -> list[Finding]:
    out = []
    settings = join.world.kube2iam
    candidates = [r.arn for r in join.world.roles] if join.world.roles is not None else list(join.world.candidate_arns)
    for name, view in sorted(join.views.items()):
        tenant_namespace = name in tenancy.namespace_tenant if tenancy.known else view.patterns is not None
        who = sorted(runnable.get(name, []))
        if settings is not None and view.patterns is None and who:
            if restrictions:
                message = f"namespace {name} has no allowed-roles: kube2iam refuses its pods every role but the default"
                severity = LOW
            else:
                message = f"namespace {name} has no allowed-roles and kube2iam runs without --namespace-restrictions: any role the node role can assume"
                severity = MEDIUM
            out.append(Finding("allowed-roles-absent", [f"Namespace {name}"],
                               f"no {settings.namespace_key} annotation; --namespace-restrictions "
                               f"{'on' if restrictions else 'off'}; pods can be run by {_list(who, 3)}",
                               message, severity=severity, details={"subjects": who}))
        if settings is not None and intended is not None and name in intended and view.patterns:
            extra = sorted(arn for arn in candidates if arn not in intended[name] and arn != settings.default_role_arn
                           and settings.matching_pattern(view.patterns, arn) is not None)
            if extra:
                patterns = sorted({p for arn in extra if (p := settings.matching_pattern(view.patterns, arn))})
                out.append(Finding("allowed-roles-broader-than-config", [f"Namespace {name}"] + [f"Role {_name(a)}" for a in extra[:10]],
                                   f"{settings.namespace_key} {_list([repr(p) for p in patterns], 3)} ({settings.format}, base "
                                   f"{settings.base_arn or 'none'}) also matches {_list(extra, 3)}; the configuration gives "
                                   f"{_list(sorted(intended[name]), 2) or 'no role'}",
                                   f"namespace {name}'s allowed-roles match {len(extra)} role(s) the configuration does not give it",
                                   details={"patterns": patterns, "extra": extra, "intended": sorted(intended[name])}))
        if tenant_namespace and view.host_network:
            owner = tenancy.namespace_tenant.get(name)
            out.append(Finding("hostnetwork-admitted-in-tenant-namespace", [f"Namespace {name}"],
                               f"label pod-security.kubernetes.io/enforce: {view.level or 'absent (cluster default: privileged)'}"
                               + (f"; pods can be run by {_list(who, 3)}" if who else ""),
                               f"namespace {name}" + (f" (tenant {owner})" if owner else " (has allowed-roles)")
                               + " admits hostNetwork pods: they bypass kube2iam and get the node role",
                               details={"level": view.level, "subjects": who}))
    return out
