"""Planning the Kubernetes part: desired objects (rbacbridge.kube.manifests) against live state, one
step each.

Only the fields rbacbridge sets are compared (`differences`); setup applies with server-side apply
(field manager `rbacbridge`, force), one PATCH per object that differs, none when nothing does. An
object without rbacbridge's label is a conflict (`--adopt` takes it over). Teardown deletes only
objects labelled `app.kubernetes.io/managed-by: rbacbridge` (`--force` deletes others too), in
reverse order. The namespaces' allowed-roles annotation is planned in rbacbridge.kube.namespaces.
"""

from __future__ import annotations

from typing import Any

from rbacbridge.kube.api import KubeApiError, KubeGateway, applier, deleter, gateway, note
from rbacbridge.kube.facts import FALLBACK_INTERFACE, host_interface
from rbacbridge.kube.interceptors import kube2iam_daemonsets
from rbacbridge.kube.manifests import desired_objects
from rbacbridge.kube.namespaces import (plan_annotation_removal, plan_namespace_annotation, plan_outsider_findings,
                                        plan_stale_annotations)
from rbacbridge.kube.objects import KUBE2IAM_NAME, MANAGED_BY, OWNER, SYSTEM, TENANT_LABEL, describe, is_ours
from rbacbridge.plan import CONFLICT, CREATE, DELETE, LEFT_ALONE, UNCHANGED, UPDATE, Step


def differences(desired: Any, live: Any, path: str = "") -> list[str]:
    """Paths of the fields rbacbridge sets whose live value differs (fields others add are ignored).

    Lists of named items (containers, env, ports, volumes) match by name like server-side apply's
    associative lists; other lists (args, rules) are atomic and must be equal.
    """
    if isinstance(desired, dict):
        if not isinstance(live, dict):
            return [path or "."]
        out = []
        for key, value in desired.items():
            out += differences(value, live.get(key), f"{path}.{key}" if path else key)
        return out
    if isinstance(desired, list) and desired and all(isinstance(i, dict) and "name" in i for i in desired):
        if not isinstance(live, list):
            return [path]
        by_name = {i.get("name"): i for i in live if isinstance(i, dict)}
        out = []
        for item in desired:
            where = f"{path}[{item['name']}]"
            out += differences(item, by_name[item["name"]], where) if item["name"] in by_name else [where]
        return out
    if desired == [] and live is None:
        return []  # the API server drops empty lists (omitempty): an empty tolerations list reads back absent
    return [] if desired == live else [path]


def _comparable(obj: dict[str, Any]) -> dict[str, Any]:
    meta = obj["metadata"]
    out = {k: v for k, v in obj.items() if k not in ("apiVersion", "kind", "metadata")}
    out["metadata"] = {k: meta[k] for k in ("labels", "annotations") if k in meta}
    return out


def _plan_second_kube2iam(ctx, gw: KubeGateway) -> list[Step]:
    """A metadata interceptor rbacbridge does not manage (kube2iam, a kiam agent), anywhere but at
    rbacbridge's own name and namespace (that one is the DaemonSet step's conflict, which --adopt takes
    over): setup must not start a second interceptor next to it."""
    ours = (ctx.config.kube2iam_namespace, KUBE2IAM_NAME)
    steps = []
    for ds in kube2iam_daemonsets(ctx):
        if ds.managed or (ds.namespace, ds.name) == ours:
            continue
        what = "a kiam agent" if ds.tool == "kiam" else "another kube2iam"
        steps.append(Step(
            SYSTEM, CONFLICT, "DaemonSet", ds.where,
            f"{what} runs in the cluster: {ds.describe()}",
            reason=("two kube2iam DaemonSets would fight over the nodes' 169.254.169.254 rule; remove it first "
                    f"(e.g. `helm uninstall` it), or take it over with --adopt after setting kube2iam.namespace to "
                    f"{ds.namespace} (--adopt takes over a kube2iam named kube2iam in kube2iam.namespace)"
                    if ds.name == KUBE2IAM_NAME and ds.tool == "kube2iam" else
                    "two interceptors would fight over the nodes' 169.254.169.254 rule; remove it first "
                    "(e.g. `helm uninstall` it): --adopt takes over only a kube2iam named kube2iam in kube2iam.namespace"),
            details={"namespace": ds.namespace, "name": ds.name, "app_port": ds.port, "installer": ds.installer,
                     "tool": ds.tool}))
    return steps


