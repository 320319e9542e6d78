"""What decides whose a rule is, beyond the rule itself: who uses each port on a node (the cluster's
DaemonSets, rbacbridge's own kube2iam and its pods, the node's listeners), the ports the user names stale,
and the interface kube2iam's rule must name.

With a cluster configured, the DaemonSets that use ports on the nodes (kube2iam, kiam agents, any
DaemonSet declaring a host port: `rbacbridge.kube.port_users`) and rbacbridge's own kube2iam DaemonSet
with its pods by owner UID (`rbacbridge.kube.own_kube2iam`) say who uses each port (`port_evidence`,
listeners first). The interface: `kube2iam.host_interface`, or for `auto` the network plugin's
(`rbacbridge.kube.host_interface`) when a cluster is configured, else the article's docker0.
"""

from __future__ import annotations

from typing import Any

from rbacbridge.errors import UsageError
from rbacbridge.nodes.rules import Desired, check_interface

ARTICLE_INTERFACE = "docker0"
_UNKNOWN = "unknown"  # nodes.own_kube2iam when the cluster could not be asked (403)


def stale_ports(ctx) -> dict[int, str]:
    """Ports the user names stale (nodes.stale_ports, --stale-port): port -> how it was named."""
    ports = tuple(getattr(ctx.config, "node_stale_ports", ()) or ())
    if ctx.config.kube2iam_port in ports:
        raise UsageError(f"invalid stale port {ctx.config.kube2iam_port} (--stale-port, nodes.stale_ports): it is kube2iam.port, "
                         "rbacbridge's current port; name only old ports")
    return {port: "named stale (nodes.stale_ports / --stale-port)" for port in ports}


def _cluster_configured(ctx) -> bool:
    return bool(ctx.facts.get("nodes.from_cluster") or ctx.config.kubeconfig or ctx.config.context)


def desired_interface(ctx) -> str:
    def compute() -> str:
        configured = ctx.config.host_interface
        if configured != "auto":
            return check_interface(configured)
        if _cluster_configured(ctx):
            try:
                from rbacbridge.kube import host_interface
            except ImportError:
                raise UsageError("kube2iam.host_interface is auto but the cluster cannot be asked: give --host-interface") from None

            iface, reason = host_interface(ctx)
            ctx.facts.setdefault("notes", []).append(f"iptables interface {iface}: {reason}")
            return check_interface(iface)
        ctx.facts.setdefault("notes", []).append(
            f"iptables interface {ARTICLE_INTERFACE}: kube2iam.host_interface is auto and no cluster is configured (the article's value)"
        )
        return ARTICLE_INTERFACE

    return ctx.fact("nodes.interface", compute)


