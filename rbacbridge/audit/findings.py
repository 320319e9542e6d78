"""The findings model: one catalogue of finding kinds (id, default severity, title, fix) and the
Finding each check produces. Pure data, no I/O."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

INFO, LOW, MEDIUM, HIGH = "info", "low", "medium", "high"
SEVERITIES = (INFO, LOW, MEDIUM, HIGH)
RANK = {s: i for i, s in enumerate(SEVERITIES)}
FAIL_ON = (HIGH, MEDIUM, LOW)


@dataclass(frozen=True)
class Kind:
    id: str
    part: str  # aws | kube | nodes (the part whose reads find it)
    severity: str  # default severity (a check may raise or lower it for one finding)
    title: str
    fix: str  # an rbacbridge command where one exists, else what to do
    upstream: str = ""  # kube2iam issue numbers


KINDS: tuple[Kind, ...] = (
    Kind("kube2iam-daemonset", "kube", INFO, "kube2iam DaemonSet found",
         "none needed; `rbacbridge setup --adopt` takes it over"),
    Kind("kube2iam-absent", "kube", HIGH, "no kube2iam DaemonSet: every pod gets the node role",
         "`rbacbridge setup`"),
    Kind("install-absent", "aws", HIGH, "none of the roles the configuration (-c) names exists: nothing to audit",
         "`rbacbridge setup`, or `audit --allow-absent` where nothing is expected yet"),
    Kind("install-partial", "aws", HIGH, "the node role the configuration names is missing, other roles exist",
         "`rbacbridge setup` (or `rbacbridge teardown`) to finish it, or fix iam.node_role in the configuration"),
    Kind("multiple-interceptors", "kube", HIGH, "more than one interceptor for 169.254.169.254",
         "keep one (delete the others), then `rbacbridge iptables fix`", "#44"),
    Kind("node-without-kube2iam", "kube", HIGH, "node without a ready kube2iam pod: its pods get the node role",
         "tolerate the node's taints / fix the crash, or `rbacbridge setup --adopt`", "#170"),
    Kind("image-without-imdsv2", "kube", HIGH, "kube2iam image without IMDSv2 support on instances requiring tokens",
         "`rbacbridge setup --adopt` (kube2iam 0.13.0 or later)", "#282 #382"),
    Kind("host-interface-mismatch", "kube", HIGH, "--host-interface does not match the network plugin",
         "`rbacbridge setup --adopt --host-interface auto`", "#155"),
    Kind("default-role-escalation", "aws", HIGH, "default role is the node role or can assume other roles",
         "set `kube2iam.default_role: dedicated`, then `rbacbridge setup --adopt`", "#140"),
    Kind("default-role-self-trust", "aws", HIGH, "default role is the node role but does not trust itself",
         "`rbacbridge setup --adopt` (the node role trusts its own ARN)", "#235"),
    Kind("pod-role-missing", "aws", HIGH, "annotated pods ask for a role that does not exist",
         "fix the pods' iam.amazonaws.com/role annotation, or create the role (`rbacbridge setup`)", "#231"),
    Kind("pod-role-untrusted", "aws", HIGH, "pod role does not trust the node role's exact ARN",
         "`rbacbridge setup --adopt` (its pod role), or fix the role's trust policy", "#231"),
    Kind("pod-role-not-permitted", "aws", HIGH, "node role's policies do not allow sts:AssumeRole on the pod role",
         "`rbacbridge setup --adopt` (node policy lists the pod roles)", "#231"),
    Kind("namespace-without-allowed-roles", "kube", MEDIUM, "namespace has annotated pods but no allowed-roles annotation",
         "`rbacbridge setup` (annotates its namespace), or annotate iam.amazonaws.com/allowed-roles"),
    Kind("namespace-allows-managed-role", "kube", HIGH, "namespace outside every tenant may ask kube2iam for a tenant's (or the node) role",
         "narrow or remove the namespace's iam.amazonaws.com/allowed-roles (rbacbridge never changes it), or make it a tenant's"),
    Kind("pod-started-before-kube2iam", "kube", HIGH, "pod started before kube2iam was ready on its node",
         "restart the pod (`kubectl delete pod`): it may hold the node role's cached credentials", "#46 #170"),
    Kind("hostnetwork-pod-in-restricted-namespace", "kube", HIGH, "hostNetwork pod in a restricted namespace bypasses kube2iam",
         "drop hostNetwork, or move the pod out of the tenant's namespace"),
    Kind("debug-enabled", "kube", MEDIUM, "kube2iam --debug serves the role map on its port",
         "`rbacbridge setup --adopt` (debug is opt-in)"),
    Kind("iptables-duplicate", "nodes", MEDIUM, "duplicate kube2iam rules on a node",
         "`rbacbridge iptables fix`", "#44 #141"),
    Kind("iptables-stale", "nodes", HIGH, "stale kube2iam rule (old interface, host IP or port)",
         "`rbacbridge iptables fix` (a rule to an old port: `--stale-port PORT`)", "#194 #370"),
    Kind("iptables-conflict", "nodes", HIGH, "a rule to this node on a port another running interceptor uses (two interceptors)",
         "remove one interceptor; `rbacbridge iptables fix --force` deletes the rule", "#44"),
    Kind("iptables-foreign", "nodes", MEDIUM, "another tool's rule for 169.254.169.254",
         "find the tool that owns it; rbacbridge never deletes it"),
    Kind("iptables-missing", "nodes", HIGH, "no kube2iam rule on a node: pods reach the real metadata service",
         "`rbacbridge iptables fix --add-missing`"),
    Kind("iptables-order", "nodes", HIGH, "another rule for 169.254.169.254 comes before kube2iam's and wins",
         "`rbacbridge iptables fix`", "#44"),
)
BY_ID = {k.id: k for k in KINDS}


@dataclass
class Finding:
    kind: str
    objects: list[str]  # e.g. "DaemonSet kube-system/kube2iam", "Node n1", "Role x"
    evidence: str  # the exact value seen
    message: str = ""  # one line, specific to this finding
    severity: str = ""  # empty: the kind's default
    fix: str = ""  # empty: the kind's fix
    details: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        kind = BY_ID[self.kind]  # KeyError on a typo'd id: a bug, not input
        self.severity = self.severity or kind.severity
        self.fix = self.fix or kind.fix
        self.message = self.message or kind.title

    def reaches(self, threshold: str) -> bool:
        return RANK[self.severity] >= RANK[threshold]

    def to_dict(self) -> dict[str, Any]:
        kind = BY_ID[self.kind]
        return {"id": self.kind, "severity": self.severity, "part": kind.part, "title": kind.title,
                "message": self.message, "objects": list(self.objects), "evidence": self.evidence,
                "fix": self.fix, "upstream": kind.upstream, "details": self.details}


@dataclass
class AuditResult:
    parts: tuple[str, ...]
    findings: list[Finding] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what was not checked and why
    errors: list[str] = field(default_factory=list)  # reads that failed: the audit is incomplete
    checked: list[str] = field(default_factory=list)  # finding kinds that were evaluated
    counts: dict[str, int] = field(default_factory=dict)  # objects read per kind
    who_can: Any = None  # rbacbridge.audit.who_can.WhoCan with --who-can

    @property
    def complete(self) -> bool:
        return not self.errors

    def failing(self, threshold: str) -> list[Finding]:
        return [f for f in self.findings if f.reaches(threshold)]

    def sorted_findings(self) -> list[Finding]:
        order = {k.id: i for i, k in enumerate(KINDS)}
        return sorted(self.findings, key=lambda f: (-RANK[f.severity], order[f.kind], f.objects))

    def ids(self) -> set[str]:
        return {f.kind for f in self.findings}


# --- who can obtain which role (`audit --who-can`, rules in rbacbridge.audit.who_can.rules) ---------
KINDS += (
    Kind("who-can-other-tenant-role", "kube", HIGH, "a subject can obtain another tenant's role",
         "narrow the subject's RoleBindings, or the namespaces' iam.amazonaws.com/allowed-roles"),
    Kind("who-can-chain-other-tenant-role", "aws", HIGH, "an sts:AssumeRole chain leads into another tenant's role",
         "remove sts:AssumeRole from the first roles' policies, or narrow the target's trust policy"),
    Kind("who-can-node-role", "kube", HIGH, "a subject who is not a cluster admin can obtain the node role",
         "label the namespace pod-security.kubernetes.io/enforce=baseline, run kube2iam on every node, "
         "set `kube2iam.default_role: dedicated` (`rbacbridge setup --adopt`)"),
    Kind("who-can-edit-allowed-roles", "kube", HIGH, "a subject who is not a cluster admin can edit a namespace's allowed-roles",
         "drop update/patch on namespaces from its roles (the annotation decides which roles kube2iam hands out)"),
    Kind("allowed-roles-absent", "kube", LOW, "namespace where pods can be run has no allowed-roles annotation",
         "annotate iam.amazonaws.com/allowed-roles (`rbacbridge setup` does for its tenants)"),
    Kind("allowed-roles-broader-than-config", "kube", HIGH, "allowed-roles matches roles the configuration does not give the namespace",
         "replace the pattern with the tenant's exact role (`rbacbridge setup --adopt`)", "#341"),
    Kind("hostnetwork-admitted-in-tenant-namespace", "kube", HIGH, "Pod Security admits hostNetwork pods in a tenant's namespace",
         "kubectl label namespace NAME pod-security.kubernetes.io/enforce=baseline"),
)
BY_ID = {k.id: k for k in KINDS}
