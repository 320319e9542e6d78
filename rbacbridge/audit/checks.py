"""The audit's rules: collected state in, findings out. Pure (no I/O), so every rule is testable on
plain objects; trust and permission questions go to rbacbridge.policy_eval, the network plugin to
rbacbridge.kube.detect_interface, a pod's unreadiness to rbacbridge.kube.pod_not_ready_reason."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from rbacbridge import policy_eval
from rbacbridge.audit.collect import AwsState, KubeState, RoleInfo
from rbacbridge.audit.findings import HIGH, MEDIUM, Finding
from rbacbridge.audit.kube2iam import IMDSV2_VERSION, Interceptor, find_interceptors

ROLE_ANNOTATION = "iam.amazonaws.com/role"
NODE = "<node role>"  # a default role that is the node role itself


@dataclass
class Inputs:
    config: Any
    config_given: bool
    kube: KubeState | None = None
    allow_absent: bool = False  # --allow-absent: nothing installed is expected, not a finding
    aws: AwsState | None = None


@dataclass
class Outcome:
    findings: list[Finding] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    checked: list[str] = field(default_factory=list)

    def add(self, *findings: Finding) -> None:
        self.findings.extend(findings)


# --- small readers over API objects ---------------------------------------------------------------


def _meta(obj: dict[str, Any]) -> dict[str, Any]:
    return obj.get("metadata") or {}


def pod_ref(pod: dict[str, Any]) -> str:
    return f"Pod {_meta(pod).get('namespace')}/{_meta(pod).get('name')}"


def _active(pod: dict[str, Any]) -> bool:
    return (pod.get("status") or {}).get("phase") not in ("Succeeded", "Failed")


def _host_network(pod: dict[str, Any]) -> bool:
    return bool((pod.get("spec") or {}).get("hostNetwork"))


def _time(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    except ValueError:
        return None


def pod_started(pod: dict[str, Any]) -> datetime | None:
    status = pod.get("status") or {}
    if status.get("startTime"):
        return _time(status["startTime"])
    starts = [_time(((c.get("state") or {}).get("running") or {}).get("startedAt")) for c in status.get("containerStatuses") or []]
    starts = [s for s in starts if s]
    return min(starts) if starts else _time(_meta(pod).get("creationTimestamp"))


def pod_ready_since(pod: dict[str, Any]) -> datetime | None:
    """When the pod became Ready (None when it is not ready)."""
    status = pod.get("status") or {}
    ready = next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), None)
    if not ready or ready.get("status") != "True":
        return None
    if ready.get("lastTransitionTime"):
        return _time(ready["lastTransitionTime"])
    starts = [_time(((c.get("state") or {}).get("running") or {}).get("startedAt")) for c in status.get("containerStatuses") or []]
    starts = [s for s in starts if s]
    return max(starts) if starts else pod_started(pod)


def _restarts(pod: dict[str, Any]) -> int:
    return sum(int(c.get("restartCount") or 0) for c in (pod.get("status") or {}).get("containerStatuses") or [])


def _instance_of(node: dict[str, Any]) -> str | None:
    from rbacbridge.kube import parse_provider_id

    return parse_provider_id((node.get("spec") or {}).get("providerID"))[1]


def _list(items: list[str], limit: int = 5) -> str:
    return ", ".join(items[:limit]) + (f" (+{len(items) - limit} more)" if len(items) > limit else "")


# --- Kubernetes rules -------------------------------------------------------------------------------


def check_kube(inputs: Inputs, out: Outcome) -> list[Interceptor]:
    kube = inputs.kube
    assert kube is not None
    interceptors = find_interceptors(kube.daemonsets)
    kube2iams = [i for i in interceptors if i.tool == "kube2iam"]
    out.checked += ["kube2iam-daemonset", "kube2iam-absent", "multiple-interceptors", "node-without-kube2iam",
                    "host-interface-mismatch", "namespace-without-allowed-roles", "pod-started-before-kube2iam",
                    "hostnetwork-pod-in-restricted-namespace", "debug-enabled"]
    if inputs.config_given:
        out.checked.append("namespace-allows-managed-role")
    for i in kube2iams:
        out.add(Finding("kube2iam-daemonset", [i.ref], i.summary(), f"kube2iam {i.ref}: {i.image} on port {i.port}, interface {i.interface}",
                        details={"image": i.image, "args": i.shown_args, "port": i.port, "interface": i.interface, "helm": i.helm}))
    if not kube2iams and inputs.allow_absent:
        out.notes.append(f"{len(kube.daemonsets)} DaemonSet(s), none runs kube2iam (--allow-absent: expected)")
    elif not kube2iams:
        out.add(Finding("kube2iam-absent", ["cluster"], f"{len(kube.daemonsets)} DaemonSet(s), none runs kube2iam"))
    if len(interceptors) > 1:
        out.add(Finding("multiple-interceptors", [i.ref for i in interceptors],
                        "; ".join(f"{i.ref} ({i.tool}, {i.image}, port {i.port if i.tool == 'kube2iam' else '?'})" for i in interceptors),
                        f"{len(interceptors)} interceptors for 169.254.169.254: whichever rule comes first on a node wins"))
    _check_interface(kube, kube2iams, out)
    for i in kube2iams:
        if i.debug:
            out.add(Finding("debug-enabled", [i.ref], next((a for a in i.args if a.startswith("--debug")), "--debug"),
                            f"{i.ref} serves /debug/store (every pod's role) on port {i.port}"))
    ready_at = _check_node_coverage(kube, kube2iams, out)
    _check_started_before(kube, kube2iams, ready_at, out)
    _check_namespaces(kube, kube2iams, out)
    _check_outsider_namespaces(inputs, kube2iams, out)
    return interceptors


def _check_outsider_namespaces(inputs: Inputs, kube2iams: list[Interceptor], out: Outcome) -> None:
    """A namespace of no tenant whose allowed-roles match a tenant's role or the node role (kube/namespaces.py).
    Which namespaces are the tenants' and which roles they get is in the configuration: checked with -c only."""
    from rbacbridge.kube import ALLOWED_ROLES, add_pod_evidence, find_exposures, managed_roles, shorten

    kube, cfg = inputs.kube, inputs.config
    assert kube is not None
    if not inputs.config_given:
        out.notes.append("namespace-allows-managed-role not checked: give the configuration (-c) that names the tenants")
        return
    if kube2iams and not all(i.namespace_restrictions for i in kube2iams):
        return  # without --namespace-restrictions kube2iam reads no allowed-roles (namespace-without-allowed-roles says so)
    base = next((i.base_role_arn for i in kube2iams if i.base_role_arn), None)
    account = cfg.account_id or (policy_eval.account_of(base) if base else None) or ""
    tenant_namespaces = {ns for t in cfg.tenants for ns in t.namespaces}
    exposures = find_exposures(kube.namespaces, tenant_namespaces, managed_roles(cfg, account), account)
    pods_by_namespace: dict[str, list[dict[str, Any]]] = {}
    for pod in kube.pods:
        pods_by_namespace.setdefault(_meta(pod).get("namespace", ""), []).append(pod)
    add_pod_evidence(exposures, lambda ns: pods_by_namespace.get(ns, []), account)
    for e in exposures:
        evidence = f"{ALLOWED_ROLES}: {shorten(e.raw)}; matches {_list([r.arn for r in e.roles], 3)}"
        if e.pods:
            evidence += "; " + _list(e.pods, 3)
        out.add(Finding("namespace-allows-managed-role", [f"Namespace {e.namespace}"] + [f"Role {r.name}" for r in e.roles],
                        evidence, e.message(), details={"roles": [r.arn for r in e.roles], "pods": e.pods}))