def port_evidence(ctx, state: Any, desired: Desired,
              teardown: bool) -> tuple[dict[int, str], dict[int, str], dict[int, str]]:
    """Per port a rule to this node points at, listeners first: (in_use, moving, unproven) for
    rbacbridge.nodes.verdicts.classify. `state` is the node's NodeState (rbacbridge.nodes.planning): its
    ref, host_ip, rules and listeners.

    in_use: a port some DaemonSet other than rbacbridge's own declares (kube2iam's --app-port, a kiam
    agent's --port, a hostNetwork containerPort or hostPort), or where a process listens that is not
    rbacbridge's kube2iam pod on this node. A listener is rbacbridge's only when rbacbridge's DaemonSet
    (kube2iam.namespace/kube2iam, its labels) declares that port and a running pod whose controller is that
    DaemonSet's UID runs on this node (by node name or host IP). Without the cluster (or when it refuses
    to show that DaemonSet and its pods) a listener on the configured port is `unproven`, never ours.
    moving: rbacbridge's own DaemonSet's earlier port, which this setup moves off (remembered for the
    whole run, so the replan after the rollout still knows it)."""
    users = ctx.facts.get("nodes.port_users") or []
    own = ctx.facts.get("nodes.own_kube2iam")
    known = own is not _UNKNOWN and _cluster_configured(ctx)
    own = None if own is _UNKNOWN else own
    listeners = state.listeners
    own_pod = own.pod_on(state.ref.name, state.host_ip) if own is not None else None
    replacing = not teardown and bool(ctx.facts.get("nodes.setup_updates_kube2iam"))
    remembered = ctx.facts.setdefault("nodes.own_old_ports", {})
    in_use: dict[int, str] = {}
    moving: dict[int, str] = {}
    unproven: dict[int, str] = {}
    ports = {r.kube2iam.port for r in state.rules if r.kube2iam is not None and r.kube2iam.host_ip == desired.host_ip}
    for port in sorted(ports | {desired.port}):
        foreign = [ds for ds in users if not ds.managed and ds.uses(port)]
        ours = own is not None and own.port == port
        listener = listeners.get(port) if listeners is not None else None
        if foreign:
            in_use[port] = " and ".join(ds.describe() + ("" if ds.port is not None or not ds.tool else " (its port could not be read)")
                                        for ds in foreign)
            continue
        if port == desired.port:
            if listener is None and listeners is not None:
                continue  # nothing there yet: rbacbridge's by the configuration (this node's IP, its port)
            if known and ours and own_pod is not None:
                continue  # rbacbridge's own kube2iam pod on this node listens there
            if listener is None:  # `ss` gave no answer: cannot tell who (if anyone) listens
                unproven[port] = f"whatever may listen on {desired.host_ip}:{port} (`ss` gave no answer)"
                continue
            what = listener
            if known:
                why = (f"no running pod of rbacbridge's kube2iam DaemonSet {own.where} on this node" if own is not None and ours
                       else f"rbacbridge's kube2iam DaemonSet {own.where} uses port {own.port}" if own is not None
                       else "rbacbridge's kube2iam DaemonSet does not exist")
                in_use[port] = f"{what} ({why}: not rbacbridge's)"
            else:
                unproven[port] = what
            continue
        if ours or port in remembered:
            ours_listening = ours and own_pod is not None
            if listener is not None and not ours_listening:
                in_use[port] = f"{listener} (not a pod of rbacbridge's kube2iam DaemonSet on this node)"
            elif listeners is None and not ours_listening:
                in_use[port] = f"whatever may listen on {desired.host_ip}:{port} (cannot tell: `ss` gave no answer)"
            elif replacing:
                if port not in remembered:
                    remembered[port] = (f"rbacbridge's kube2iam DaemonSet {own.where} moves from port {port} "
                                        f"to {desired.port} in this setup")
                moving[port] = remembered[port]
            elif ours:
                in_use[port] = f"rbacbridge DaemonSet {own.where} (--app-port {port})"
            continue
        if listener:
            in_use[port] = listener
        elif listeners is None:
            in_use[port] = f"whatever may listen on {desired.host_ip}:{port} (cannot tell: `ss` gave no answer)"
    return in_use, moving, unproven


def read_daemonsets(ctx) -> None:
    """What the cluster says about ports (fresh on every plan: setup's replan sees the new port): every
    DaemonSet that uses ports on the nodes, and rbacbridge's own kube2iam DaemonSet with its pods (by UID)."""
    ctx.facts["nodes.port_users"] = []
    ctx.facts["nodes.own_kube2iam"] = _UNKNOWN
    if not _cluster_configured(ctx):
        return
    try:
        from rbacbridge import kube
    except ImportError:  # pragma: no cover - the kubernetes client is a dependency
        raise UsageError("a cluster is configured but cannot be asked for its kube2iam DaemonSets") from None
    ctx.facts["nodes.port_users"] = kube.port_users(ctx)
    try:
        ctx.facts["nodes.own_kube2iam"] = kube.own_kube2iam(ctx)
    except kube.KubeApiError as exc:
        if exc.status != 403:
            raise
        _note(ctx, f"cannot read rbacbridge's kube2iam DaemonSet and its pods in {ctx.config.kube2iam_namespace} (403): a "
                   "process listening on kube2iam's port cannot be proven rbacbridge's, so rules to it are left alone "
                   "except duplicates")


def _note(ctx, text: str) -> None:
    notes = ctx.facts.setdefault("notes", [])
    if text not in notes:
        notes.append(text)
