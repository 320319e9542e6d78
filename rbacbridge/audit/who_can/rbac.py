"""Kubernetes RBAC, read the way the API server's RBAC authorizer reads it, reduced to the few
permissions that decide who can end up holding an AWS role through kube2iam.

Per Role / ClusterRole (ClusterRoles with an aggregationRule get the rules of every ClusterRole their
selectors match, as the aggregation controller would write them) the rules are reduced once to a `Caps`:

- run: create pods, or create/update/patch a controller that creates pods (Deployments, ReplicaSets,
  StatefulSets, DaemonSets, Jobs, CronJobs, ReplicationControllers)
- exec: `create` (or, before Kubernetes 1.31's websocket check, `get`) on pods/exec: the role of a pod
  already running
- edit_namespace: update/patch on namespaces (the `allowed-roles` annotation lives there)
- admin: every verb on every resource of every API group

Bindings then give each subject (User, Group, ServiceAccount) its Caps per namespace or cluster-wide.
Matching as the authorizer does (k8s.io/kubernetes pkg/apis/rbac/helpers.go): `*` in verbs, apiGroups
and resources; `*/sub` for a subresource; resourceNames restrict to those objects (a `create` has no
name, so a create rule with resourceNames grants nothing). Not modelled: escalate/bind/impersonate,
nonResourceURLs, admission webhooks other than Pod Security.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

ALL = "*"
# (API group, resource) of the controllers that create pods from a template
POD_CONTROLLERS = (("apps", "deployments"), ("apps", "replicasets"), ("apps", "statefulsets"), ("apps", "daemonsets"),
                   ("batch", "jobs"), ("batch", "cronjobs"), ("", "replicationcontrollers"))
WRITE_VERBS = ("create", "update", "patch")
AUTHENTICATED, UNAUTHENTICATED = "system:authenticated", "system:unauthenticated"
ALL_SERVICEACCOUNTS, MASTERS = "system:serviceaccounts", "system:masters"
USER, GROUP, SERVICE_ACCOUNT = "User", "Group", "ServiceAccount"


@dataclass
class Caps:
    run: dict[str, None] = field(default_factory=dict)  # how ("create pods", "patch deployments (named: web)")
    exec: dict[str, None] = field(default_factory=dict)  # how ("create pods/exec")
    edit_namespace: dict[str, None] = field(default_factory=dict)  # how ("patch namespaces")
    edit_names: set[str] | None = None  # namespaces named by resourceNames; None: any
    admin: bool = False

    def __bool__(self) -> bool:
        return bool(self.run or self.exec or self.edit_namespace or self.admin)

    def merge(self, other: "Caps") -> None:
        self.run.update(other.run)
        self.exec.update(other.exec)
        if other.edit_namespace:
            if not self.edit_namespace:
                self.edit_names = None if other.edit_names is None else set(other.edit_names)
            elif self.edit_names is not None:
                self.edit_names = None if other.edit_names is None else self.edit_names | other.edit_names
            self.edit_namespace.update(other.edit_namespace)
        self.admin = self.admin or other.admin


def _matches(values: Iterable[str] | None, wanted: str) -> bool:
    return any(v == ALL or v == wanted for v in values or ())


def _resource_matches(rule_resources: Iterable[str] | None, resource: str) -> bool:
    sub = resource.partition("/")[2]
    for value in rule_resources or ():
        if value == ALL or value == resource:
            return True
        if sub and value == f"*/{sub}":
            return True
    return False


def _named(rule: dict[str, Any]) -> str:
    names = rule.get("resourceNames") or []
    return f" (named: {', '.join(names)})" if names else ""


def caps_of_rules(rules: Iterable[dict[str, Any]]) -> Caps:
    caps = Caps()
    for rule in rules:
        if not isinstance(rule, dict) or rule.get("nonResourceURLs"):
            continue
        verbs, groups, resources = rule.get("verbs"), rule.get("apiGroups"), rule.get("resources")
        named = bool(rule.get("resourceNames"))
        if not named and ALL in (verbs or ()) and ALL in (groups or ()) and ALL in (resources or ()):
            caps.admin = True
        if not named and _matches(verbs, "create") and _matches(groups, "") and _resource_matches(resources, "pods"):
            caps.run["create pods"] = None
        for group, resource in POD_CONTROLLERS:
            if not (_matches(groups, group) and _resource_matches(resources, resource)):
                continue
            for verb in WRITE_VERBS:
                if _matches(verbs, verb) and not (named and verb == "create"):
                    caps.run[f"{verb} {resource}{_named(rule)}"] = None
        if _matches(groups, "") and _resource_matches(resources, "pods/exec"):
            for verb in ("create", "get"):
                if _matches(verbs, verb):
                    caps.exec[f"{verb} pods/exec{_named(rule)}"] = None
        if _matches(groups, "") and _resource_matches(resources, "namespaces"):
            for verb in ("update", "patch"):
                if _matches(verbs, verb):
                    names = set(rule.get("resourceNames") or [])
                    caps.merge(Caps(edit_namespace={f"{verb} namespaces{_named(rule)}": None}, edit_names=names or None))
    return caps


def _selector_matches(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """A metav1.LabelSelector (matchLabels + matchExpressions); an empty selector matches everything."""
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expression in selector.get("matchExpressions") or []:
        key, op, values = expression.get("key"), expression.get("operator"), expression.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and key in labels and labels[key] in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def cluster_role_rules(cluster_roles: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """ClusterRole name -> its rules, aggregated ones filled in (to a fixed point, as the controller converges)."""
    own = {_name(r): list(r.get("rules") or []) for r in cluster_roles}
    labels = {_name(r): (r.get("metadata") or {}).get("labels") or {} for r in cluster_roles}
    aggregated = {_name(r): r["aggregationRule"].get("clusterRoleSelectors") or []
                  for r in cluster_roles if isinstance(r.get("aggregationRule"), dict)}
    rules = dict(own)
    for _ in range(len(aggregated) + 1):
        changed = False
        for name, selectors in aggregated.items():
            merged = list(own[name])
            for other in sorted(rules):
                if other != name and any(_selector_matches(s, labels[other]) for s in selectors):
                    merged.extend(r for r in rules[other] if r not in merged)
            if merged != rules[name]:
                rules[name], changed = merged, True
        if not changed:
            break
    return rules


def _name(obj: dict[str, Any]) -> str:
    return (obj.get("metadata") or {}).get("name", "")


def _namespace(obj: dict[str, Any]) -> str:
    return (obj.get("metadata") or {}).get("namespace", "")


Subject = tuple[str, str]  # (kind, name); a ServiceAccount's name is "namespace/name"


def subject_of(entry: dict[str, Any], binding_namespace: str) -> Subject | None:
    kind = entry.get("kind")
    if kind == SERVICE_ACCOUNT:
        return SERVICE_ACCOUNT, f"{entry.get('namespace') or binding_namespace}/{entry.get('name')}"
    if kind in (USER, GROUP):
        return kind, str(entry.get("name"))
    return None


def subject_text(subject: Subject) -> str:
    return f"{subject[0]} {subject[1]}"


def groups_of(subject: Subject) -> list[str]:
    """The groups the API server puts a subject in without being told (authenticator conventions)."""
    kind, name = subject
    if kind == SERVICE_ACCOUNT:
        return [f"{ALL_SERVICEACCOUNTS}:{name.split('/', 1)[0]}", ALL_SERVICEACCOUNTS, AUTHENTICATED]
    if kind == USER:
        return [UNAUTHENTICATED] if name == "system:anonymous" else [AUTHENTICATED]
    if name.startswith(f"{ALL_SERVICEACCOUNTS}:"):
        return [ALL_SERVICEACCOUNTS, AUTHENTICATED]
    if name in (AUTHENTICATED, UNAUTHENTICATED):
        return []
    return [AUTHENTICATED]


@dataclass
class Grant:
    namespace: str | None  # None: cluster-wide
    caps: Caps
    binding: str  # "RoleBinding ns/name -> ClusterRole edit"


@dataclass
class Rbac:
    grants: dict[Subject, list[Grant]]  # each subject's own grants (only bindings that give something relevant)
    bindings: int
    roles: int

    def effective(self, subject: Subject) -> list[Grant]:
        """The subject's grants and those of the groups it is in."""
        out = list(self.grants.get(subject, []))
        for group in groups_of(subject):
            out.extend(self.grants.get((GROUP, group), []))
        return out

    def is_admin(self, subject: Subject) -> bool:
        if subject == (GROUP, MASTERS):
            return True
        return any(g.namespace is None and g.caps.admin for g in self.effective(subject))