def _check_interface(kube: KubeState, kube2iams: list[Interceptor], out: Outcome) -> None:
    from rbacbridge.kube import FALLBACK_INTERFACE, detect_interface

    if not kube2iams:
        return
    expected, reason = detect_interface(kube.daemonsets, [p for p in kube.pods if _meta(p).get("namespace") == "kube-system"])
    if expected == FALLBACK_INTERFACE:
        out.notes.append(f"--host-interface not checked: no known network plugin found ({reason})")
        return
    for i in kube2iams:
        if i.interface != expected:
            out.add(Finding("host-interface-mismatch", [i.ref], f"--host-interface={i.interface}; {reason}",
                            f"{i.ref} intercepts on {i.interface}, the pods use {expected}: their calls are not intercepted",
                            details={"interface": i.interface, "expected": expected}))


def _check_node_coverage(kube: KubeState, kube2iams: list[Interceptor], out: Outcome) -> dict[str, datetime]:
    """Each node needs a ready kube2iam pod. Returns node name -> when its kube2iam pod became ready."""
    from rbacbridge.kube import pod_not_ready_reason

    if not kube2iams:
        return {}
    by_node: dict[str, list[tuple[Interceptor, dict[str, Any]]]] = {}
    for pod in kube.pods:
        for i in kube2iams:
            if i.owns(pod):
                by_node.setdefault((pod.get("spec") or {}).get("nodeName") or "", []).append((i, pod))
    workload: dict[str, int] = {}
    for pod in kube.pods:
        if _active(pod) and not _host_network(pod):
            node = (pod.get("spec") or {}).get("nodeName") or ""
            workload[node] = workload.get(node, 0) + 1
    ready_at: dict[str, datetime] = {}
    for node in kube.nodes:
        name = _meta(node).get("name", "")
        mine = by_node.get(name, [])
        ready = [t for t in (pod_ready_since(p) for _, p in mine) if t is not None]
        if ready:
            ready_at[name] = min(ready)
            continue
        reasons = []
        for i in kube2iams:
            pods = [p for j, p in mine if j is i]
            if pods:
                pod = pods[0]
                why = pod_not_ready_reason(pod) or "not ready"
                restarts = _restarts(pod)
                reasons.append(f"{pod_ref(pod)} {why}" + (f" ({restarts} restarts)" if restarts else ""))
            else:
                why = i.unschedulable_reason(node)
                reasons.append(f"{i.ref}: {why}" if why else f"{i.ref}: no pod scheduled on the node")
        pods_there = workload.get(name, 0)
        severity = HIGH if pods_there else MEDIUM
        out.add(Finding("node-without-kube2iam", [f"Node {name}"], "; ".join(reasons),
                        f"node {name} has no ready kube2iam pod; {pods_there} pod(s) there get the node role",
                        severity=severity, details={"pods": pods_there}))
    return ready_at


