"""Which workloads get which role from kube2iam today, and the ServiceAccount their pods run as.

Reads one list per kind (cluster-wide GETs, nothing else). A workload's pods are its pod template's
(a CronJob's: its job template's); Jobs a CronJob owns and pods any controller owns are counted through
their owner; bare pods are pods without ownerReferences. The role is resolved as kube2iam resolves it
(rbacbridge.audit.who_can.matching): the `iam.amazonaws.com/role` annotation made an ARN with the base role
ARN (full ARNs kept); no annotation in a tenant namespace: the default role.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

WORKLOAD_KINDS = ("Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob", "Pod")
LISTED_KINDS = ("Namespace", "ServiceAccount", *WORKLOAD_KINDS)
ANNOTATION, DEFAULT_ROLE = "annotation", "default role"
ROLE_KEY = "iam.amazonaws.com/role"  # kube2iam's default --iam-role-key


@dataclass(frozen=True)
class Workload:
    kind: str
    namespace: str
    name: str
    service_account: str
    role_arn: str
    source: str  # ANNOTATION | DEFAULT_ROLE
    annotation: str | None
    host_network: bool
    carried: bool  # the migration gives it this role through the new path
    note: str = ""  # why it is not carried

    @property
    def ref(self) -> str:
        return f"{self.kind} {self.namespace}/{self.name}"

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "namespace": self.namespace, "name": self.name,
                "service_account": self.service_account, "role_arn": self.role_arn, "source": self.source,
                "annotation": self.annotation, "host_network": self.host_network, "carried": self.carried,
                "note": self.note}


@dataclass
class Cluster:
    """What the inventory read: every object of the listed kinds, by kind."""

    objects: dict[str, list[dict[str, Any]]]
    issuer: str | None = None
    issuer_error: str | None = None

    def of(self, kind: str) -> list[dict[str, Any]]:
        return self.objects.get(kind, [])


@dataclass
class Inventory:
    workloads: list[Workload]
    # (namespace, ServiceAccount) -> every workload whose pods run as it, role or not ("Kind ns/name")
    users: dict[tuple[str, str], set[str]] = field(default_factory=dict)
    service_accounts: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)


def read_cluster(gw) -> Cluster:
    return Cluster({kind: gw.list(kind) for kind in LISTED_KINDS})


def pod_template(kind: str, obj: dict[str, Any]) -> dict[str, Any]:
    """The pod template ({"metadata", "spec"}) of a workload; a bare pod is its own."""
    spec = obj.get("spec") or {}
    if kind == "Pod":
        return {"metadata": obj.get("metadata") or {}, "spec": spec}
    if kind == "CronJob":
        spec = ((spec.get("jobTemplate") or {}).get("spec")) or {}
    return spec.get("template") or {}


def _owned(obj: dict[str, Any], kinds: tuple[str, ...] | None = None) -> bool:
    refs = (obj.get("metadata") or {}).get("ownerReferences") or []
    return any(kinds is None or r.get("kind") in kinds for r in refs)


def workload_objects(cluster: Cluster):
    """(kind, object) of every workload: Jobs a CronJob owns and pods anything owns are left out."""
    for kind in WORKLOAD_KINDS:
        for obj in cluster.of(kind):
            if kind == "Job" and _owned(obj, ("CronJob",)):
                continue
            if kind == "Pod" and _owned(obj):
                continue
            yield kind, obj


def take_inventory(cluster: Cluster, settings, tenant_namespaces: set[str], role_key: str = ROLE_KEY) -> Inventory:
    """Rows for every workload whose pods get a role from kube2iam (settings: matching.Kube2iamSettings;
    role_key: kube2iam's --iam-role-key)."""
    from rbacbridge.audit.who_can.matching import allowed_patterns

    allowed = {(ns.get("metadata") or {}).get("name", ""): allowed_patterns(
        ((ns.get("metadata") or {}).get("annotations") or {}).get(settings.namespace_key)) for ns in cluster.of("Namespace")}
    inventory = Inventory([])
    for sa in cluster.of("ServiceAccount"):
        meta = sa.get("metadata") or {}
        inventory.service_accounts[(meta.get("namespace", ""), meta.get("name", ""))] = sa
    for kind, obj in workload_objects(cluster):
        meta = obj.get("metadata") or {}
        namespace, name = meta.get("namespace", ""), meta.get("name", "")
        template = pod_template(kind, obj)
        spec = template.get("spec") or {}
        service_account = spec.get("serviceAccountName") or spec.get("serviceAccount") or "default"
        inventory.users.setdefault((namespace, service_account), set()).add(f"{kind} {namespace}/{name}")
        annotation = ((template.get("metadata") or {}).get("annotations") or {}).get(role_key)
        if annotation is None and namespace not in tenant_namespaces:
            continue
        arn = settings.pod_role(annotation)
        if not arn:
            continue
        source = ANNOTATION if annotation is not None else DEFAULT_ROLE
        carried, note = True, ""
        if source == DEFAULT_ROLE:
            carried, note = False, ("the default role is not carried over: after the migration an unannotated pod "
                                    "gets no credentials (annotate the workload to keep a role)")
        elif not settings.allows(allowed.get(namespace), arn):
            carried, note = False, (f"kube2iam refuses this role in namespace {namespace} (allowed-roles): "
                                    "carrying it over would grant access the pods do not have today")
        inventory.workloads.append(Workload(kind, namespace, name, service_account, arn, source, annotation,
                                            bool(spec.get("hostNetwork")), carried, note))
    inventory.workloads.sort(key=lambda w: (w.namespace, WORKLOAD_KINDS.index(w.kind), w.name))
    return inventory


def kube2iam_settings(cluster: Cluster, config, account: str, notes: list[str]):
    """kube2iam's settings from its live DaemonSet's args, else from the configuration (rbacbridge's install):
    (matching.Kube2iamSettings, the pods' role annotation key)."""
    from rbacbridge.audit.kube2iam import find_interceptors
    from rbacbridge.audit.who_can.matching import Kube2iamSettings, normalise_base, role_arn, settings_from_flags

    node_role = config.role_arn(account, config.node_role)
    found = [i for i in find_interceptors(cluster.of("DaemonSet")) if i.tool == "kube2iam"]
    if found:
        if len(found) > 1:
            notes.append(f"kube2iam's settings read from {found[0].ref}, the first of {len(found)} kube2iam DaemonSets")
        settings = settings_from_flags(found[0].flags, found[0].ref, node_role, account)
        return settings, found[0].flags.get("iam-role-key") or ROLE_KEY
    notes.append("no kube2iam DaemonSet found: roles resolved with the configuration's settings")
    base = normalise_base(config.role_arn(account, ""))
    return Kube2iamSettings(restrictions=config.namespace_restrictions, base_arn=base,
                            default_role_arn=role_arn(config.effective_default_role, base), source="config"), ROLE_KEY