def read_rbac(roles: list[dict[str, Any]], cluster_roles: list[dict[str, Any]], role_bindings: list[dict[str, Any]],
              cluster_role_bindings: list[dict[str, Any]]) -> Rbac:
    cluster_caps = {name: caps_of_rules(rules) for name, rules in cluster_role_rules(cluster_roles).items()}
    role_caps = {(_namespace(r), _name(r)): caps_of_rules(r.get("rules") or []) for r in roles}
    grants: dict[Subject, list[Grant]] = {}
    for binding, namespaced in [(b, True) for b in role_bindings] + [(b, False) for b in cluster_role_bindings]:
        ref = binding.get("roleRef") or {}
        namespace = _namespace(binding) if namespaced else None
        if ref.get("kind") == "ClusterRole":
            caps = cluster_caps.get(ref.get("name", ""))
        elif ref.get("kind") == "Role" and namespaced:
            caps = role_caps.get((namespace, ref.get("name", "")))
        else:
            caps = None
        if not caps:  # a missing role grants nothing (the authorizer skips it)
            continue
        where = f"RoleBinding {namespace}/{_name(binding)}" if namespaced else f"ClusterRoleBinding {_name(binding)}"
        grant = Grant(namespace, caps, f"{where} -> {ref.get('kind')} {ref.get('name')}")
        for entry in binding.get("subjects") or []:
            subject = subject_of(entry, _namespace(binding))
            if subject is not None:
                grants.setdefault(subject, []).append(grant)
    return Rbac(grants=grants, bindings=len(role_bindings) + len(cluster_role_bindings), roles=len(roles) + len(cluster_roles))