def _check_started_before(kube: KubeState, kube2iams: list[Interceptor], ready_at: dict[str, datetime], out: Outcome) -> None:
    early: dict[str, list[tuple[dict[str, Any], datetime]]] = {}
    for pod in kube.pods:
        node = (pod.get("spec") or {}).get("nodeName")
        if not node or node not in ready_at or not _active(pod) or _host_network(pod):
            continue
        if any(i.owns(pod) for i in kube2iams):
            continue
        started = pod_started(pod)
        if started is not None and started < ready_at[node]:
            early.setdefault(node, []).append((pod, started))
    for node, pods in sorted(early.items()):
        refs = [pod_ref(p) for p, _ in pods]
        evidence = f"kube2iam ready on {node} at {ready_at[node].isoformat()}; " + _list(
            [f"{_meta(p).get('namespace')}/{_meta(p).get('name')} started {t.isoformat()}" for p, t in pods])
        out.add(Finding("pod-started-before-kube2iam", refs, evidence,
                        f"{len(pods)} pod(s) on node {node} started before kube2iam was ready there",
                        fix=f"restart them: kubectl delete pod -n NAMESPACE NAME ({_list(refs, 3)})"))


def _check_namespaces(kube: KubeState, kube2iams: list[Interceptor], out: Outcome) -> None:
    from rbacbridge.kube import ALLOWED_ROLES

    restricted = {_meta(n).get("name") for n in kube.namespaces if ALLOWED_ROLES in (_meta(n).get("annotations") or {})}
    restrictions_on = bool(kube2iams) and all(i.namespace_restrictions for i in kube2iams)
    annotated: dict[str, list[str]] = {}
    for pod in kube.pods:
        if not _active(pod):
            continue
        namespace = _meta(pod).get("namespace", "")
        role = (_meta(pod).get("annotations") or {}).get(ROLE_ANNOTATION)
        if role and namespace not in restricted:
            annotated.setdefault(namespace, []).append(f"{_meta(pod).get('name')} ({ROLE_ANNOTATION}={role})")
        if _host_network(pod) and namespace in restricted and not any(i.owns(pod) for i in kube2iams):
            out.add(Finding("hostnetwork-pod-in-restricted-namespace", [pod_ref(pod)],
                            f"spec.hostNetwork: true in namespace {namespace} ({ALLOWED_ROLES} set)",
                            f"{pod_ref(pod)} uses the host network: kube2iam never sees its calls, it gets the node role"))
    for namespace, pods in sorted(annotated.items()):
        if restrictions_on:
            message = f"namespace {namespace}: kube2iam (--namespace-restrictions) refuses these pods' roles"
            severity = MEDIUM
        else:
            message = f"namespace {namespace}: no --namespace-restrictions, so any pod may name any role the node role can assume"
            severity = HIGH
        out.add(Finding("namespace-without-allowed-roles", [f"Namespace {namespace}"],
                        f"no {ALLOWED_ROLES} annotation; annotated pods: {_list(pods, 3)}; --namespace-restrictions "
                        + ("on" if restrictions_on else "off"), message, severity=severity))


