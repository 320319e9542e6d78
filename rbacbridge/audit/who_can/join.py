"""The join, in memory: RBAC subjects x namespaces x what kube2iam hands out there x IAM chains.

Everything is computed once per namespace (the roles a new pod there can get, whether hostNetwork is
admitted, the roles of the pods already running) and once per IAM role (the roles it can chain into),
then each subject's answer is put together from its grants. No I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from rbacbridge import policy_eval
from rbacbridge.audit.who_can.matching import Kube2iamSettings, allowed_patterns
from rbacbridge.audit.who_can.rbac import Rbac, Subject, subject_text

PSA_ENFORCE = "pod-security.kubernetes.io/enforce"
PRIVILEGED = "privileged"
PSA_LEVELS = ("privileged", "baseline", "restricted")
ASSUME = "sts:AssumeRole"
NODE_ROLE = "<node role>"  # the node role when its ARN is unknown (no IAM read, no config)


@dataclass(frozen=True)
class IamRole:
    name: str
    arn: str
    trust: dict[str, Any]
    documents: tuple[dict[str, Any], ...]


@dataclass
class World:
    """What the join needs, already read."""

    namespaces: list[dict[str, Any]]
    pods: list[dict[str, Any]]
    rbac: Rbac
    kube2iam: Kube2iamSettings | None  # None: no kube2iam DaemonSet
    nodes_without_kube2iam: list[str] = field(default_factory=list)
    roles: list[IamRole] | None = None  # None: IAM not read
    node_roles: list[IamRole] = field(default_factory=list)
    node_role_arns: list[str] = field(default_factory=list)  # known even without IAM (from the config)
    candidate_arns: list[str] = field(default_factory=list)  # without IAM: the roles to try (config, annotations)
    account: str = ""


class Reach:
    """One role a subject can obtain: where, how, and (chained) the path. Namespaces and hows are kept
    as ordered sets: a cluster-wide subject adds thousands."""

    __slots__ = ("arn", "_namespaces", "_how", "path")

    def __init__(self, arn: str, namespaces: list[str] | None = None, how: list[str] | None = None,
                 path: list[str] | None = None):
        self.arn = arn
        self._namespaces = dict.fromkeys(namespaces or [])
        self._how = dict.fromkeys(how or [])
        self.path = path or []  # chained: [first role, ..., this role]

    @property
    def namespaces(self) -> list[str]:
        return list(self._namespaces)

    @property
    def how(self) -> list[str]:
        return list(self._how)

    def add(self, namespace: str, how: str) -> None:
        self._namespaces[namespace] = None
        self._how[how] = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"role": self.arn, "namespaces": sorted(self._namespaces), "how": list(self._how)}
        if self.path:
            out["path"] = self.path
        return out


@dataclass
class SubjectAnswer:
    subject: Subject
    admin: bool
    bindings: list[str]
    run: dict[str, list[str]] = field(default_factory=dict)  # namespace -> how (create pods, patch deployments, ...)
    exec: dict[str, list[str]] = field(default_factory=dict)
    edit_allowed_roles: dict[str, list[str]] = field(default_factory=dict)
    direct: dict[str, Reach] = field(default_factory=dict)
    chained: dict[str, Reach] = field(default_factory=dict)
    node_role: list[str] = field(default_factory=list)  # how

    @property
    def name(self) -> str:
        return subject_text(self.subject)

    def to_dict(self) -> dict[str, Any]:
        return {"subject": {"kind": self.subject[0], "name": self.subject[1]}, "admin": self.admin,
                "bindings": self.bindings,
                "run_pods_in": sorted(self.run), "exec_in": sorted(self.exec),
                "edit_allowed_roles_in": sorted(self.edit_allowed_roles),
                "roles": [r.to_dict() for _, r in sorted(self.direct.items())],
                "chained_roles": [r.to_dict() for _, r in sorted(self.chained.items())],
                "node_role": {"obtainable": bool(self.node_role), "how": self.node_role}}




@dataclass
class NamespaceView:
    name: str
    patterns: list[str] | None
    level: str  # Pod Security enforce level ("" when unlabelled)
    host_network: bool
    roles: dict[str, list[str]]  # a new pod's roles: ARN -> how
    pod_roles: dict[str, list[str]]  # roles of pods already running there (for exec): ARN -> how
    node_role: list[str]  # how a new pod there gets the node role


def _meta(obj: dict[str, Any]) -> dict[str, Any]:
    return obj.get("metadata") or {}


def pod_security_level(namespace: dict[str, Any]) -> str:
    return (_meta(namespace).get("labels") or {}).get(PSA_ENFORCE, "")


def host_network_admitted(level: str) -> bool:
    """Pod Security admission: only `privileged` admits hostNetwork; an unlabelled namespace gets the
    cluster default, privileged unless the admission configuration says otherwise; an unknown level is
    treated as restricted (as PSA does)."""
    return level in ("", PRIVILEGED)


class Join:
    def __init__(self, world: World):
        self.world = world
        self.by_arn = {r.arn: r for r in world.roles or []}
        self.node_arns = set(world.node_role_arns) | {r.arn for r in world.node_roles}
        self.node_keys = self.node_arns or {NODE_ROLE}
        self.assumable = self._assumable_by_node()
        self._edges: dict[str, list[str]] | None = None
        self._reach: dict[str, dict[str, list[str]]] = {}
        self.views = {(_meta(n).get("name") or ""): self._view(n) for n in world.namespaces}
        self.every = sorted(self.views)

    # -- IAM --

    def _assumable_by_node(self) -> list[str]:
        """The roles kube2iam can get for a pod: the node role's policies allow sts:AssumeRole on them
        and their trust allows the node role. Without IAM: the candidates, unchecked."""
        world = self.world
        if world.roles is None:
            return list(dict.fromkeys(world.candidate_arns))
        out = []
        for role in world.roles:
            for node in world.node_roles:
                if policy_eval.is_allowed(node.documents, ASSUME, role.arn) and policy_eval.trust_allows(role.trust, node.arn):
                    out.append(role.arn)
                    break
        return out

    def edges(self) -> dict[str, list[str]]:
        """Role ARN -> the roles it can assume (its policies allow it and the target's trust allows it)."""
        if self._edges is not None:
            return self._edges
        roles = self.world.roles or []
        trusting: dict[str, list[IamRole]] = {}
        for role in roles:
            for principal in policy_eval.trusted_principals(role.trust):
                trusting.setdefault(principal, []).append(role)
        edges: dict[str, list[str]] = {}
        for role in roles:
            if not _may_assume(role.documents):
                continue
            account = policy_eval.account_of(role.arn) or self.world.account
            candidates = {r.arn: r for key in (role.arn, f"arn:{role.arn.split(':')[1]}:iam::{account}:root", account, "*")
                          for r in trusting.get(key, [])}
            targets = [arn for arn, target in sorted(candidates.items()) if arn != role.arn
                       and policy_eval.is_allowed(role.documents, ASSUME, arn) and policy_eval.trust_allows(target.trust, role.arn)]
            if targets:
                edges[role.arn] = targets
        self._edges = edges
        return edges

    def node_role_reach(self) -> dict[str, list[str]]:
        """What the node role can assume (kube2iam's own power), by chain: target -> path."""
        out: dict[str, list[str]] = {}
        for node in sorted(self.node_arns):
            for target, path in self.reach(node).items():
                if target not in out or len(path) < len(out[target]):
                    out[target] = path
        return out

    def reach(self, start: str) -> dict[str, list[str]]:
        """Roles reachable from `start` by sts:AssumeRole hops: target -> path (start ... target), shortest first."""
        if start in self._reach:
            return self._reach[start]
        edges = self.edges()
        paths: dict[str, list[str]] = {}
        frontier = [[start]]
        seen = {start}
        while frontier:
            following = []
            for path in frontier:
                for target in edges.get(path[-1], []):
                    if target not in seen:
                        seen.add(target)
                        paths[target] = path + [target]
                        following.append(path + [target])
            frontier = following
        self._reach[start] = paths
        return paths

    # -- namespaces --

    def _view(self, namespace: dict[str, Any]) -> NamespaceView:
        world, settings = self.world, self.world.kube2iam
        name = _meta(namespace).get("name") or ""
        level = pod_security_level(namespace)
        key = settings.namespace_key if settings else "iam.amazonaws.com/allowed-roles"
        patterns = allowed_patterns((_meta(namespace).get("annotations") or {}).get(key))
        roles: dict[str, list[str]] = {}
        node: list[str] = []
        if settings is None:
            node.append("no kube2iam DaemonSet: pods reach the metadata service")
        else:
            for arn in self.assumable:
                how = self._why_allowed(settings, patterns, arn)
                if how:
                    roles.setdefault(arn, []).append(how)
        if host_network_admitted(level):
            node.append(f"hostNetwork admitted (Pod Security enforce: {level or 'unlabelled'})")
        for node_name in world.nodes_without_kube2iam:
            node.append(f"node {node_name} has no ready kube2iam (a pod can ask for that node)")
        for arn in list(roles):
            if arn in self.node_arns:
                node.append(f"kube2iam hands the node role ({'; '.join(roles[arn])})")
        for how in node:
            for arn in self.node_keys:
                if how not in roles.get(arn, []) and not how.startswith("kube2iam hands"):
                    roles.setdefault(arn, []).append(how)
        return NamespaceView(name, patterns, level, host_network_admitted(level), roles, {}, node)

    @staticmethod
    def _why_allowed(settings: Kube2iamSettings, patterns: list[str] | None, arn: str) -> str | None:
        if arn == settings.default_role_arn:
            return "kube2iam's default role"
        if not settings.restrictions:
            return "--namespace-restrictions off"
        pattern = settings.matching_pattern(patterns, arn)
        return f"allowed-roles {pattern!r} ({settings.format})" if pattern is not None else None

    def index_pods(self) -> None:
        """The roles of the pods already running, per namespace (what exec into them gives)."""
        settings = self.world.kube2iam
        for pod in self.world.pods:
            if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
                continue
            meta = _meta(pod)
            view = self.views.get(meta.get("namespace") or "")
            if view is None:
                continue
            ref = f"{view.name}/{meta.get('name')}"
            spec = pod.get("spec") or {}
            if spec.get("hostNetwork"):
                for arn in self.node_keys:
                    view.pod_roles.setdefault(arn, []).append(f"exec into hostNetwork pod {ref}")
                continue
            if settings is None or spec.get("nodeName") in self.world.nodes_without_kube2iam:
                for arn in self.node_keys:
                    view.pod_roles.setdefault(arn, []).append(f"exec into pod {ref} (no kube2iam on its node)")
                continue
            arn = settings.pod_role((meta.get("annotations") or {}).get("iam.amazonaws.com/role"))
            if arn and arn in self.assumable and settings.allows(view.patterns, arn):
                view.pod_roles.setdefault(arn, []).append(f"exec into pod {ref}")

    # -- subjects --

    def answer(self, subject: Subject) -> SubjectAnswer:
        rbac = self.world.rbac
        grants = rbac.effective(subject)
        answer = SubjectAnswer(subject, rbac.is_admin(subject), sorted({g.binding for g in grants}))
        every = self.every
        for grant in grants:
            where = every if grant.namespace is None else [grant.namespace] if grant.namespace in self.views else []
            caps = grant.caps
            for namespace in where:
                if caps.run:
                    answer.run.setdefault(namespace, []).extend(h for h in caps.run if h not in answer.run.get(namespace, []))
                if caps.exec:
                    answer.exec.setdefault(namespace, []).extend(h for h in caps.exec if h not in answer.exec.get(namespace, []))
                if caps.edit_namespace and (caps.edit_names is None or namespace in caps.edit_names):
                    answer.edit_allowed_roles.setdefault(namespace, []).extend(
                        h for h in caps.edit_namespace if h not in answer.edit_allowed_roles.get(namespace, []))
        settings = self.world.kube2iam
        node_how: list[str] = []
        for namespace in sorted(answer.run):
            view = self.views[namespace]
            for arn, hows in view.roles.items():
                reach = answer.direct.setdefault(arn, Reach(arn))
                for how in hows:
                    reach.add(namespace, how)
            if namespace in answer.edit_allowed_roles and settings is not None and settings.restrictions:
                for arn in self.assumable:
                    answer.direct.setdefault(arn, Reach(arn)).add(namespace, "can edit the namespace's allowed-roles")
                    if arn in self.node_arns:
                        node_how.append(f"{namespace}: can edit allowed-roles, and kube2iam can assume the node role")
            node_how.extend(f"{namespace}: {how}" for how in view.node_role)
        for namespace in sorted(answer.exec):
            for arn, hows in self.views[namespace].pod_roles.items():
                reach = answer.direct.setdefault(arn, Reach(arn))
                for how in hows:
                    reach.add(namespace, how)
                    if arn in self.node_keys:
                        node_how.append(f"{namespace}: {how}")
        for start in sorted(answer.direct):
            if start in self.node_keys:
                continue  # the node role reaches what it may assume: listed once (node_role_reach), not per subject
            for target, path in self.reach(start).items():
                if target in answer.direct:
                    continue
                known = answer.chained.get(target)
                if known is None or len(path) < len(known.path):
                    answer.chained[target] = Reach(target, sorted(answer.direct[start]._namespaces),
                                                   ["sts:AssumeRole chain"], path)
        for target in sorted(answer.chained):
            if target in self.node_arns:
                node_how.append("chain: " + " -> ".join(answer.chained[target].path))
        answer.node_role = _fold(node_how)
        return answer


def _fold(hows: list[str]) -> list[str]:
    """The ways to the node role, deduplicated per (how) with the namespaces folded."""
    by_how: dict[str, list[str]] = {}
    for entry in hows:
        if entry.startswith("chain: "):
            by_how.setdefault(entry, [])
            continue
        namespace, _, how = entry.partition(": ")
        by_how.setdefault(how, []).append(namespace)
    out = []
    for how, namespaces in by_how.items():
        if not namespaces:
            out.append(how)
            continue
        names = sorted(set(namespaces))
        shown = ", ".join(names[:5]) + (f" (+{len(names) - 5} more)" if len(names) > 5 else "")
        out.append(f"{how} in {shown}")
    return out


def _may_assume(documents: tuple[dict[str, Any], ...]) -> bool:
    """Cheap pre-check: does any Allow statement name sts:AssumeRole (or use NotAction)?"""
    for document in documents:
        for statement in policy_eval.statements(document):
            if statement.get("Effect") != "Allow":
                continue
            if "NotAction" in statement:
                return True
            actions = statement.get("Action")
            for action in actions if isinstance(actions, list) else [actions]:
                if isinstance(action, str) and policy_eval.wildcard_match(action, ASSUME, ignore_case=True):
                    return True
    return False


def run_join(world: World, subjects: list[Subject] | None = None,
             progress: Callable[[int], None] | None = None) -> tuple[Join, list[SubjectAnswer]]:
    join = Join(world)
    join.index_pods()
    chosen = subjects if subjects is not None else sorted(world.rbac.grants)
    answers = []
    for index, subject in enumerate(chosen):
        answer = join.answer(subject)
        if answer.run or answer.exec or answer.edit_allowed_roles:
            answers.append(answer)
        if progress and index % 1000 == 0:
            progress(index)
    return join, answers
