"""The namespaces' `iam.amazonaws.com/allowed-roles` annotation: rbacbridge's on its tenants' namespaces,
and the check of every other namespace.

rbacbridge's own: with kube2iam.namespace_restrictions, each tenant namespace gets the annotation listing
its tenant's role (set with server-side apply; a value someone else set is a conflict, `--adopt` replaces
it). The annotation rbacbridge's field manager owns on a namespace that is no tenant's any more is removed
(only that field: rbacbridge never creates or deletes a namespace).

Namespaces outside every tenant that may ask kube2iam for a managed role (issue 22, item 9): kube2iam with
`--namespace-restrictions` hands a pod the role its `iam.amazonaws.com/role` annotation names only if the
pod's namespace lists that role in `iam.amazonaws.com/allowed-roles` (a JSON list, each entry matched as a
glob against the role's name or ARN; rbacbridge.verify.expected.role_allowed_in_namespace). Any other
namespace whose list matches a role rbacbridge hands out (a tenant's role, or the node role) lets every pod
there take that tenant's access: `["*"]`, `["client-*"]`, or the exact ARN of tenant C's role.

Such a namespace is not rbacbridge's, so nothing here changes it: `plan` shows it as a `finding` step
(and `plan --exit-code` exits 1), setup shows it and a warning and goes on, verify reports it as a finding
(exit 1), audit as `namespace-allows-managed-role` (high). Pods there that already ask for a matching
role are named as evidence. The dedicated default role is not "managed" here: kube2iam hands it to every
unannotated pod in any namespace anyway. See docs/ownership-drift.md.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from rbacbridge.kube.api import KubeApiError, KubeGateway, applier, note
from rbacbridge.kube.objects import ALLOWED_ROLES, SYSTEM, owns_annotation
from rbacbridge.plan import CONFLICT, DELETE, FINDING, LEFT_ALONE, UNCHANGED, UPDATE, Step

ROLE_ANNOTATION = "iam.amazonaws.com/role"
SHOWN = 160  # characters of a live annotation quoted in a message


# --- rbacbridge's annotation on its tenants' namespaces ----------------------------------------


def _tenant_namespaces(config) -> set[str]:
    return {ns for t in config.tenants for ns in t.namespaces} if config.namespace_restrictions else set()


def plan_stale_annotations(ctx, gw: KubeGateway, teardown: bool = False) -> list[Step]:
    """rbacbridge's allowed-roles annotation on a namespace that no tenant has (any more): removed
    (only rbacbridge's field, on the evidence of its field manager)."""
    config = ctx.config
    keep = set() if teardown else _tenant_namespaces(config)
    try:
        candidates = gw.list("Namespace")
    except KubeApiError as exc:
        if exc.status != 403:
            raise
        names = sorted(_tenant_namespaces(config) | {config.namespace})
        note(ctx, f"cannot list namespaces (403): rbacbridge's allowed-roles annotation looked for in {', '.join(names)} only")
        candidates = [o for o in (gw.get("Namespace", n) for n in names) if o is not None]
    steps = []
    for live in candidates:
        name = live["metadata"]["name"]
        if name in keep or ALLOWED_ROLES not in (live["metadata"].get("annotations") or {}) or not owns_annotation(live):
            continue
        step = plan_annotation_removal(ctx, gw, name, live)
        if teardown:
            step.message = f"{step.message}: no longer a tenant's namespace in the config"
        elif not config.namespace_restrictions:
            step.reason = "kube2iam.namespace_restrictions is off"
        else:
            step.reason = "no tenant in the config has this namespace any more"
        steps.append(step)
    return steps


def plan_namespace_annotation(ctx, gw: KubeGateway, obj: dict[str, Any]) -> Step:
    name = obj["metadata"]["name"]
    value = obj["metadata"]["annotations"][ALLOWED_ROLES]
    live = gw.get("Namespace", name)
    label = f"{name} annotation {ALLOWED_ROLES}"
    if live is None:
        return Step(SYSTEM, CONFLICT, "Namespace", name, f"namespace {name} does not exist",
                    reason="rbacbridge never creates or deletes namespaces: create it first (or set kubernetes.namespace)")
    current = (live["metadata"].get("annotations") or {}).get(ALLOWED_ROLES)
    apply = applier(gw, obj)
    details = {"annotation": ALLOWED_ROLES, "value": value, "live": current}
    if current is None:
        return Step(SYSTEM, UPDATE, "Namespace", name, f"annotate namespace {name}: {ALLOWED_ROLES}={value}",
                    reason="kube2iam --namespace-restrictions allows only the roles listed here", run=apply, details=details)
    if _same_json(current, value):
        return Step(SYSTEM, UNCHANGED, "Namespace", name, f"{label} is up to date", details=details)
    if owns_annotation(live) or ctx.adopt:
        return Step(SYSTEM, UPDATE, "Namespace", name, f"set {label} to {value}", reason=f"is {current}", run=apply, details=details)
    return Step(SYSTEM, CONFLICT, "Namespace", name, f"{label} is already set to {current} by someone else",
                reason="--adopt replaces it with rbacbridge's value", details=details)


def _same_json(a: str, b: str) -> bool:
    try:
        return json.loads(a) == json.loads(b)
    except ValueError:
        return a == b


def plan_annotation_removal(ctx, gw: KubeGateway, namespace: str, live: dict[str, Any] | None = None) -> Step:
    live = live if live is not None else gw.get("Namespace", namespace)
    label = f"{namespace} annotation {ALLOWED_ROLES}"
    current = ((live or {}).get("metadata", {}).get("annotations") or {}).get(ALLOWED_ROLES)
    if current is None:
        return Step(SYSTEM, UNCHANGED, "Namespace", namespace, f"{label} is not set")
    if not owns_annotation(live):
        return Step(SYSTEM, LEFT_ALONE, "Namespace", namespace, f"{label} was not set by rbacbridge: left alone",
                    details={"value": current})
    patch = {"metadata": {"annotations": {ALLOWED_ROLES: None}}}
    return Step(SYSTEM, DELETE, "Namespace", namespace, f"remove {label} (the namespace stays)", details={"value": current},
                run=lambda: gw.merge_patch("Namespace", namespace, patch))


# --- namespaces outside every tenant that allow a managed role ---------------------------------


@dataclass(frozen=True)
class ManagedRole:
    name: str
    arn: str
    whose: str  # "tenant client-c's role", "the node role"


@dataclass
class Exposure:
    namespace: str
    raw: str  # the annotation as it is
    roles: list[ManagedRole]
    pods: list[str] = field(default_factory=list)  # "pod outsider/x asks for client-c-s3"

    def message(self) -> str:
        names = ", ".join(f"{r.name} ({r.whose})" for r in self.roles[:4]) + (" …" if len(self.roles) > 4 else "")
        return (f"namespace {self.namespace} belongs to no tenant, but its {ALLOWED_ROLES} {shorten(self.raw)} "
                f"lets its pods ask kube2iam for {names}")

    def reason(self) -> str:
        text = (f"rbacbridge never changes a namespace it does not manage: narrow or remove its annotation "
                f"(kubectl annotate namespace {self.namespace} {ALLOWED_ROLES}-), or make it a tenant's")
        if self.pods:
            text += "; already asking: " + "; ".join(self.pods[:3]) + (" …" if len(self.pods) > 3 else "")
        return text

    def to_details(self) -> dict[str, Any]:
        return {"annotation": ALLOWED_ROLES, "value": self.raw, "roles": [r.arn for r in self.roles], "pods": list(self.pods)}


def shorten(text: str) -> str:
    return text if len(text) <= SHOWN else text[:SHOWN - 1] + "…"


def managed_roles(config: Any, account: str) -> list[ManagedRole]:
    """The roles kube2iam hands out on rbacbridge's behalf: every tenant's role (also an existing one a
    tenant links) and the node role."""
    out = [ManagedRole(t.role, config.tenant_role_arn(t, account), f"tenant {t.name}'s role") for t in config.tenants]
    out.append(ManagedRole(config.node_role, config.role_arn(account, config.node_role), "the node role"))
    seen: set[str] = set()
    return [r for r in out if not (r.arn in seen or seen.add(r.arn))]


def allowed_patterns(raw: str | None) -> list[str] | None:
    """The annotation as kube2iam reads it: a JSON list of strings; anything else allows nothing."""
    if raw is None:
        return None
    try:
        value = json.loads(raw)
    except ValueError:
        return []
    if not isinstance(value, list):
        return []
    return [v for v in value if isinstance(v, str)]


def _meta(obj: Any) -> dict[str, Any]:
    return (obj or {}).get("metadata") or {}


def find_exposures(namespaces: list[dict[str, Any]], tenant_namespaces: set[str], roles: list[ManagedRole],
                   account: str, skip: set[str] = frozenset()) -> list[Exposure]:
    """Namespaces (API objects) not in `tenant_namespaces` whose allowed-roles match one of `roles`."""
    from rbacbridge.verify.expected import role_allowed_in_namespace

    out = []
    for namespace in sorted(namespaces, key=lambda n: _meta(n).get("name", "")):
        name = _meta(namespace).get("name", "")
        if name in tenant_namespaces or name in skip:
            continue
        raw = (_meta(namespace).get("annotations") or {}).get(ALLOWED_ROLES)
        patterns = allowed_patterns(raw)
        if not patterns:
            continue
        matched = [r for r in roles if role_allowed_in_namespace(r.name, account, patterns, r.arn)]
        if matched:
            out.append(Exposure(name, raw or "", matched))
    return out


def add_pod_evidence(exposures: list[Exposure], pods_of: Any, account: str) -> None:
    """Pods in an exposed namespace already annotated with one of its matching roles (by name or ARN)."""
    for exposure in exposures:
        wanted = {r.name: r for r in exposure.roles} | {r.arn: r for r in exposure.roles}
        partition = exposure.roles[0].arn.split(":")[1] if exposure.roles else "aws"  # the roles' own
        for pod in pods_of(exposure.namespace):
            if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
                continue
            asked = (_meta(pod).get("annotations") or {}).get(ROLE_ANNOTATION)
            role = wanted.get(asked or "") or wanted.get(f"arn:{partition}:iam::{account}:role/{asked}")
            if role is not None:
                exposure.pods.append(f"pod {exposure.namespace}/{_meta(pod).get('name')} asks for {role.name}")


def plan_outsider_findings(ctx: Any, gw: Any) -> list[Step]:
    """The kube part's `finding` steps (plan, setup, verify's drift check). Reads: one list of namespaces,
    and the pods of an exposed namespace only."""
    config = ctx.config
    notes = ctx.facts.setdefault("notes", [])
    if not config.namespace_restrictions:
        return []  # kube2iam reads no allowed-roles at all then; the configuration's own choice
    try:
        namespaces = gw.list("Namespace")
    except KubeApiError as exc:
        if exc.status != 403:
            raise
        notes.append(f"cannot list namespaces (403): namespaces outside the tenants that allow a managed role "
                     f"({ALLOWED_ROLES}) were not checked")
        return []
    account = config.account_id or ""
    tenant_namespaces = {ns for t in config.tenants for ns in t.namespaces}
    # rbacbridge's own annotation on a namespace no tenant has any more is removed by the plan (plan_stale_annotations)
    stale = {_meta(n).get("name", "") for n in namespaces if owns_annotation(n)}
    exposures = find_exposures(namespaces, tenant_namespaces, managed_roles(config, account), account, skip=stale)
    if not exposures:
        return []
    add_pod_evidence(exposures, lambda ns: gw.list_pods(ns), account)
    ctx.facts.setdefault("warnings", []).append(
        f"{len(exposures)} namespace(s) outside every tenant may ask kube2iam for a managed role "
        f"({', '.join(e.namespace for e in exposures)}): rbacbridge does not change them; narrow their {ALLOWED_ROLES}")
    return [Step(SYSTEM, FINDING, "Namespace", e.namespace, e.message(), e.reason(), details=e.to_details())
            for e in exposures]