# --- IMDSv2 (Kubernetes + EC2) --------------------------------------------------------------------


def check_imdsv2(inputs: Inputs, kube2iams: list[Interceptor], out: Outcome) -> None:
    kube, aws = inputs.kube, inputs.aws
    assert kube is not None and aws is not None
    out.checked.append("image-without-imdsv2")
    for i in kube2iams:
        version = i.version
        if version is None:
            out.notes.append(f"{i.ref}: image {i.image} has no version tag; IMDSv2 support not checked")
            continue
        if version >= IMDSV2_VERSION:
            continue
        hits = []
        for node in kube.nodes:
            if i.unschedulable_reason(node):
                continue
            instance_id = _instance_of(node)
            instance = aws.instances.get(instance_id or "")
            if instance and (instance.get("MetadataOptions") or {}).get("HttpTokens") == "required":
                hits.append((_meta(node).get("name"), instance_id))
        if hits:
            out.add(Finding("image-without-imdsv2", [i.ref] + [f"Node {n}" for n, _ in hits],
                            f"image {i.image}; " + _list([f"{iid} (node {n}) MetadataOptions.HttpTokens=required" for n, iid in hits]),
                            f"{i.ref} runs {i.image} (< 0.13.0): it crash-loops with 401 on {len(hits)} node(s) requiring IMDSv2 tokens"))


# --- IAM rules ------------------------------------------------------------------------------------


def _role_name(value: str) -> str:
    return policy_eval.role_name_of(value) or value.rsplit("/", 1)[-1]


def node_roles(inputs: Inputs, out: Outcome) -> list[RoleInfo]:
    """The roles the nodes run as: from the instances' profiles, else the configured node role."""
    aws = inputs.aws
    assert aws is not None
    found: dict[str, RoleInfo] = {}
    for instance in aws.instances.values():
        profile = (instance.get("IamInstanceProfile") or {}).get("Arn")
        for role in aws.roles_of_profile(profile) if profile else []:
            found[role.name] = role
    if not found and inputs.config_given:
        role = aws.roles.get(inputs.config.node_role)
        if role is None:
            out.notes.append(f"node role {inputs.config.node_role} (iam.node_role) does not exist: the pod roles' trust "
                             "and permissions not checked")
        else:
            found[role.name] = role
    elif not found:
        out.notes.append("node role unknown (no instance with an instance profile found, and no -c naming it): "
                         "IAM checks skipped")
    return sorted(found.values(), key=lambda r: r.name)


def _default_roles(inputs: Inputs, kube2iams: list[Interceptor]) -> list[tuple[str, str, str]]:
    """(role name or NODE, evidence, object) for each default role kube2iam hands unannotated pods."""
    if kube2iams:
        out = []
        for i in kube2iams:
            if i.auto_discover_default_role:
                out.append((NODE, "--auto-discover-default-role", i.ref))
            elif i.default_role:
                out.append((_role_name(i.default_role), f"--default-role={i.default_role}", i.ref))
        return out
    if inputs.config_given:
        cfg = inputs.config
        if cfg.default_role in ("auto", "node") or cfg.effective_default_role == cfg.node_role:
            return [(NODE, f"kube2iam.default_role: {cfg.default_role}", "config kube2iam.default_role")]
        return [(cfg.effective_default_role, f"kube2iam.default_role: {cfg.default_role}", "config kube2iam.default_role")]
    return []