def plan_setup(ctx) -> list[Step]:
    gw = gateway(ctx)
    interface, _ = host_interface(ctx)
    steps = _plan_second_kube2iam(ctx, gw)
    for obj in desired_objects(ctx.config, interface):
        if obj["kind"] == "Namespace":
            steps.append(plan_namespace_annotation(ctx, gw, obj))
            continue
        meta = obj["metadata"]
        live = gw.get(obj["kind"], meta["name"], meta.get("namespace"))
        name = describe(obj)
        apply = applier(gw, obj)
        if live is None:
            steps.append(Step(SYSTEM, CREATE, obj["kind"], name, f"create {obj['kind']} {name}", run=apply))
            continue
        fields = differences(_comparable(obj), _comparable(live))
        if not is_ours(live):
            if ctx.adopt:
                steps.append(Step(SYSTEM, UPDATE, obj["kind"], name, f"take over {obj['kind']} {name} (--adopt)",
                                  reason=_fields_reason(fields) or "adds rbacbridge's label", run=apply,
                                  details={"fields": fields, "adopt": True}))
            else:
                steps.append(Step(SYSTEM, CONFLICT, obj["kind"], name, f"{obj['kind']} {name} exists and is not rbacbridge's",
                                  reason=f"no {MANAGED_BY}={OWNER} label; --adopt takes it over", details={"fields": fields}))
            continue
        if fields:
            steps.append(Step(SYSTEM, UPDATE, obj["kind"], name, f"update {obj['kind']} {name}",
                              reason=_fields_reason(fields), run=apply, details={"fields": fields}))
        else:
            steps.append(Step(SYSTEM, UNCHANGED, obj["kind"], name, f"{obj['kind']} {name} is up to date"))
    # Annotations rbacbridge set on namespaces that are no tenant's now (or restrictions turned off)
    # go before the Deployments; workloads of removed tenants go last.
    stale = plan_stale_annotations(ctx, gw)
    at = len([s for s in steps if s.kind != "Deployment"])
    steps[at:at] = stale
    steps += _plan_stale_workloads(ctx, gw)
    steps += plan_outsider_findings(ctx, gw)  # namespaces outside every tenant allowing a managed role: findings
    return steps


def _plan_stale_workloads(ctx, gw: KubeGateway, teardown: bool = False) -> list[Step]:
    """Deployments rbacbridge made for a tenant (its labels) that the config no longer lists: deleted."""
    config = ctx.config
    wanted = set() if teardown else {(t.namespace, w) for t in config.tenants for w in t.workloads}
    selector = f"{MANAGED_BY}={OWNER},{TENANT_LABEL}"
    try:
        found = gw.list("Deployment", label_selector=selector)
    except KubeApiError as exc:
        if exc.status != 403:
            raise
        names = sorted({t.namespace for t in config.tenants} | {config.namespace})
        note(ctx, f"cannot list Deployments in all namespaces (403): tenants' workloads looked for in {', '.join(names)} only")
        found = [o for ns in names for o in gw.list("Deployment", ns, label_selector=selector)]
    # the article's nginx-annotated carries no tenant label: found by name where it was made
    legacy = gw.get("Deployment", "nginx-annotated", config.namespace) if (config.namespace, "nginx-annotated") not in wanted else None
    if legacy is not None and is_ours(legacy) and TENANT_LABEL not in (legacy["metadata"].get("labels") or {}):
        found.append(legacy)
    steps = []
    for live in found:
        meta = live["metadata"]
        if (meta.get("namespace"), meta["name"]) in wanted:
            continue
        tenant = (meta.get("labels") or {}).get(TENANT_LABEL) or "nginx-annotated"
        gone = config.tenant_of_namespace(meta.get("namespace", "")) is None or tenant not in {t.name for t in config.tenants}
        why = "no longer in the config" if gone else "no longer lists this workload"
        steps.append(Step(SYSTEM, DELETE, "Deployment", describe(live), f"tenant {tenant} {why}: delete Deployment {describe(live)}",
                          run=deleter(gw, "Deployment", meta["name"], meta.get("namespace")), details={"tenant": tenant}))
    return steps


def _fields_reason(fields: list[str]) -> str:
    return ("differs: " + ", ".join(fields)) if fields else ""


def plan_teardown(ctx) -> list[Step]:
    gw = gateway(ctx)
    config = ctx.config
    steps = []
    # Desired objects give the names; the interface does not matter for deleting.
    import dataclasses

    named = desired_objects(dataclasses.replace(config, namespace_restrictions=True, account_id=config.account_id or "000000000000"), FALLBACK_INTERFACE)
    named_keys = {(o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]) for o in named}
    # what tenants no longer in the config left behind (rbacbridge's labels / field manager) goes first
    steps += [s for s in _plan_stale_workloads(ctx, gw, teardown=True)
              if ("Deployment", *s.name.split("/", 1)) not in named_keys]
    stale_namespaces = [s for s in plan_stale_annotations(ctx, gw, teardown=True)
                        if ("Namespace", None, s.name) not in named_keys]
    for obj in reversed(named):
        meta = obj["metadata"]
        name = describe(obj)
        if obj["kind"] == "Namespace":
            steps.append(plan_annotation_removal(ctx, gw, meta["name"]))
            continue
        if obj["kind"] == "DaemonSet":
            steps += stale_namespaces
        live = gw.get(obj["kind"], meta["name"], meta.get("namespace"))
        if live is None:
            steps.append(Step(SYSTEM, UNCHANGED, obj["kind"], name, f"{obj['kind']} {name} is already gone"))
        elif is_ours(live) or ctx.force:
            steps.append(Step(SYSTEM, DELETE, obj["kind"], name, f"delete {obj['kind']} {name}",
                              reason="" if is_ours(live) else "not labelled as rbacbridge's; deleting because of --force",
                              run=deleter(gw, obj["kind"], meta["name"], meta.get("namespace"))))
        else:
            steps.append(Step(SYSTEM, LEFT_ALONE, obj["kind"], name, f"{obj['kind']} {name} is not rbacbridge's: left alone",
                              reason=f"no {MANAGED_BY}={OWNER} label (--force deletes it anyway)"))
    return steps
