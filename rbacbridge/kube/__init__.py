"""The Kubernetes part: kube2iam's RBAC and DaemonSet, the nginx Deployments, the namespace annotation.

Desired objects come from the Jinja2 templates in `templates/k8s/` (templates are data). Planning reads
each live object and compares only the fields rbacbridge sets; setup applies with server-side apply
(field manager `rbacbridge`, force), one PATCH per object that differs, none when nothing does.
Teardown deletes only objects labelled `app.kubernetes.io/managed-by: rbacbridge` and removes only
the namespace annotation that rbacbridge's field manager owns.

Modules, each importing only those above it:

    objects         the names rbacbridge marks its own with (labels, field manager); describe, is_ours
    api             the gateway: client, one-line errors, paths, exec in a pod; gateway(ctx), note(ctx)
    manifests       desired objects from templates/k8s/, and their text for `render`
    manifest_files  `render --out-dir`: all files or none, never through a link
    facts           the cluster's nodes and the host interface (network plugin)
    interceptors    kube2iam / kiam DaemonSets in the cluster, rbacbridge's own kube2iam and its pods
    namespaces      the allowed-roles annotation: rbacbridge's, and other namespaces allowing a managed role
    planning        plan_setup / plan_teardown (the planner's part interface)
    rollout         after_setup / after_teardown: waiting for the rollout, and for kube2iam's pods to go

Other parts import from this package only (the names below), never from its modules.
"""

from rbacbridge.errors import RbacbridgeError
from rbacbridge.kube.api import KubeApiError, KubeGateway, collection_path, gateway, object_path
from rbacbridge.kube.facts import (FALLBACK_INTERFACE, ClusterNode, cluster_nodes, detect_interface, host_interface,
                                   node_from_object, parse_provider_id)
from rbacbridge.kube.interceptors import kube2iam_daemonset, kube2iam_daemonsets, own_kube2iam, port_users
from rbacbridge.kube.manifest_files import write_manifests
from rbacbridge.kube.manifests import RENDER_FORMATS, desired_objects, render_documents, render_stream, role_reference
from rbacbridge.kube.namespaces import add_pod_evidence, find_exposures, managed_roles, shorten
from rbacbridge.kube.objects import ALLOWED_ROLES, KUBE2IAM_SELECTOR, MANAGED_BY, OWNER, is_ours, owns_annotation
from rbacbridge.kube.planning import plan_setup, plan_teardown
from rbacbridge.kube.rollout import after_setup, after_teardown, pod_not_ready_reason

__all__ = [
    # the planner's part interface
    "plan_setup", "plan_teardown", "after_setup", "after_teardown",
    # the gateway
    "KubeGateway", "KubeApiError", "RbacbridgeError", "gateway", "object_path", "collection_path",
    # ownership marks
    "ALLOWED_ROLES", "KUBE2IAM_SELECTOR", "MANAGED_BY", "OWNER", "is_ours", "owns_annotation",
    # manifests
    "RENDER_FORMATS", "desired_objects", "render_documents", "render_stream", "role_reference", "write_manifests",
    # cluster facts
    "FALLBACK_INTERFACE", "ClusterNode", "cluster_nodes", "detect_interface", "host_interface", "node_from_object",
    "parse_provider_id", "pod_not_ready_reason",
    # interceptors
    "kube2iam_daemonset", "kube2iam_daemonsets", "own_kube2iam", "port_users",
    # namespaces outside every tenant that allow a managed role (audit)
    "add_pod_evidence", "find_exposures", "managed_roles", "shorten",
]
