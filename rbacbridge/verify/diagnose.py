"""Live facts that sharpen the blame or fail verify on their own: the nodes' DNAT rules, the live IAM
documents and allowed-roles annotations, missing kube2iam pods, drift (from the one planner) and
hostNetwork pods in restricted namespaces. Read-only."""

from __future__ import annotations

import json
import re
from typing import Any

from rbacbridge.config import Config
from rbacbridge.verify.model import (ALLOWED_ROLES_ANNOTATION, DRIFT, DRIFT_FINDING, HOST_NETWORK_FINDING, INTERCEPTION,
                                     KUBE2IAM, OUTSIDER_FINDING, PERMISSIONS, TRUST, Diagnostics, Finding)


def _get(obj: Any, path: str) -> Any:
    """A field of a Kubernetes object given as a dict (camelCase) or a client model (snake_case)."""
    for part in path.split("."):
        if obj is None:
            return None
        if isinstance(obj, dict):
            obj = obj.get(part)
        else:
            obj = getattr(obj, re.sub(r"(?<!^)(?=[A-Z])", "_", part).lower(), None)
    return obj



def interception_problems(ctx: Any, node_names: set[str]) -> dict[str, tuple[bool, str]]:
    """Per node: what is wrong with its DNAT rules for 169.254.169.254 (read over SSH), if anything."""
    from rbacbridge import nodes
    from rbacbridge.nodes.verdicts import CONFLICT, FOREIGN, STALE

    problems: dict[str, tuple[bool, str]] = {}
    try:
        states = nodes.inspect_all(ctx, teardown=False)
    finally:
        nodes.close_sessions(ctx)
    for state in states:
        if state.ref.name not in node_names or state.classification is None:
            continue
        rules, desired = state.classification.rules, state.classification.desired
        want = f"{desired.host_ip}:{desired.port}" if desired else "kube2iam"
        first = rules[0] if rules else None
        if first is not None and first.verdict in (STALE, FOREIGN, CONFLICT):
            problems[state.ref.name] = (False, f"the first DNAT rule for 169.254.169.254 is not kube2iam's at {want} "
                                               f"({first.reason}) and wins: `{first.rule.text}` (rbacbridge iptables fix)")
        elif state.classification.missing:
            problems[state.ref.name] = (True, f"kube2iam's DNAT rule for 169.254.169.254 to {want} is missing: "
                                              "metadata calls reach the instance profile (kube2iam not running?)")
    return problems


def live_diagnostics(ctx: Any) -> Diagnostics:
    """Best effort: the live IAM documents of the managed roles (the tenants', the default and the node
    role) and each tenant namespace's (and kubernetes.namespace's) allowed-roles annotation."""
    config: Config = ctx.config
    diag = Diagnostics()
    try:
        from rbacbridge.aws import gateway as aws_gateway, live_documents

        iam = aws_gateway(ctx).client("iam")
        roles = [config.node_role, config.effective_default_role] + [t.role for t in config.tenants if t.managed]
        diag.documents = live_documents(iam, list(dict.fromkeys(roles)))
    except Exception as exc:  # noqa: BLE001 - diagnostics only sharpen the blame
        ctx.facts.setdefault("notes", []).append(f"could not read the IAM documents for diagnosis: {type(exc).__name__}")
    gateway = ctx.gateways.get("kube")
    read_namespace = getattr(gateway, "read_namespace", None)
    if read_namespace is None and hasattr(gateway, "get"):  # rbacbridge.kube.KubeGateway
        read_namespace = lambda name: gateway.get("Namespace", name)  # noqa: E731
    if read_namespace is None:
        return diag
    for name in dict.fromkeys([config.namespace] + [ns for t in config.tenants for ns in t.namespaces]):
        try:
            namespace = read_namespace(name)
            raw = (_get(namespace, "metadata.annotations") or {}).get(ALLOWED_ROLES_ANNOTATION)
            diag.allowed_roles[name] = json.loads(raw) if raw else None
            if raw is not None and isinstance(namespace, dict):
                from rbacbridge.kube import owns_annotation

                if not owns_annotation(namespace):
                    ctx.facts.setdefault("notes", []).append(
                        f"namespace {name}'s {ALLOWED_ROLES_ANNOTATION} is not rbacbridge's (another field manager "
                        f"owns it): reported, not trusted; the expected matrix uses the configuration")
        except Exception:  # noqa: BLE001
            pass
    return diag



DRIFT_LAYERS = {("aws", "iam-role"): TRUST, ("aws", "iam-policy"): PERMISSIONS, ("aws", "iam-attachment"): PERMISSIONS,
               ("aws", "iam-inline-policy"): PERMISSIONS}