def check_escalation_offline(inputs: Inputs, kube2iams: list[Interceptor], out: Outcome) -> None:
    """Without AWS: a default role that is the node role is the escalation, whatever the policies say."""
    out.checked.append("default-role-escalation")
    for role, evidence, obj in _default_roles(inputs, kube2iams):
        if role == NODE:
            out.add(Finding("default-role-escalation", [obj], evidence,
                            "unannotated pods get the node role, which may assume every pod role"))
        else:
            out.notes.append(f"{obj}: default role {role} not checked against IAM (the aws part is not selected)")
    if kube2iams:
        out.notes.append("IMDSv2 support, pod roles' trust and permissions not checked (the aws part is not selected)")


def check_install(inputs: Inputs, out: Outcome) -> bool:
    """With -c: the roles the configuration names (node role, default role, tenants' roles) must exist. None of
    them is `install-absent` (a note with --allow-absent); the node role missing while others exist is
    `install-partial`, whatever the flags (with the node role there, a missing pod role is `pod-role-missing`).
    Returns False when nothing is installed and that was expected: the other IAM rules have nothing to judge."""
    aws, cfg = inputs.aws, inputs.config
    assert aws is not None
    out.checked += ["install-absent", "install-partial"]
    wanted: dict[str, str] = {cfg.node_role: "iam.node_role"}
    if cfg.effective_default_role != cfg.node_role:
        wanted.setdefault(cfg.effective_default_role, "kube2iam.default_role")
    for tenant in cfg.tenants:
        arn = cfg.tenant_role_arn(tenant, aws.account)
        if policy_eval.account_of(arn) in (None, aws.account):
            wanted.setdefault(_role_name(arn), "iam.pod_role" if tenant.legacy else f"tenant {tenant.name}")
    missing = [f"role {name} ({where})" for name, where in wanted.items() if name not in aws.roles]
    objects = [f"Account {aws.account}"]
    if len(missing) == len(wanted):
        if inputs.allow_absent:
            out.notes.append(f"none of the {len(wanted)} roles the configuration names exists in account {aws.account} "
                             "(--allow-absent: expected): IAM checks skipped")
            return False
        out.add(Finding("install-absent", objects, f"missing: {_list(missing, 4)}",
                        f"none of the {len(wanted)} roles the configuration names exists in account {aws.account}",
                        details={"missing": missing}))
    elif cfg.node_role not in aws.roles:
        out.add(Finding("install-partial", objects, f"missing: {_list(missing, 4)}",
                        f"{len(missing)} of the {len(wanted)} roles the configuration names are missing in account "
                        f"{aws.account}, the node role among them", details={"missing": missing}))
    return True


