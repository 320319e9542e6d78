"""How rbacbridge marks what it owns in the cluster, and small helpers on any API object.

A Kubernetes object is rbacbridge's only when it carries `app.kubernetes.io/managed-by: rbacbridge`;
the namespace annotation `iam.amazonaws.com/allowed-roles` is rbacbridge's only when rbacbridge's field
manager owns it (server-side apply bookkeeping). Every other module of `rbacbridge.kube` reads these
names from here.
"""

from __future__ import annotations

from typing import Any

SYSTEM = "kube"  # the steps' system
FIELD_MANAGER = "rbacbridge"
MANAGED_BY = "app.kubernetes.io/managed-by"
OWNER = "rbacbridge"
ALLOWED_ROLES = "iam.amazonaws.com/allowed-roles"
KUBE2IAM_SELECTOR = f"app.kubernetes.io/name=kube2iam,{MANAGED_BY}={OWNER}"
TENANT_LABEL = "rbacbridge.io/tenant"  # on a declared tenant's workloads (not the article's nginx-annotated)
KUBE2IAM_NAME = "kube2iam"  # rbacbridge's DaemonSet (templates/k8s/daemonset.yaml.j2), in kube2iam.namespace
NAME_LABEL = "app.kubernetes.io/name"


def describe(obj: dict[str, Any]) -> str:
    meta = obj["metadata"]
    return f"{meta['namespace']}/{meta['name']}" if meta.get("namespace") else meta["name"]


def is_ours(obj: dict[str, Any]) -> bool:
    return (obj.get("metadata", {}).get("labels") or {}).get(MANAGED_BY) == OWNER


def owns_annotation(namespace: dict[str, Any], key: str = ALLOWED_ROLES) -> bool:
    """Does rbacbridge's field manager own this annotation (server-side apply bookkeeping)?"""
    for entry in namespace.get("metadata", {}).get("managedFields") or []:
        if entry.get("manager") != FIELD_MANAGER:
            continue
        annotations = (entry.get("fieldsV1") or {}).get("f:metadata", {}).get("f:annotations", {})
        if f"f:{key}" in annotations:
            return True
    return False