def drift_findings(ctx: Any) -> tuple[list[Finding], int]:
    """Live state vs what setup wants, from the one planner (aws and kube parts): every planned step whose
    action is not `unchanged` is drift, worded exactly as `rbacbridge plan` words it; a `finding` step (a namespace
    outside the tenants allowing a managed role, rbacbridge.kube.namespaces) is a finding of its own kind. Returns
    (findings, steps compared)."""
    from rbacbridge import planner
    from rbacbridge.plan import FINDING, UNCHANGED

    plan = planner.plan_setup(ctx, parts=("aws", "kube"))
    findings = []
    for step in plan.steps:
        if step.action == UNCHANGED or (step.details or {}).get("stamp_only"):  # aws.setup.STAMP_ONLY: bookkeeping
            continue
        layer = KUBE2IAM if step.system == "kube" else DRIFT_LAYERS.get((step.system, step.kind), DRIFT)
        tenant = tenant_of_step(ctx.config, step)
        subject = f"{step.system} {step.kind} {step.name}" + (f" (tenant {tenant})" if tenant else "")
        kind = OUTSIDER_FINDING if step.action == FINDING else DRIFT_FINDING
        findings.append(Finding(kind, subject, f"{step.action}: {step.message}", step.reason, layer))
    return findings, len(plan.steps)


def tenant_of_step(config: Any, step: Any) -> str | None:
    """The configured tenant a planned step is about, from the configuration (a tenant's namespace, role or
    policy; a Deployment the step names with its tenant), or None — also for the article's own tenant (a
    configuration without `tenants:`), which the subjects never named."""
    if any(t.legacy for t in config.tenants):
        return None
    name = str(step.name)
    if step.kind == "Namespace":
        tenant = config.tenant_of_namespace(name)
        return tenant.name if tenant else None
    if (step.details or {}).get("tenant"):
        return str(step.details["tenant"])
    for tenant in config.tenants:
        if (step.kind == "iam-role" and name == tenant.role) or (step.kind == "iam-policy" and name == tenant.policy):
            return tenant.name
    return None


def _is_kube2iam_pod(pod: Any) -> bool:
    from rbacbridge import kube

    labels = _get(pod, "metadata.labels") or {}
    return labels.get("app.kubernetes.io/name") == "kube2iam" and labels.get(kube.MANAGED_BY) == kube.OWNER


def host_network_findings(gateway: Any, config: Config) -> list[Finding]:
    """hostNetwork pods in namespaces that restrict roles (allowed-roles): kube2iam never sees their metadata
    calls, so they hold the node role whatever the namespace allows."""
    out = []
    for namespace in gateway.list("Namespace"):
        allowed = (_get(namespace, "metadata.annotations") or {}).get(ALLOWED_ROLES_ANNOTATION)
        if allowed is None:
            continue
        name = _get(namespace, "metadata.name")
        for pod in gateway.list_pods(name):
            if not _get(pod, "spec.hostNetwork") or _is_kube2iam_pod(pod) or _get(pod, "status.phase") not in ("Running", "Pending"):
                continue
            pod_name, node = _get(pod, "metadata.name"), _get(pod, "spec.nodeName")
            out.append(Finding(HOST_NETWORK_FINDING, f"pod {name}/{pod_name}",
                               f"hostNetwork pod {name}/{pod_name} on node {node or '?'} bypasses kube2iam",
                               f"namespace {name} restricts roles ({ALLOWED_ROLES_ANNOTATION}: {allowed}), but a hostNetwork pod's "
                               f"metadata calls never pass kube2iam: it holds the node role {config.node_role}",
                               INTERCEPTION, node))
    return out


def kube2iam_missing(gateway: Any, config: Config, node_names: set[str]) -> dict[str, str]:
    """Nodes (among node_names) where no kube2iam pod runs, and what the Node says about why (taints)."""
    from rbacbridge import kube

    running = {_get(p, "spec.nodeName") for p in gateway.list_pods(config.kube2iam_namespace, kube.KUBE2IAM_SELECTOR)
               if _get(p, "status.phase") == "Running"}
    out = {}
    for name in sorted(n for n in node_names if n not in running):
        node = gateway.get("Node", name) or {}
        taints = [f"{t.get('key')}{'=' + t['value'] if t.get('value') else ''}:{t.get('effect')}"
                  for t in (_get(node, "spec.taints") or [])]
        why = f" (node taints: {', '.join(taints)}; does the DaemonSet tolerate them?)" if taints else ""
        out[name] = (f"no kube2iam pod runs on node {name}{why}: its pods' metadata calls reach the instance profile "
                     f"(node role {config.node_role})")
    return out