def check_iam(inputs: Inputs, kube2iams: list[Interceptor], out: Outcome) -> None:
    aws = inputs.aws
    assert aws is not None
    if inputs.config_given and not check_install(inputs, out):
        return
    out.checked += ["default-role-escalation", "default-role-self-trust", "pod-role-missing", "pod-role-untrusted",
                    "pod-role-not-permitted"]
    nodes = node_roles(inputs, out)
    node_names = {r.name for r in nodes}
    wanted: dict[str, tuple[list[str], list[str]]] = {}  # role ARN -> (asked as, objects)

    def want(arn: str, asked: str, obj: str) -> None:
        entry = wanted.setdefault(arn, ([], []))
        if asked not in entry[0]:
            entry[0].append(asked)
        entry[1].append(obj)

    base = next((i.base_role_arn for i in kube2iams if i.base_role_arn), None) or f"arn:{aws.partition}:iam::{aws.account}:role/"
    for role, evidence, obj in _default_roles(inputs, kube2iams):
        node_text = f" = node role {', '.join(sorted(node_names))}" if node_names else ""
        if role == NODE or role in node_names:
            out.add(Finding("default-role-escalation", [obj] + [f"Role {n}" for n in sorted(node_names)], evidence + node_text,
                            "unannotated pods get the node role, which may assume every pod role"))
            for node in nodes:
                if not policy_eval.trust_allows(node.trust, node.arn):
                    out.add(Finding("default-role-self-trust", [f"Role {node.name}", obj],
                                    f"{evidence}; trust of {node.name} names {_list(policy_eval.trusted_principals(node.trust)) or 'no AWS principal'}, not {node.arn}",
                                    f"role {node.name} is kube2iam's default role but does not trust its own ARN: unannotated pods get no credentials"))
            continue
        info = aws.roles.get(role)
        want(f"arn:{aws.partition}:iam::{aws.account}:role/{role}" if info is None else info.arn, evidence, f"default role ({obj})")
        if info is None:
            continue
        docs = aws.documents(info)
        probe = f"arn:{aws.partition}:iam::{aws.account}:role/any-other-role"
        targets = [r.arn for r in sorted(aws.roles.values(), key=lambda r: r.name) if r.name != role
                   and policy_eval.is_allowed(docs, "sts:AssumeRole", r.arn)]
        if not targets and policy_eval.is_allowed(docs, "sts:AssumeRole", probe):
            targets = [f"{probe} (any role)"]
        if targets:
            out.add(Finding("default-role-escalation", [obj, f"Role {role}"], f"{evidence}; its policies allow sts:AssumeRole on {_list(targets, 3)}",
                            f"default role {role} may assume other roles: any unannotated pod can chain into them"))
    if inputs.kube is not None:
        for pod in inputs.kube.pods:
            value = (_meta(pod).get("annotations") or {}).get(ROLE_ANNOTATION)
            if value and _active(pod):
                want(value if value.startswith("arn:") else base + value, f"{ROLE_ANNOTATION}={value}", pod_ref(pod))
    if inputs.config_given:
        cfg = inputs.config
        for tenant in cfg.tenants:
            if tenant.legacy:  # the article's tenant, from the legacy key
                want(cfg.tenant_role_arn(tenant, aws.account), f"iam.pod_role: {tenant.role}", "config iam.pod_role")
            else:
                want(cfg.tenant_role_arn(tenant, aws.account), f"tenant {tenant.name} role: {tenant.existing_role_arn or tenant.role}",
                     f"config tenant {tenant.name}")
    if nodes:
        for arn, (asked, objects) in sorted(wanted.items()):
            _check_pod_role(aws, nodes, arn, asked, objects, out)
    for arn in sorted(aws.unreadable):
        out.notes.append(f"policy {arn} could not be read: the roles holding it were judged without it")


def _check_pod_role(aws: AwsState, nodes: list[RoleInfo], arn: str, asked: list[str], objects: list[str], out: Outcome) -> None:
    name = _role_name(arn)
    account = policy_eval.account_of(arn)
    how = "; ".join(asked[:3])
    if account and account != aws.account:
        out.notes.append(f"role {arn} is in account {account}, not {aws.account}: not checked")
        return
    role = aws.role_by_arn(arn)
    if role is None:
        out.add(Finding("pod-role-missing", objects, f"{how} -> {arn}: no such role in account {aws.account}",
                        f"{len(objects)} object(s) ask for role {name}, which does not exist"))
        return
    for node in nodes:
        if not policy_eval.trust_allows(role.trust, node.arn):
            principals = policy_eval.trusted_principals(role.trust)
            out.add(Finding("pod-role-untrusted", [f"Role {name}", *objects],
                            f"trust of {name} names {_list(principals) or 'no AWS principal'}; the node role is {node.arn}",
                            f"role {name} does not trust node role {node.name}: kube2iam cannot assume it for {len(objects)} object(s)",
                            details={"trusted": principals, "node_role": node.arn}))
        decision = policy_eval.evaluate(aws.documents(node), "sts:AssumeRole", arn)
        if not decision.allowed:
            out.add(Finding("pod-role-not-permitted", [f"Role {node.name}", f"Role {name}", *objects],
                            f"sts:AssumeRole on {arn} by {node.name}'s policies: {decision}",
                            f"node role {node.name} may not assume {name}: kube2iam fails for {len(objects)} object(s)"))
