"""Moved to rbacbridge.nodes.pods (the pods transport) and rbacbridge.nodes.targets (resolve_via: ssh or
kubernetes); this import path stays for audit, verify and the tests."""

from rbacbridge.nodes.pods import (COMPONENT_LABEL, HOST_PROBE, NODE_EXEC, SS_FALLBACK, HostProbeRunner, PodSession,
                                   check_pod_security, close_all, delete_pod, kube2iam_pods, open_session, pod_image,
                                   pod_name, pod_namespace, prepare, remove_leftovers, render_pod, selector,
                                   start_host_probes, start_pod)
from rbacbridge.nodes.targets import AUTO, KUBERNETES, SSH, resolve_via

__all__ = ["COMPONENT_LABEL", "HOST_PROBE", "NODE_EXEC", "SS_FALLBACK", "HostProbeRunner", "PodSession",
           "check_pod_security", "close_all", "delete_pod", "kube2iam_pods", "open_session", "pod_image", "pod_name",
           "pod_namespace", "prepare", "remove_leftovers", "render_pod", "selector", "start_host_probes", "start_pod",
           "AUTO", "KUBERNETES", "SSH", "resolve_via"]
