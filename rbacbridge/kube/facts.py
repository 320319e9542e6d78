"""Facts about the cluster that other parts use: its nodes (addresses, providerID -> instance id and
zone) and the host interface kube2iam must name (`--host-interface`, from the network plugin found).
Each is read once per run (`ctx.fact`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rbacbridge.errors import RbacbridgeError
from rbacbridge.kube.api import KubeApiError, gateway, note
from rbacbridge.kube.objects import describe


@dataclass
class ClusterNode:
    name: str
    internal_ip: str
    external_ip: str | None
    instance_id: str | None
    zone: str | None
    ssh_host: str


# Network plugin (DaemonSet / pod name prefix in the cluster) -> kube2iam --host-interface.
# Order matters: the AWS VPC CNI decides the pod interface even with Calico on top for policy,
# and canal ships a flannel container too.
NETWORK_PLUGINS: tuple[tuple[str, str, str], ...] = (
    ("aws-node", "eni+", "amazon-vpc-cni"),
    ("cilium", "lxc+", "Cilium"),
    ("canal", "cali+", "Canal"),
    ("calico-node", "cali+", "Calico"),
    ("weave-net", "weave", "Weave Net"),
    ("kube-router", "kube-bridge", "kube-router"),
    ("kube-flannel", "cni0", "flannel"),
    ("openshift-sdn", "tun0", "OpenShift SDN"),
)
FALLBACK_INTERFACE = "docker0"


def parse_provider_id(provider_id: str | None) -> tuple[str | None, str | None]:
    """(zone, instance id) from `aws:///<zone>/<instance-id>`; anything else gives (None, None)."""
    import re

    if not provider_id:
        return None, None
    match = re.fullmatch(r"aws:///([a-z0-9-]+)/(i-[0-9a-f]{8,17})", provider_id)
    if not match:
        return None, None
    return match.group(1), match.group(2)


def node_from_object(obj: dict[str, Any]) -> ClusterNode:
    addresses = obj.get("status", {}).get("addresses") or []
    by_type: dict[str, str] = {}
    for address in addresses:
        by_type.setdefault(address.get("type"), address.get("address"))
    name = obj["metadata"]["name"]
    internal = by_type.get("InternalIP")
    if not internal:
        raise RbacbridgeError(f"node {name} has no InternalIP address in its status")
    external = by_type.get("ExternalIP")
    zone, instance_id = parse_provider_id((obj.get("spec") or {}).get("providerID"))
    return ClusterNode(name, internal, external, instance_id, zone, external or internal)


def cluster_nodes(ctx) -> list[ClusterNode]:
    """The cluster's (selected) nodes, read once per run."""
    def compute() -> list[ClusterNode]:
        objects = gateway(ctx).list("Node", label_selector=ctx.config.node_selector)
        if not objects:
            where = f" matching {ctx.config.node_selector!r}" if ctx.config.node_selector else ""
            raise RbacbridgeError(f"the cluster has no nodes{where}")
        return [node_from_object(o) for o in objects]

    return ctx.fact("cluster_nodes", compute)


def detect_interface(daemonsets: list[dict[str, Any]], pods: list[dict[str, Any]]) -> tuple[str, str]:
    names = [("DaemonSet", describe(o), o["metadata"]["name"]) for o in daemonsets]
    names += [("pod", describe(o), o["metadata"]["name"]) for o in pods]
    for prefix, interface, plugin in NETWORK_PLUGINS:
        for what, full, name in names:
            if name == prefix or name.startswith(prefix + "-"):
                return interface, f"host interface {interface}: {what} {full} found ({plugin})"
    return FALLBACK_INTERFACE, f"host interface {FALLBACK_INTERFACE}: no known network plugin found in the cluster (the article's Docker bridge)"


def host_interface(ctx) -> tuple[str, str]:
    """kube2iam's --host-interface and why: the configured one, or detected from the network plugin."""
    def compute() -> tuple[str, str]:
        configured = ctx.config.host_interface
        if configured != "auto":
            return configured, f"host interface {configured}: set in the configuration"
        gw = gateway(ctx)
        try:
            daemonsets = gw.list("DaemonSet")  # all namespaces: calico-system, kube-flannel, ...
        except KubeApiError as exc:
            if exc.status != 403:
                raise
            daemonsets = gw.list("DaemonSet", "kube-system")
        pods = [] if daemonsets else gw.list("Pod", "kube-system")
        return detect_interface(daemonsets, pods)

    interface, reason = ctx.fact("host_interface", compute)
    note(ctx, reason)
    return interface, reason
