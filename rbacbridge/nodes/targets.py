"""Which nodes this run works on (`NodeRef`), and how they are reached: over SSH or through Kubernetes.

Nodes come from `nodes.hosts` / `--node`, else from the cluster (`rbacbridge.kube.cluster_nodes`).
`--via kubernetes` (or auto without any SSH setting) names the cluster's nodes by name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from rbacbridge.errors import UsageError

SSH, KUBERNETES, AUTO = "ssh", "kubernetes", "auto"
_SSH_FIELDS = ("node_hosts", "ssh_user", "ssh_key", "ssh_port", "known_hosts", "ssh_config", "accept_new_host_keys")


def resolve_via(config, ssh_given: bool | None = None) -> str:
    """ssh or kubernetes. auto: ssh when nodes.hosts / --node or any SSH option is given, else kubernetes."""
    via = getattr(config, "node_via", AUTO) or AUTO
    if via != AUTO:
        return via
    if ssh_given is None:
        ssh_given = bool(config.node_hosts) or any(f in config.explicit for f in _SSH_FIELDS)
    return SSH if ssh_given else KUBERNETES


_NODE_NAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._-]{0,252})$")


@dataclass(frozen=True)
class NodeRef:
    name: str  # how reports name it (Kubernetes node name or the --node text)
    ssh_host: str  # address or ~/.ssh/config alias
    ssh_port: int | None = None
    internal_ip: str | None = None  # from the cluster


def check_node_name(value: str) -> str:
    if not isinstance(value, str) or not _NODE_NAME.fullmatch(value):
        raise UsageError(f"invalid node name {value!r}: letters, digits, '.', '_' and '-' only")
    return value


def via(ctx) -> str:
    """How scripts reach the nodes this run: "ssh" or "kubernetes" (resolve_via)."""
    return ctx.fact("nodes.via", lambda: resolve_via(ctx.config))


def node_refs(ctx) -> list[NodeRef]:
    def compute() -> list[NodeRef]:
        from rbacbridge.nodes.ssh import parse_host_port

        cfg = ctx.config
        if via(ctx) == "kubernetes":
            return _cluster_refs(ctx)
        if cfg.node_hosts:
            refs = []
            for text in cfg.node_hosts:
                host, port = parse_host_port(text)
                refs.append(NodeRef(name=text, ssh_host=check_node_name(host) if ":" not in host else host, ssh_port=port))
            return _unique(refs)
        try:
            from rbacbridge.kube import cluster_nodes  # only when no hosts are configured
        except ImportError:
            raise UsageError("no nodes: give --node HOST[:PORT] or nodes.hosts (cluster discovery is not available)") from None

        ctx.facts["nodes.from_cluster"] = True
        refs = []
        for node in cluster_nodes(ctx):
            name = check_node_name(node.name)
            host = getattr(node, "ssh_host", None) or node.internal_ip
            if not host:
                raise UsageError(f"node {name} has no address to SSH to (set nodes.hosts or --node)")
            ssh_host, port = parse_host_port(str(host))
            if ":" not in ssh_host:
                check_node_name(ssh_host)
            internal = node.internal_ip if iptables_ipv4(node.internal_ip) else None
            refs.append(NodeRef(name=name, ssh_host=ssh_host, ssh_port=port, internal_ip=internal))
        return _unique(refs)

    return ctx.fact("nodes.refs", compute)


def _cluster_refs(ctx) -> list[NodeRef]:
    """--via kubernetes: the cluster's nodes by name (nodes.hosts / --node, if given, name some of them)."""
    from rbacbridge.kube import cluster_nodes

    ctx.facts["nodes.from_cluster"] = True
    found = {node.name: node for node in cluster_nodes(ctx)}
    names = list(ctx.config.node_hosts) or list(found)
    unknown = [name for name in names if name not in found]
    if unknown:
        raise UsageError(f"--via kubernetes: no cluster node named {', '.join(unknown)} (--node / nodes.hosts name Kubernetes nodes here)")
    return _unique([NodeRef(name=check_node_name(name), ssh_host=found[name].internal_ip,
                            internal_ip=found[name].internal_ip if iptables_ipv4(found[name].internal_ip) else None)
                    for name in names])


def iptables_ipv4(value: str | None) -> bool:
    from rbacbridge.nodes.ssh import is_ipv4

    return is_ipv4(value)


def _unique(refs: list[NodeRef]) -> list[NodeRef]:
    seen, out = set(), []
    for ref in refs:
        if ref.name not in seen:
            seen.add(ref.name)
            out.append(ref)
    return out


def ssh_target(ctx, ref: NodeRef):
    from rbacbridge.nodes.ssh import SshTarget

    cfg = ctx.config
    return SshTarget(
        host=ref.ssh_host,
        port=ref.ssh_port or cfg.ssh_port,
        user=cfg.ssh_user,
        key_file=cfg.ssh_key,
        known_hosts=cfg.known_hosts,
        accept_new=cfg.accept_new_host_keys,
        ssh_config=cfg.ssh_config,
        connect_timeout=cfg.ssh_connect_timeout,
        command_timeout=cfg.ssh_command_timeout,
        label=ref.name,
    )
